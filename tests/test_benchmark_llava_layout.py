"""Benchmark readers on LLaVA-1.5's evaluation layout, written here as LLaVA lays it out:
question files joined with the answer files into the parquet datasets' fields, images
read lazily inside the image folder, MMBench's tsv, and every error up front."""

import base64
import csv
import io
import json
import os

import pytest
from PIL import Image

from visregion_jax.benchmarks import tasks
from visregion_jax.benchmarks.readers import open_task
from visregion_jax.data import skip
from visregion_jax.errors import VisRegionError

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def image_bytes(value: int, fmt: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", (4, 3), (value, value, value)).save(buffer, format=fmt)
  return buffer.getvalue()


def put(path, content) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  mode = "wb" if isinstance(content, bytes) else "w"
  with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
    f.write(content)
  return str(path)


def jsonl(path, records) -> str:
  return put(path, "".join(json.dumps(r) + "\n" for r in records))


def gqa_layout(root) -> list:
  jsonl(root / "llava_gqa_testdev_balanced.jsonl", [
      {"question_id": "2001", "image": "n100.jpg", "text": "Is the sky blue?" + SHORT, "category": "default"},
      {"question_id": "2002", "image": "n200.jpg", "text": "What is on the table?" + SHORT, "category": "default"}])
  put(root / "data" / "testdev_balanced_questions.json", json.dumps({
      "2002": {"question": "What is on the table?", "answer": "cup", "imageId": "n200", "fullAnswer": "A cup."},
      "2001": {"question": "Is the sky blue?", "answer": "yes", "imageId": "n100", "fullAnswer": "Yes, it is."},
      "2003": {"question": "Unasked?", "answer": "no", "imageId": "n300", "fullAnswer": "No."}}))
  put(root / "data" / "images" / "n100.jpg", image_bytes(10, "JPEG"))
  put(root / "data" / "images" / "n200.jpg", image_bytes(20, "JPEG"))
  return [{"id": "2001", "imageId": "n100", "question": "Is the sky blue?", "answer": "yes"},
          {"id": "2002", "imageId": "n200", "question": "What is on the table?", "answer": "cup"}]


def textvqa_layout(root) -> list:
  jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", [
      {"question_id": "aa11", "image": "aa11.jpg", "category": "default",
       "text": "What brand is shown?\nReference OCR token: ACME, Co, x, y" + SHORT},
      {"question_id": "bb22", "image": "bb22.jpg", "category": "default",
       "text": "What does it say?\nReference OCR token: " + SHORT}])
  answers = [f"answer {k}" for k in range(10)]
  put(root / "TextVQA_0.5.1_val.json", json.dumps({"dataset_type": "val", "data": [
      {"question": "what does it say?", "image_id": "bb22", "question_id": 35, "answers": answers, "set_name": "val"},
      {"question": "what brand is shown?", "image_id": "aa11", "question_id": 34, "answers": answers[::-1]}]}))
  put(root / "train_images" / "aa11.jpg", image_bytes(10))
  put(root / "train_images" / "bb22.jpg", image_bytes(20))
  return [{"question_id": 34, "image_id": "aa11", "question": "what brand is shown?", "answers": answers[::-1],
           "ocr_tokens": ["ACME", "Co", "x", "y"]},
          {"question_id": 35, "image_id": "bb22", "question": "what does it say?", "answers": answers,
           "ocr_tokens": []}]


def pope_layout(root) -> list:
  questions = [(1, "adversarial", "dog", "yes"), (2, "adversarial", "cat", "no"), (10000001, "random", "car", "no"),
               (20000001, "popular", "bus", "yes")]
  jsonl(root / "llava_pope_test.jsonl", [{"question_id": q, "image": f"COCO_val2014_{q}.jpg", "category": c,
                                          "text": f"Is there a {o} in the image?" + SHORT} for q, c, o, _ in questions])
  for category in ("adversarial", "random", "popular"):
    mine = [(k + 1, q, o, a) for k, (q, c, o, a) in enumerate(x for x in questions if x[1] == category)]
    jsonl(root / "coco" / f"coco_pope_{category}.json", [
        {"question_id": k, "image": f"COCO_val2014_{q}.jpg", "text": f"Is there a {o} in the image?", "label": a}
        for k, q, o, a in mine])
  for q, *_ in questions:
    put(root / "val2014" / f"COCO_val2014_{q}.jpg", image_bytes(q % 200))
  return [{"question_id": q, "question": f"Is there a {o} in the image?", "answer": a, "category": c}
          for q, c, o, a in questions]


