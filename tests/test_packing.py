"""Packing: first-fit rows of whole samples with their images, deterministic, resumable
from its state, split over processes like unpacked batches."""

import json
import shutil

import numpy as np
import pytest
from test_data_pipeline import IMAGE_TOKEN_ID, TOKENS_PER_IMAGE, data_config, dataset, tokenizer  # noqa: F401

from visregion_jax.data import packing, pipeline, skip, sources
from visregion_jax.data.tokenize import IGNORE_INDEX


def test_first_fit_never_splits_and_respects_tokens_and_image_slots():
  lengths = [50, 30, 40, 20, 60, 10, 90]
  images = [1, 0, 1, 1, 0, 1, 0]
  rows = packing.first_fit(lengths, images, max_length=100, max_images=2)
  assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
  for row in rows:
    assert sum(lengths[i] for i in row) <= 100 and sum(images[i] for i in row) <= 2
    assert row == sorted(row)  # stream order within a row
  # 0 (50) + 1 (30) + 3 (20: full); 2 (40, no image slot left in row 0) + 4 (60: full);
  # 5 opens a row that 6 (90) then fills
  assert rows == [[0, 1, 3], [2, 4], [5, 6]]


def packed_config(**overrides):
  return data_config(**{"packing": True, "buckets": (), "max_images_per_row": 2, "pack_window": 16,
                        "global_batch_size": 4, **overrides})


def unpacked_sample(source, tokenizer, config, index):  # noqa: F811
  return pipeline.SampleLoader(source, tokenizer, config)(index)


def test_rows_hold_whole_samples_with_their_images(dataset, tokenizer):  # noqa: F811
  source = sources.JsonSource(dataset["train"], dataset["root"])
  config = packed_config()
  batches = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()))
  packer = packing.Packer(source, pipeline.SampleLoader(source, tokenizer, config), config, skip.SkipCounter())
  rows = [samples for samples, _ in packer.rows(packing.PackState())]
  assert len(batches) == len(rows) // 4
  real = 0
  for b, batch in enumerate(batches):
    assert batch["input_ids"].shape == (4, config.max_length) and batch["pixel_values"].shape == (8, 28, 28, 3)
    for r in range(4):
      samples, segments = rows[4 * b + r], batch["segment_ids"][r]
      start, slot = 0, 2 * r
      for s, record in enumerate(samples, start=1):
        alone = unpacked_sample(source, tokenizer, config, record["index"])
        n = len(alone["input_ids"])
        np.testing.assert_array_equal(batch["input_ids"][r, start:start + n], alone["input_ids"])
        np.testing.assert_array_equal(segments[start:start + n], s)
        assert batch["labels"][r, start] == IGNORE_INDEX
        np.testing.assert_array_equal(batch["labels"][r, start + 1:start + n], alone["labels"][1:])
        k = len(alone["pixel_values"])
        np.testing.assert_array_equal(batch["pixel_values"][slot:slot + k], alone["pixel_values"])
        assert batch["image_mask"][slot:slot + k].all()
        start, slot = start + n, slot + k
        real += n
      assert (segments[start:] == 0).all() and (batch["attention_mask"][r] == (segments > 0)).all()
      assert not batch["image_mask"][slot:2 * r + 2].any()
  seen = [record["index"] for row in rows for record in row]
  assert sorted(seen) == list(range(len(source)))  # one epoch: every sample once
  padding = 1 - real / (len(batches) * 4 * config.max_length)
  assert padding < 0.5, padding


def test_resume_from_any_state_continues_exactly(dataset, tokenizer):  # noqa: F811
  source = sources.JsonSource(dataset["train"], dataset["root"])
  config = packed_config(num_epochs=2)
  straight = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()))
  for k in (1, 3, len(straight) // 2):
    resumed = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter(),
                                         pack_state=straight[k - 1]["data_state"]))
    assert len(resumed) == len(straight) - k
    for x, y in zip(resumed, straight[k:]):
      for key in ("input_ids", "labels", "segment_ids", "pixel_values", "image_mask", "index"):
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
      assert x["data_state"] == y["data_state"]


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_split_each_global_batch_in_order(dataset, tokenizer, processes):  # noqa: F811
  source = sources.JsonSource(dataset["train"], dataset["root"])
  config = packed_config()
  whole = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()))
  shares = [list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter(),
                                       process_index=p, process_count=processes)) for p in range(processes)]
  for step, batch in enumerate(whole):
    for key in ("input_ids", "segment_ids", "pixel_values", "index"):
      np.testing.assert_array_equal(np.concatenate([share[step][key] for share in shares]), batch[key])


def test_skips_and_truncations_are_counted_once(dataset, tokenizer, tmp_path):  # noqa: F811
  """A resume in the middle of a window does not count that window's skips again."""
  samples = json.load(open(dataset["train"]))
  samples[3]["image"] = "missing.png"
  samples[5]["conversations"] = []
  root = tmp_path / "data"
  shutil.copytree(dataset["root"], root)
  path = root / "bad.json"
  path.write_text(json.dumps(samples))
  source = sources.JsonSource(str(path), str(root))
  config = packed_config(num_epochs=1, pack_window=64)
  batches = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter()))
  assert batches[-1]["skip_counts"] == {skip.MISSING_IMAGE: 1, skip.EMPTY_CONVERSATION: 1}
  resumed = list(pipeline.make_batches(source, tokenizer, config, counter=skip.SkipCounter(),
                                       pack_state=batches[0]["data_state"]))
  assert resumed[-1]["skip_counts"] == {}
