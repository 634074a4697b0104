"""The grain pipeline: JSON == TFDS, exact resume, per-process shards, counted skips."""

import json
import os

import numpy as np
import pytest

from visregion_jax.convert import load_tokenizer
from visregion_jax.convert.gguf_file import SMOLLM2_ALIAS, resolve_model_path
from visregion_jax.data import pipeline, skip, sources
from visregion_jax.data.image_processing import ImageProcessorConfig
from visregion_jax.demo import synthetic
from visregion_jax.errors import VisRegionError

IMAGE_TOKEN_ID = 49151
TOKENS_PER_IMAGE = 4


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer(resolve_model_path(SMOLLM2_ALIAS))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic"))
  return synthetic.write_synthetic_dataset(root, num_train=40, num_eval=8, image_size=48,
                                           num_text_train=8, num_text_eval=4)


def data_config(**overrides):
  kwargs = dict(template="tokenizer", max_length=96, global_batch_size=4,
                image_token_id=IMAGE_TOKEN_ID, num_image_tokens=TOKENS_PER_IMAGE,
                image=ImageProcessorConfig(kind="siglip", size=28, crop_size=None,
                                           image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
                pad_token_id=2, buckets=(64,), seed=3, num_epochs=1)
  kwargs.update(overrides)
  return pipeline.DataConfig(**kwargs)


def take(batches, n):
  it = iter(batches)
  return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_are_well_formed(dataset, tokenizer):
  counter = skip.SkipCounter()
  source = sources.JsonSource(dataset["train"], dataset["root"])
  batch = take(pipeline.make_batches(source, tokenizer, data_config(), counter=counter), 1)[0]
  assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] in (64, 96)
  assert batch["pixel_values"].shape == (4, 28, 28, 3)
  for row in range(4):
    ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
    assert (ids == IMAGE_TOKEN_ID).sum() == TOKENS_PER_IMAGE * batch["image_mask"][row]
    assert (labels[mask == 0] == -100).all() and (labels != -100).any()
    learned = labels != -100
    np.testing.assert_array_equal(labels[learned], ids[learned])
  assert counter.total_skipped() == 0


def test_json_and_tfds_sources_give_identical_batches(dataset, tokenizer, tmp_path):
  json_source = sources.JsonSource(dataset["train"], dataset["root"])
  sources.write_tfds(dataset["train"], dataset["root"], str(tmp_path / "tfds"))
  tfds_source = sources.TfdsSource(str(tmp_path / "tfds"))
  assert len(tfds_source) == len(json_source)
  config = data_config()
  a = take(pipeline.make_batches(json_source, tokenizer, config, counter=skip.SkipCounter()), 5)
  b = take(pipeline.make_batches(tfds_source, tokenizer, config, counter=skip.SkipCounter()), 5)
  assert_same_batches(a, b)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_pipeline_started_at_a_step_continues_exactly(dataset, tokenizer, num_workers):
  """Resuming is starting at the step: the samples of a step depend on seed and step only."""
  source = sources.JsonSource(dataset["train"], dataset["root"])
  config = data_config(num_epochs=None, num_workers=num_workers)
  straight = take(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()), 16)
  resumed = take(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter(), start_step=7), 9)
  assert_same_batches(straight[7:], resumed)  # past the 10-batch epoch: epochs are reshuffled
  first, second = straight[0]["index"], straight[10]["index"]
  assert not np.array_equal(first, second)


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_split_each_global_batch_in_order(dataset, tokenizer, processes):
  """Process p holds rows [p*B/P, (p+1)*B/P) of the one-process global batch, at every
  step: the same samples whatever the process count (elastic resume)."""
  source = sources.JsonSource(dataset["train"], dataset["root"])
  config = data_config(global_batch_size=4, num_epochs=1)
  whole = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()))
  shares = [list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter(),
                                       process_index=p, process_count=processes, start_step=1))
            for p in range(processes)]
  assert len(whole) == len(source) // 4 and all(len(share) == len(whole) - 1 for share in shares)
  for step, batch in enumerate(whole[1:]):
    joined = np.concatenate([share[step]["index"] for share in shares])
    np.testing.assert_array_equal(joined, batch["index"])
  seen = [int(i) for b in whole for i in b["index"]]
  assert len(set(seen)) == len(seen)  # an epoch holds each sample once