def mme_layout(root) -> list:
  base = root / "MME_Benchmark_release_version"
  jsonl(root / "llava_mme.jsonl", [
      {"question_id": "count/0001.jpg", "image": "count/0001.jpg", "text": "Are there two dogs?" + SHORT,
       "category": "count"},
      {"question_id": "count/0001.jpg", "image": "count/0001.jpg", "text": "Are there three dogs?" + SHORT,
       "category": "count"},
      {"question_id": "artwork/images/5.jpg", "image": "artwork/images/5.jpg",
       "text": "Is this a painting" + SHORT, "category": "artwork"}])
  put(base / "count" / "0001.jpg", image_bytes(1))
  put(base / "count" / "0001.txt", "Are there two dogs? Please answer yes or no.\tYes\n"
                                   "Are there three dogs?  Please answer yes or no.\tNo\n")
  put(base / "artwork" / "images" / "5.jpg", image_bytes(5))
  put(base / "artwork" / "questions_answers_YN" / "5.txt", "Is this a sculpture Please answer yes or no.\tNo\r\n"
                                                            "Is this a painting Please answer yes or no.\tYes\r\n")
  return [{"question_id": "count/0001.jpg", "question": "Are there two dogs? Please answer yes or no.",
           "answer": "Yes", "category": "count"},
          {"question_id": "count/0001.jpg", "question": "Are there three dogs?  Please answer yes or no.",
           "answer": "No", "category": "count"},
          {"question_id": "artwork/images/5.jpg", "question": "Is this a painting Please answer yes or no.",
           "answer": "Yes", "category": "artwork"}]


def scienceqa_layout(root) -> list:
  put(root / "llava_test_CQM-A.json", json.dumps([
      {"id": "4", "conversations": [{"from": "human", "value": "Which word fits?\nA. a\nB. b"},
                                    {"from": "gpt", "value": "B"}]},
      {"id": "5", "image": "5/image.png", "conversations": [
          {"from": "human", "value": "<image>\nContext: A map.\nWhich state is shown?\nA. Ohio\nB. Utah\nC. Iowa"},
          {"from": "gpt", "value": "C"}]},
      {"id": "11", "image": "11/image.png", "conversations": [
          {"from": "human", "value": "<image>\nWhat is the capital?\nA. Dover\nB. Salem"},
          {"from": "gpt", "value": "A"}]}], indent=2))
  problems = {"4": {"question": "Which word fits?", "choices": ["a", "b"], "answer": 1, "hint": "", "image": None},
              "5": {"question": "Which state is shown?", "choices": ["Ohio", "Utah", "Iowa"], "answer": 2,
                    "hint": "A map.", "image": "image.png", "subject": "social science"},
              "11": {"question": "What is the capital?", "choices": ["Dover", "Salem"], "answer": 0, "hint": "",
                     "image": "image.png", "subject": "social science"}}
  put(root / "problems.json", json.dumps(problems))
  put(root / "images" / "test" / "5" / "image.png", image_bytes(5))
  put(root / "images" / "test" / "11" / "image.png", image_bytes(11))
  return [{"question": "Which state is shown?", "choices": ["Ohio", "Utah", "Iowa"], "answer": 2, "hint": "A map."},
          {"question": "What is the capital?", "choices": ["Dover", "Salem"], "answer": 0, "hint": ""}]


