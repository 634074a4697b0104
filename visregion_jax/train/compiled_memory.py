"""XLA's own per-device memory figure for a config's training step, compiled (never run)
from shapes alone: what the dry run's hand formula is checked against.

The step is the training loop's (train/step.py, jitted with the loop's donation, under
the loop's `jax.set_mesh`), over the dry run's abstract model with `model.attention`
applied, parameters and optimizer state placed as training places them, and a batch of
the config's shape (packed rows with segment ids under data.packing). No weight is
read and nothing runs; compiling a scaled-down model takes seconds, a 7B step minutes.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from visregion_jax import model_spec, optim, sharding
from visregion_jax.convert.params import default_compute_dtype
from visregion_jax.models.attention_choice import set_attention
from visregion_jax.models.lvlm import LVLMConfig
from visregion_jax.plan import TrainingPlan
from visregion_jax.train.batching import check_batch
from visregion_jax.train.builder import set_training_options
from visregion_jax.train.dry_run import abstract_model
from visregion_jax.train.step import make_train_step


def _placed(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_batch(config, model_cfg, mesh) -> dict:
  """The shapes and placement of one global batch as the data pipeline builds it."""
  d, rows = config.data, config.train.batch_size
  shapes = {"input_ids": ((rows, d.max_length), jnp.int32), "labels": ((rows, d.max_length), jnp.int32),
            "attention_mask": ((rows, d.max_length), jnp.int32)}
  if d.packing:
    shapes["segment_ids"] = ((rows, d.max_length), jnp.int32)
  if isinstance(model_cfg, LVLMConfig):
    slots = rows * (d.max_images_per_row if d.packing else d.max_images_per_sample)
    size = model_cfg.vision.image_size
    shapes.update(pixel_values=((slots, size, size, 3), jnp.float32), image_mask=((slots,), jnp.bool_))
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}


def compiled_memory(config) -> dict:
  """Bytes on one device of the compiled step: arguments, outputs, the outputs that
  reuse donated arguments, temporaries, and their peak (arguments + outputs - aliased +
  temporaries)."""
  m = config.model
  dtype = m.get("dtype") or default_compute_dtype()
  _, spec = model_spec.describe(config)
  model_cfg = model_spec.model_config(spec, m, dtype)
  text = model_cfg.text if isinstance(model_cfg, LVLMConfig) else model_cfg
  plan = TrainingPlan.from_config(config, text.num_layers)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  check_batch(config.train, mesh)
  model = abstract_model(model_cfg, plan, config.seed)
  set_attention(model, m.attention, m.attention_interpret)
  set_training_options(model, m)
  graphdef, params, frozen, rest = plan.split(model)
  params = _placed(params, sharding.state_shardings(params, mesh))
  frozen = _placed(frozen, sharding.state_shardings(frozen, mesh))
  rest = _placed(rest, jax.tree.map(lambda _: sharding.replicated(mesh), rest))
  tx, _ = optim.make_optimizer(config.train, plan.labels(params))
  with jax.set_mesh(mesh):
    # The optimizer state as the loop's eager init places it: each moment beside its parameter.
    init_shardings = jax.jit(tx.init).lower(params).compile().output_shardings
    opt_state = _placed(jax.eval_shape(tx.init, params), init_shardings)
    step = jax.jit(make_train_step(graphdef, tx, config.train.grad_accum, config.seed), donate_argnums=(0, 3))
    index = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, jax.sharding.PartitionSpec()))
    compiled = step.lower(params, frozen, rest, opt_state, abstract_batch(config, model_cfg, mesh), index).compile()
  stats = compiled.memory_analysis()
  out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
         "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes}
  out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out
