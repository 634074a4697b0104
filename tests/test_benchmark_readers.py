"""Benchmark readers on parquet files written here with the datasets' published schemas:
fields, lazy images, broken images counted and kept, streaming, and every error up front."""


import pyarrow.parquet as pq
import pytest
from benchmark_files import GQA_IMAGES, SCHEMAS, STR, cell, jpeg, png, publish, rows_of, write, write_split

from visregion_jax.benchmarks import images as lazy_images
from visregion_jax.benchmarks import parquet_split, tasks
from visregion_jax.benchmarks.readers import open_task
from visregion_jax.benchmarks.sample import Sample
from visregion_jax.data import skip
from visregion_jax.errors import VisRegionError


def expected_fields(task: str, row: dict) -> dict:
  return {c: row[c] for c in tasks.TASKS[task].parquet.columns}


def pixel(load: lazy_images.ImageLoad, k: int = 0) -> int:
  return load.images[k].getpixel((0, 0))[0]


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_every_task_reads_its_published_parquet_schema(task, tmp_path):
  overrides = {"mmmu_val": {"question": ["<image 1> and <image 2>?", "What is <image 1>?", "Open <image 1>", "Q"],
                            "question_type": ["multiple-choice", "multiple-choice", "open", "open"],
                            "options": ["['A <image 3>', 'B']", "['x', 'y']", "[]", "[]"]}}.get(task, {})
  rows = rows_of(task, 4, **overrides)
  publish(tmp_path, task, rows)
  data = open_task(task, str(tmp_path))
  assert data.layout == "parquet" and len(data) == 4
  assert all(f.endswith(".parquet") for f in data.files)
  samples = list(data.samples())
  assert [s.index for s in samples] == [0, 1, 2, 3]
  assert [s.fields for s in samples] == [expected_fields(task, r) for r in rows]
  counts = {"mmlu": [0] * 4, "seedbench": [2] * 4, "mmmu_val": [3, 1, 1, 0]}.get(task, [1] * 4)
  assert [len(s.images) for s in samples] == counts
  for i, sample in enumerate(samples):
    load = sample.images.load()
    assert load.ok and len(load.images) == counts[i]
    if counts[i] and task != "mmmu_val":
      assert pixel(load) == 10 * i + 1
  assert data.exemplars(samples[0]) == ()  # MMLU's are per subject, and row 0's has no dev rows here
  if task == "mmlu":
    anatomy = Sample(0, {**samples[0].fields, "subject": "anatomy"}, samples[0].images)
    assert [r["question"] for r in data.exemplars(anatomy)] == [f"question {i}" for i in range(5)]


def test_mmmu_uses_the_images_its_question_and_options_name(tmp_path):
  rows = rows_of("mmmu_val", 3, question=["Compare <image 2> with <image 1>.", "See <image 2>.", "Open <image 1>."],
                 options=["['<image 3>', '<image 1>']", "['<image 5>', 'b']", "['<image 4>']"],
                 question_type=["multiple-choice", "multiple-choice", "open"])
  rows[0].update({f"image_{k}": cell(png(100 + k)) for k in (1, 2, 3)})
  rows[1]["image_5"] = None  # named but empty: a missing image, the row kept
  publish(tmp_path, "mmmu_val", rows + rows_of("mmmu_val", 1))
  first, second, third, _ = open_task("mmmu_val", str(tmp_path)).samples()
  assert [pixel(first.images.load(), k) for k in range(3)] == [101, 102, 103]  # in order of i, each once
  assert len(second.images) == 2 and second.images.load().reason == skip.MISSING_IMAGE
  assert len(third.images) == 1  # an open question's options are not part of its prompt


def test_gqa_images_are_joined_from_their_own_config(tmp_path):
  rows = rows_of("gqa", 5, imageId=["n1", "n2", "n1", "n9", "n2"])
  write_split(tmp_path, tasks.TASKS["gqa"].parquet, SCHEMAS["gqa"], rows)
  images = [{"id": "n2", "image": cell(png(22))}, {"id": "n1", "image": cell(jpeg(11))},
            {"id": "n3", "image": cell(png(33))}]
  write_split(tmp_path, tasks.Parquet("", "", "testdev_balanced_images", "testdev", ()), GQA_IMAGES, images, shards=2)
  samples = list(open_task("gqa", str(tmp_path)).samples())
  loads = [s.images.load() for s in samples]
  assert [pixel(loads[i]) for i in (0, 1, 2, 4)] == [11, 22, 11, 22]
  assert abs(pixel(loads[0]) - 11) <= 1  # JPEG within rounding
  assert loads[3].reason == skip.MISSING_IMAGE and "n9" in loads[3].detail  # an unknown id is a missing image