def seedbench_layout(root) -> list:
  entries = [{"answer": "B", "choice_a": "one", "choice_b": "two", "choice_c": "three", "choice_d": "four",
              "data_id": "1.jpg", "data_type": "image", "question": "How many cups?", "question_id": "101",
              "question_type_id": 1},
             {"answer": "D", "choice_a": "sit", "choice_b": "run", "choice_c": "jump", "choice_d": "wave",
              "data_id": "v/7.mp4", "data_type": "video", "question": "What happens next?", "question_id": "902",
              "question_type_id": 10}]
  put(root / "SEED-Bench.json", json.dumps({"question_type": {"Instances Counting": 1}, "questions": entries[::-1]}))
  jsonl(root / "llava-seed-bench.jsonl", [
      {"image": "SEED-Bench-image/1.jpg", "text": "How many cups?\nA. one\nB. two\nC. three\nD. four" + LETTER,
       "category": "Instances Counting", "question_id": "101"},
      {"image": "SEED-Bench-video-image/7.png", "text": "What happens next?\nA. sit\nB. run\nC. jump\nD. wave" + LETTER,
       "question_id": "902"}])
  put(root / "SEED-Bench-image" / "1.jpg", image_bytes(1))
  put(root / "SEED-Bench-video-image" / "7.png", image_bytes(7))
  return [{k: e[k] for k in tasks.TASKS["seedbench"].parquet.columns} for e in entries]


MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                  "l2-category", "comment", "split"]


def mmbench_tsv(path, rows) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(MMBENCH_HEADER)
    writer.writerows(rows)
  return str(path)


def mmbench_layout(root) -> list:
  picture = base64.b64encode(image_bytes(9)).decode()
  mmbench_tsv(root / "mmbench_dev_20230712.tsv", [
      [241, "Which is larger?", "The passage:\n\tsee the figure.", "cat", "dog", "nan", "", "B", "size", picture,
       "src", "reasoning", "", "dev"],
      [1000241, "Which is larger?", "nan", "dog", "cat", "None", "", "A", "size", picture, "src", "reasoning", "",
       "dev"]])
  return [{"index": 241, "question": "Which is larger?", "hint": "The passage:\n\tsee the figure.", "A": "cat",
           "B": "dog", "C": None, "D": None, "answer": "B", "category": "size", "L2-category": "reasoning"},
          {"index": 1000241, "question": "Which is larger?", "hint": None, "A": "dog", "B": "cat", "C": None,
           "D": None, "answer": "A", "category": "size", "L2-category": "reasoning"}]


LAYOUTS = {"gqa": gqa_layout, "textvqa_val": textvqa_layout, "pope": pope_layout, "mme": mme_layout,
           "scienceqa_img": scienceqa_layout, "seedbench": seedbench_layout, "mmbench_en_dev": mmbench_layout}


def test_every_task_with_a_llava_layout_has_a_test():
  assert sorted(LAYOUTS) == sorted(name for name, task in tasks.TASKS.items() if task.llava)


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_llava_layout_rows_have_the_parquet_datasets_fields(task, tmp_path):
  expected = LAYOUTS[task](tmp_path)
  data = open_task(task, str(tmp_path))
  assert data.layout == "llava" and len(data) == len(expected)
  samples = list(data.samples())
  assert [s.index for s in samples] == list(range(len(expected)))
  for sample, fields in zip(samples, expected):
    assert list(sample.fields) == list(tasks.TASKS[task].parquet.columns)  # one schema per task
    assert sample.fields == fields
    json.dumps(sample.fields)  # a prediction line is the fields plus the prediction
    assert len(sample.images) == 1
    load = sample.images.load()
    assert load.ok and len(load.images) == 1
  assert [s.index for s in data.samples(1)] == list(range(1, len(expected)))
  assert data.exemplars(samples[0]) == ()


def test_images_are_read_only_when_loaded(tmp_path):
  gqa_layout(tmp_path)
  samples = list(open_task("gqa", str(tmp_path)).samples())
  os.remove(tmp_path / "data" / "images" / "n200.jpg")  # opening and iterating read no image
  assert samples[0].images.load().ok
  assert samples[1].images.load().reason == skip.MISSING_IMAGE


def pope_questions(root, images: list) -> None:
  """A POPE layout of adversarial questions about `images` (paths as the question file names them)."""
  jsonl(root / "llava_pope_test.jsonl", [{"question_id": k, "image": image, "text": "Is there a dog?" + SHORT,
                                          "category": "adversarial"} for k, image in enumerate(images)])
  jsonl(root / "coco" / "coco_pope_adversarial.json", [{"question_id": k, "image": image, "text": "Is there a dog?",
                                                        "label": "yes"} for k, image in enumerate(images)])
  os.makedirs(root / "val2014", exist_ok=True)