def bad_samples(root):
  """One sample per kind of problem, each with the reason it must be counted under."""
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  with open(os.path.join(root, "images", "corrupt.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not really a png")
  good = json.load(open(os.path.join(root, "train.json")))[0]
  q = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A digit."}]
  long_q = [{"from": "human", "value": "word " * 400 + "<image>"}, {"from": "gpt", "value": "ok"}]
  return [
      ({"id": "missing", "image": "images/nope.png", "conversations": q}, skip.MISSING_IMAGE),
      ({"id": "corrupt", "image": "images/corrupt.png", "conversations": q}, skip.CORRUPT_IMAGE),
      ({"id": "escape", "image": "../../etc/passwd", "conversations": q}, skip.PATH_OUTSIDE_ROOT),
      ({"id": "no-answer", "image": good["image"], "conversations": q[:1]}, skip.NO_ASSISTANT_TURN),
      ({"id": "tag-no-image", "conversations": q}, skip.IMAGE_TAG_WITHOUT_IMAGE),
      ({"id": "image-no-tag", "image": good["image"],
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
       skip.IMAGE_WITHOUT_IMAGE_TAG),
      ({"id": "empty", "conversations": []}, skip.EMPTY_CONVERSATION),
      ({"id": "types", "conversations": [{"from": "human", "value": 7}]}, skip.WRONG_TYPES),
      ({"id": "not-a-dict"}, skip.WRONG_TYPES),
      ({"id": "too-long", "image": good["image"], "conversations": long_q}, skip.TOO_LONG),
      ({"id": "bad-utf8", "conversations": [{"from": "human", "value": "BADUTF8"},
                                             {"from": "gpt", "value": "x"}]}, skip.BAD_TEXT),
  ]


def test_bad_samples_are_skipped_and_counted(dataset, tokenizer):
  root = dataset["root"]
  bad = bad_samples(root)
  good = json.load(open(dataset["train"]))[:6]
  samples = good + [s for s, _ in bad] + ["not even an object"]
  data = json.dumps(samples).encode().replace(b"BADUTF8", b"\xff\xfe")  # invalid UTF-8 bytes
  path = os.path.join(root, "mixed.json")
  with open(path, "wb") as f:
    f.write(data)
  counter = skip.SkipCounter()
  source = sources.JsonSource(path, root)
  batches = list(pipeline.make_batches(source, tokenizer, data_config(global_batch_size=2, num_epochs=1),
                                       counter=counter))
  # a bad sample keeps its row, empty: one padding token, nothing supervised
  rows = np.concatenate([b["index"] for b in batches])
  assert sorted(rows[rows >= 0]) == list(range(len(good)))
  for b in batches:
    empty = b["index"] < 0
    assert (b["labels"][empty] == -100).all() and (b["attention_mask"][empty].sum(axis=1) == 1).all()
  expected = {}
  for _, reason in bad:
    expected[reason] = expected.get(reason, 0) + 1
  expected[skip.WRONG_TYPES] += 1  # the bare string
  assert {k: v for k, v in counter.counts().items() if k != skip.TRUNCATED} == expected
  assert len(expected) >= 10


def test_malformed_json_names_file_and_position(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('[{"id": "a", "conversations": []},\n {"id": "b" "conversations": []}]')
  with pytest.raises(VisRegionError, match=r"broken\.json:2:"):
    sources.JsonSource(str(path), str(tmp_path))


def test_empty_source_and_indivisible_batch_are_errors(dataset, tokenizer, tmp_path):
  empty = tmp_path / "empty.json"
  empty.write_text("[]")
  with pytest.raises(VisRegionError, match="at least one sample"):
    pipeline.make_batches(sources.JsonSource(str(empty), str(tmp_path)), tokenizer, data_config(),
                          counter=skip.SkipCounter())
  source = sources.JsonSource(dataset["train"], dataset["root"])
  with pytest.raises(VisRegionError, match="train.batch_size"):
    pipeline.make_batches(source, tokenizer, data_config(global_batch_size=3), counter=skip.SkipCounter(),
                          process_count=2)