def test_images_are_decoded_only_when_loaded(tmp_path, monkeypatch):
  publish(tmp_path, "pope", rows_of("pope", 4))
  opened = []
  real_open = lazy_images.Image.open
  monkeypatch.setattr(lazy_images.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
  data = open_task("pope", str(tmp_path))
  samples = list(data.samples())
  assert opened == []
  samples[2].images.load()
  assert opened == [1]


def test_images_keep_their_own_mode(tmp_path):
  rows = rows_of("mme", 2, image=[cell(png(7, mode="RGBA")), cell(png(9, mode="L"))])
  publish(tmp_path, "mme", rows)
  modes = [s.images.load().images[0].mode for s in open_task("mme", str(tmp_path)).samples()]
  assert modes == ["RGBA", "L"]  # the image processor makes RGB, compositing alpha as transformers does


def test_a_broken_image_is_counted_and_kept(tmp_path):
  broken = [cell(b"\x89PNG not really"), cell(png(1)[:40]), None, {"bytes": None, "path": "elsewhere/x.png"},
            cell(png(50))]
  publish(tmp_path, "pope", rows_of("pope", 5, image=broken))
  samples = list(open_task("pope", str(tmp_path)).samples())
  assert len(samples) == 5  # nothing dropped
  loads = [s.images.load() for s in samples]
  assert [load.reason for load in loads] == [skip.CORRUPT_IMAGE, skip.CORRUPT_IMAGE, skip.MISSING_IMAGE,
                                             skip.MISSING_IMAGE, None]
  assert all(load.images == () for load in loads[:4]) and "pope sample 0" in loads[0].detail
  assert [s.fields["question"] for s in samples] == [f"question {i}" for i in range(5)]


def test_scienceqa_rows_without_an_image_have_none(tmp_path):
  rows = rows_of("scienceqa_img", 2, image=[None, cell(png(3))])
  publish(tmp_path, "scienceqa_img", rows)
  without, with_image = open_task("scienceqa_img", str(tmp_path)).samples()
  assert len(without.images) == 0 and without.images.load().ok
  assert len(with_image.images) == 1


def test_samples_stream_a_range_reading_only_its_row_groups(tmp_path, monkeypatch):
  publish(tmp_path, "vqav2_val", rows_of("vqav2_val", 9), shards=2)  # row groups of 2 in shards of 5 and 4
  data = open_task("vqav2_val", str(tmp_path))
  read = []
  real = pq.ParquetFile.iter_batches
  monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                      lambda self, *a, row_groups=(), **k: read.append(tuple(row_groups)) or real(
                          self, *a, row_groups=row_groups, **k))
  assert [s.fields["question_id"] for s in data.samples(3, 7)] == [3, 4, 5, 6]
  assert read == [(1,), (2,), (0,)]  # rows [2,4) [4,5) of shard 1 and [5,7) of shard 2; [0,2) and [7,9) unread
  assert [s.index for s in data.samples(8)] == [8] and list(data.samples(9)) == []


def test_split_files_accept_the_hub_conversion_layout(tmp_path):
  spec = tasks.TASKS["pope"].parquet
  write(tmp_path / "data" / "test" / "0000.parquet", SCHEMAS["pope"], rows_of("pope", 2))
  assert parquet_split.split_files(str(tmp_path), spec) == [str(tmp_path / "data" / "test" / "0000.parquet")]
  assert len(open_task("pope", str(tmp_path))) == 2