def test_image_paths_stay_inside_the_image_folder(tmp_path):
  put(tmp_path / "secret.png", image_bytes(99))
  pope_questions(tmp_path, ["../secret.png", "link.png", str(tmp_path / "secret.png"), "folder.jpg", "broken.jpg",
                            "absent.jpg", "fine.png"])
  os.symlink(tmp_path / "secret.png", tmp_path / "val2014" / "link.png")
  os.mkdir(tmp_path / "val2014" / "folder.jpg")
  put(tmp_path / "val2014" / "broken.jpg", b"not an image")
  put(tmp_path / "val2014" / "fine.png", image_bytes(1))
  samples = list(open_task("pope", str(tmp_path)).samples())
  assert len(samples) == 7  # every question kept, to be scored wrong
  assert [s.images.load().reason for s in samples] == [
      skip.PATH_OUTSIDE_ROOT, skip.PATH_OUTSIDE_ROOT, skip.PATH_OUTSIDE_ROOT, skip.NOT_A_FILE, skip.CORRUPT_IMAGE,
      skip.MISSING_IMAGE, None]


def test_mmbench_base64_images_broken_or_empty_are_failures(tmp_path):
  mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", [
      [1, "q", "nan", "a", "b", "", "", "A", "c", "!!!not base64", "s", "l2", "", "dev"],
      [2, "q", "nan", "a", "b", "", "", "A", "c", base64.b64encode(b"text, not an image").decode(), "s", "l2", "",
       "dev"],
      [3, "q", "nan", "a", "b", "", "", "A", "c", "", "s", "l2", "", "dev"]])
  loads = [s.images.load() for s in open_task("mmbench_en_dev", str(tmp_path)).samples()]
  assert [load.reason for load in loads] == [skip.CORRUPT_IMAGE, skip.CORRUPT_IMAGE, skip.MISSING_IMAGE]


def test_mmbench_streams_a_range(tmp_path):
  picture = base64.b64encode(image_bytes(3)).decode()
  mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv",
              [[i, f"q{i}", "nan", "a", "b", "", "", "A", "c", picture, "s", "l2", "", "dev"] for i in range(5)])
  data = open_task("mmbench_en_dev", str(tmp_path))
  assert len(data) == 5 and [s.fields["index"] for s in data.samples(2, 4)] == [2, 3]


# --- errors: raised by open_task, naming the file and line ----------------------------------

def error_of(task, root) -> str:
  with pytest.raises(VisRegionError) as e:
    open_task(task, str(root))
  assert "\n" not in str(e.value)
  return str(e.value)


