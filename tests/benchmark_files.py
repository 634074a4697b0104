"""Benchmark files written as the datasets publish them: the parquet schemas of each
task's split (the columns read and some that are not, with their types), images as the
`datasets` Image feature stores them, and the Hub's folder layout."""

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from visregion_jax.benchmarks import tasks

# The `datasets` Image feature as stored in parquet.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
STR, I64, STRS = pa.string(), pa.int64(), pa.list_(pa.string())

# The published columns of each task's split (those read and some that are not), with their types.
SCHEMAS = {
    "gqa": {"id": STR, "imageId": STR, "question": STR, "answer": STR, "fullAnswer": STR, "isBalanced": pa.bool_()},
    "textvqa_val": {"image_id": STR, "question_id": I64, "question": STR, "question_tokens": STRS, "image": IMAGE,
                    "image_width": I64, "image_height": I64, "answers": STRS, "image_classes": STRS,
                    "set_name": STR, "ocr_tokens": STRS},
    "vqav2_val": {"question_type": STR, "multiple_choice_answer": STR,
                  "answers": pa.list_(pa.struct([("answer", STR), ("answer_confidence", STR), ("answer_id", I64)])),
                  "image_id": I64, "answer_type": STR, "question_id": I64, "question": STR, "image": IMAGE},
    "pope": {"id": STR, "question_id": STR, "question": STR, "answer": STR, "image_source": STR, "image": IMAGE,
             "category": STR},
    "mme": {"question_id": STR, "image": IMAGE, "question": STR, "answer": STR, "category": STR},
    "scienceqa_img": {"image": IMAGE, "question": STR, "choices": STRS, "answer": pa.int8(), "hint": STR, "task": STR,
                      "grade": STR, "subject": STR, "topic": STR, "category": STR, "skill": STR, "lecture": STR,
                      "solution": STR},
    "seedbench": {"answer": STR, "choice_a": STR, "choice_b": STR, "choice_c": STR, "choice_d": STR, "data_id": STR,
                  "data_type": STR, "question": STR, "question_id": STR, "question_type_id": pa.int16(),
                  "image": pa.list_(IMAGE), "segment": pa.list_(I64)},
    "mmbench_en_dev": {"index": I64, "question": STR, "hint": STR, "answer": STR, "A": STR, "B": STR, "C": STR,
                       "D": STR, "category": STR, "image": IMAGE, "source": STR, "L2-category": STR, "comment": STR,
                       "split": STR},
    "mmmu_val": {"id": STR, "question": STR, "options": STR, "explanation": STR,
                 **{f"image_{i}": IMAGE for i in range(1, 8)}, "img_type": STR, "answer": STR,
                 "topic_difficulty": STR, "question_type": STR, "subfield": STR},
    "mmlu": {"question": STR, "subject": STR, "choices": STRS, "answer": I64},
}
GQA_IMAGES = {"id": STR, "image": IMAGE}


def png(value: int, size=(5, 3), mode="RGB") -> bytes:
  buffer = io.BytesIO()
  Image.new(mode, size, (value,) * len(mode)).save(buffer, format="PNG")
  return buffer.getvalue()


def jpeg(value: int, size=(6, 4)) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, (value, value, value)).save(buffer, format="JPEG")
  return buffer.getvalue()


def cell(data: bytes, name: str = "x.png") -> dict:
  return {"bytes": data, "path": name}


def default(name: str, kind: pa.DataType, i: int):
  """A plausible value of a published column for row i."""
  if kind == IMAGE:
    return cell(png(10 * i + 1))
  if kind == pa.list_(IMAGE):
    return [cell(png(10 * i + 1)), cell(jpeg(10 * i + 2), "f.jpg")]
  if pa.types.is_list(kind):
    return [f"{name} {i} a", f"{name} {i} b"] if kind == STRS else []
  if pa.types.is_integer(kind):
    return i
  if pa.types.is_boolean(kind):
    return True
  return f"{name} {i}"


def rows_of(task: str, n: int, **overrides) -> list:
  return [{**{c: default(c, t, i) for c, t in SCHEMAS[task].items()}, **{k: v[i] for k, v in overrides.items()}}
          for i in range(n)]


def write(path, schema: dict, rows: list, row_group_size: int = 2) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  table = pa.table({c: pa.array([r[c] for r in rows], type=t) for c, t in schema.items()})
  pq.write_table(table, path, row_group_size=row_group_size)
  return str(path)


def write_split(root, spec: tasks.Parquet, schema: dict, rows: list, shards: int = 1, folder=None) -> list:
  """`rows` as the Hub lays out a split: <config_dir>/<split>-0000i-of-0000n.parquet."""
  size = -(-len(rows) // shards)
  return [write(os.path.join(root, folder or spec.config_dir, f"{spec.split}-{s:05d}-of-{shards:05d}.parquet"),
                schema, rows[s * size:(s + 1) * size]) for s in range(shards)]


def publish(root, task: str, rows: list, shards: int = 2) -> None:
  """The task's files as its dataset publishes them (GQA's images and MMLU's dev split too)."""
  spec = tasks.TASKS[task]
  if task == "mmmu_val":  # one folder per subject
    write_split(root, spec.parquet, SCHEMAS[task], rows[:2], folder="Art")
    write_split(root, spec.parquet, SCHEMAS[task], rows[2:], folder="Math")
  else:
    write_split(root, spec.parquet, SCHEMAS[task], rows, shards)
  if task == "gqa":
    images = [{"id": r["imageId"], "image": cell(png(10 * i + 1))} for i, r in enumerate(rows)]
    write_split(root, tasks.Parquet("", "", "testdev_balanced_images", "testdev", ()), GQA_IMAGES, images[::-1])
  if task == "mmlu":
    dev = rows_of("mmlu", 5, subject=["anatomy"] * 5)
    write_split(root, spec.fewshot, SCHEMAS["mmlu"], dev)