def test_other_splits_are_not_read(tmp_path):
  spec = tasks.TASKS["textvqa_val"].parquet
  write_split(tmp_path, spec, SCHEMAS["textvqa_val"], rows_of("textvqa_val", 3))
  write_split(tmp_path, tasks.Parquet("", "", "data", "train", ()), SCHEMAS["textvqa_val"], rows_of("textvqa_val", 7))
  write(tmp_path / "data" / "test-00000-of-00001.parquet", SCHEMAS["textvqa_val"], rows_of("textvqa_val", 5))
  assert len(open_task("textvqa_val", str(tmp_path))) == 3


# --- errors: raised by open_task, before anything is iterated or any model loaded -------------

def error_of(task, folder, **kwargs) -> str:
  with pytest.raises(VisRegionError) as e:
    open_task(task, folder, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_unknown_task_lists_the_known_ones(tmp_path):
  message = error_of("gqa_testdev", str(tmp_path))
  assert message.startswith("eval.tasks:") and "'gqa_testdev'" in message and "mmbench_en_dev" in message


def test_no_folder_missing_folder_and_empty_folder(tmp_path):
  assert error_of("pope", None).startswith("eval.data.pope:")
  assert error_of("pope", str(tmp_path / "absent")).startswith(str(tmp_path / "absent"))
  message = error_of("pope", str(tmp_path))
  assert "lmms-lab/POPE" in message and "data/test-*.parquet" in message and "llava_pope_test.jsonl" in message


@pytest.mark.parametrize("task,column", [("pope", "category"), ("textvqa_val", "ocr_tokens"), ("mmlu", "choices"),
                                         ("mmmu_val", "image_7"), ("seedbench", "image")])
def test_a_missing_column_names_the_file_and_column(task, column, tmp_path):
  schema = {c: t for c, t in SCHEMAS[task].items() if c != column}
  files = write_split(tmp_path, tasks.TASKS[task].parquet, schema, rows_of(task, 2))
  message = error_of(task, str(tmp_path))
  assert message.startswith(files[0]) and f"column {column!r}" in message


def test_a_missing_column_in_a_later_shard_is_found_at_open(tmp_path):
  spec = tasks.TASKS["mme"].parquet
  write(tmp_path / "data" / "test-00000-of-00002.parquet", SCHEMAS["mme"], rows_of("mme", 2))
  bad = write(tmp_path / "data" / "test-00001-of-00002.parquet",
              {c: t for c, t in SCHEMAS["mme"].items() if c != "answer"}, rows_of("mme", 2))
  assert spec.split == "test"
  assert error_of("mme", str(tmp_path)).startswith(bad + ": expected column 'answer'")


def test_an_image_column_must_hold_images(tmp_path):
  schema = {**SCHEMAS["mme"], "image": STR}
  files = write_split(tmp_path, tasks.TASKS["mme"].parquet, schema, rows_of("mme", 2, image=["a", "b"]))
  message = error_of("mme", str(tmp_path))
  assert message.startswith(files[0]) and "'image'" in message and "Image struct" in message


def test_a_file_that_is_not_parquet(tmp_path):
  path = tmp_path / "data" / "test-00000-of-00001.parquet"
  path.parent.mkdir()
  path.write_text("not parquet")
  assert error_of("pope", str(tmp_path)).startswith(str(path) + ": expected a parquet file")


def test_gqa_without_its_image_config(tmp_path):
  write_split(tmp_path, tasks.TASKS["gqa"].parquet, SCHEMAS["gqa"], rows_of("gqa", 2))
  message = error_of("gqa", str(tmp_path))
  assert "testdev_balanced_images/testdev-*.parquet" in message


def test_mmlu_without_its_dev_split(tmp_path):
  write_split(tmp_path, tasks.TASKS["mmlu"].parquet, SCHEMAS["mmlu"], rows_of("mmlu", 2))
  assert "all/dev-*.parquet" in error_of("mmlu", str(tmp_path))


def test_layouts(tmp_path):
  publish(tmp_path, "pope", rows_of("pope", 2))
  (tmp_path / "llava_pope_test.jsonl").write_text("")
  assert "holds both" in error_of("pope", str(tmp_path))
  assert open_task("pope", str(tmp_path), layout="parquet").layout == "parquet"
  assert error_of("pope", str(tmp_path), layout="csv").startswith("layout: expected one of parquet, llava")
  assert "no LLaVA evaluation layout" in error_of("vqav2_val", str(tmp_path), layout="llava")