def rewrite_line(path, number: int, text: str) -> None:
  lines = path.read_text().splitlines()
  lines[number - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_a_malformed_question_line(tmp_path):
  pope_layout(tmp_path)
  path = tmp_path / "llava_pope_test.jsonl"
  rewrite_line(path, 2, '{"question_id": 2, "image": ')
  assert error_of("pope", tmp_path).startswith(f"{path}:2: expected one JSON object per line")
  rewrite_line(path, 2, '{"question_id": 2, "image": "x.jpg", "category": "adversarial"}')
  assert error_of("pope", tmp_path) == f"{path}:2: expected key 'text'"
  rewrite_line(path, 2, '{"question_id": 2, "image": 7, "text": "q", "category": "adversarial"}')
  assert error_of("pope", tmp_path).startswith(f"{path}:2: expected 'image' to be an image path")
  rewrite_line(path, 2, '["a list"]')
  assert error_of("pope", tmp_path) == f"{path}:2: expected a JSON object, got list"


def test_a_question_without_an_answer_names_both_files(tmp_path):
  gqa_layout(tmp_path)
  answers = tmp_path / "data" / "testdev_balanced_questions.json"
  entries = json.loads(answers.read_text())
  del entries["2002"]
  answers.write_text(json.dumps(entries))
  message = error_of("gqa", tmp_path)
  assert message.startswith(str(answers)) and "'2002'" in message and "llava_gqa_testdev_balanced.jsonl:2" in message


def test_a_missing_answer_file_or_image_folder(tmp_path):
  textvqa_layout(tmp_path)
  os.rename(tmp_path / "train_images", tmp_path / "images")
  assert error_of("textvqa_val", tmp_path).startswith(str(tmp_path / "train_images") + ": expected a folder")
  os.rename(tmp_path / "images", tmp_path / "train_images")
  os.remove(tmp_path / "TextVQA_0.5.1_val.json")
  assert error_of("textvqa_val", tmp_path).startswith(str(tmp_path / "TextVQA_0.5.1_val.json") + ": file not found")


def test_malformed_answer_json_names_line_and_column(tmp_path):
  seedbench_layout(tmp_path)
  (tmp_path / "SEED-Bench.json").write_text('{"questions": [\n  {"answer": }\n]}')
  assert error_of("seedbench", tmp_path).startswith(f"{tmp_path / 'SEED-Bench.json'}:2:")
  (tmp_path / "SEED-Bench.json").write_text('{"questions": [{"answer": "A"}]}')
  assert "expected key" in error_of("seedbench", tmp_path)


def test_textvqa_question_file_without_ocr_tokens(tmp_path):
  textvqa_layout(tmp_path)
  path = tmp_path / "llava_textvqa_val_v051_ocr.jsonl"
  rewrite_line(path, 1, json.dumps({"question_id": "aa11", "image": "aa11.jpg", "text": "What brand?" + SHORT}))
  assert error_of("textvqa_val", tmp_path).startswith(f"{path}:1: expected the text")


def test_pope_labels_must_match_their_questions(tmp_path):
  pope_layout(tmp_path)
  labels = tmp_path / "coco" / "coco_pope_adversarial.json"
  rewrite_line(labels, 2, json.dumps({"question_id": 2, "image": "other.jpg", "text": "q", "label": "no"}))
  message = error_of("pope", tmp_path)
  assert message.startswith(f"{labels}:2: expected image 'COCO_val2014_2.jpg'")
  labels.write_text(labels.read_text().splitlines()[0] + "\n")
  assert error_of("pope", tmp_path).startswith(f"{labels}: expected a label for question 2")
  rewrite_line(tmp_path / "llava_pope_test.jsonl", 1, json.dumps(
      {"question_id": 1, "image": "a.jpg", "text": "q", "category": "../../etc"}))
  assert "expected a category among adversarial, popular, random" in error_of("pope", tmp_path)


def test_mme_answers_come_from_its_own_files(tmp_path):
  mme_layout(tmp_path)
  truth = tmp_path / "MME_Benchmark_release_version" / "count" / "0001.txt"
  truth.write_text("Are there two dogs? Please answer yes or no.\n")
  assert error_of("mme", tmp_path).startswith(f"{truth}:1: expected 'question<TAB>answer'")
  truth.write_text("Are there five dogs? Please answer yes or no.\tNo\n")
  assert error_of("mme", tmp_path).startswith(f"{tmp_path / 'llava_mme.jsonl'}:1: expected MME's answer file")
  os.remove(truth)
  assert error_of("mme", tmp_path).startswith(f"{truth}: file not found")


def test_scienceqa_problem_missing(tmp_path):
  scienceqa_layout(tmp_path)
  problems = json.loads((tmp_path / "problems.json").read_text())
  del problems["11"]
  (tmp_path / "problems.json").write_text(json.dumps(problems))
  message = error_of("scienceqa_img", tmp_path)
  assert message.startswith(str(tmp_path / "problems.json")) and "'11'" in message and "entry 2" in message


def test_mmbench_tsv_columns_and_rows(tmp_path):
  path = tmp_path / "mmbench_dev_20230712.tsv"
  path.write_text("index\tquestion\thint\tA\tB\tanswer\tcategory\timage\n")
  message = error_of("mmbench_en_dev", tmp_path)
  assert message.startswith(str(path)) and "C, D, l2-category" in message
  mmbench_tsv(path, [[1, "q", "nan", "a", "b", "", "", "A", "c", "", "s", "l2", "", "dev"], [2, "q", "too short"]])
  assert error_of("mmbench_en_dev", tmp_path).startswith(f"{path}:3: expected 14 tab-separated cells, got 3")
  mmbench_tsv(path, [["one", "q", "nan", "a", "b", "", "", "A", "c", "", "s", "l2", "", "dev"]])
  assert "expected an integer index, got 'one'" in error_of("mmbench_en_dev", tmp_path)
