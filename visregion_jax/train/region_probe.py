"""The `scored` region: decoder layers chosen by a short probe of the model on the
training data, before training starts.

The probe is block influence on image tokens, 1 - E[cos(h_i, h_(i+1))] over the image
tokens of the first `region.probe_samples` usable training samples in the seed's order
(layer_influence.layer_scores, data/calibration.py), through the model as training
starts it: for a decoder joined with a tower, with its new projector, seeded. Forward
passes only. The region is the region_size(L, region.fraction) layers that change the
image tokens most (region.scored_layers), as many from each half of the decoder as
`uniform` takes unless `region.scored_halves` is off. BUILD.md says why this probe.

The choice is saved in WORKDIR/region_probe.json with the settings it depends on; a
resume, an export or a rerun with those settings reads it back instead of probing
again, so the region cannot move between restarts, meshes or processes (sums in
another order could turn a near-tie).
"""

import json
import os

import jax

from visregion_jax import region
from visregion_jax.console import log_line
from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.tensor_files import read_json_object
from visregion_jax.data.calibration import calibration_batches
from visregion_jax.data.from_config import data_config_for, open_source
from visregion_jax.errors import VisRegionError
from visregion_jax.layer_influence import layer_scores
from visregion_jax.models.lvlm import LVLM
from visregion_jax.publish import write_file_atomically

PROBE_FILE = "region_probe.json"


def probe_settings(config, num_layers: int) -> dict:
  r = config.region
  return {"num_layers": num_layers, "fraction": float(r.fraction), "halves": bool(r.scored_halves),
          "probe_samples": int(r.probe_samples), "batch_size": int(config.prune.batch_size),
          "seed": int(config.seed), "init_from": str(config.model.init_from),
          "vision_tower": str(config.model.get("vision_tower") or ""), "train_json": str(config.data.train_json)}


def probe_scores(config, model) -> list:
  """Block influence of each decoder layer on the image tokens of the probe samples."""
  if not isinstance(model, LVLM):
    raise VisRegionError("region.strategy", "expected a vision-language model for scored (it probes image "
                         "tokens): an llava-hf init_from or a model.vision_tower")
  tokenizer = load_tokenizer(model.config.source)
  data_config = data_config_for(config, model, tokenizer, config.model.get("vision_tower"))
  samples = config.region.probe_samples
  batches = calibration_batches(open_source(config.data, "train"), tokenizer, data_config, samples,
                                config.prune.batch_size, config.seed)
  try:
    return [float(s) for s in layer_scores(model, batches, tokens="image")]
  except VisRegionError:
    raise VisRegionError("region.probe_samples", f"expected image tokens in the first {samples} usable "
                         "training samples (scored probes them)") from None


def scored_region(config, model, workdir: str) -> tuple:
  """The region layers of a `scored` run: read back from WORKDIR/region_probe.json when
  it was probed with these settings, else probed now (and saved by process 0)."""
  path = os.path.join(workdir, PROBE_FILE)
  settings = probe_settings(config, len(model.layers))
  if os.path.isfile(path):
    saved = read_json_object(path)
    if saved.get("settings") == settings:
      return tuple(saved["region_layers"])
  scores = probe_scores(config, model)
  layers = region.scored_layers(scores, config.region.fraction, config.region.scored_halves)
  log_line(f"region probe: block influence on image tokens {[round(s, 4) for s in scores]}; "
           f"region {list(layers)}")
  if jax.process_index() == 0:
    write_file_atomically(path, json.dumps({"settings": settings, "layer_scores": scores,
                                            "region_layers": list(layers)}, indent=2))
  return layers
