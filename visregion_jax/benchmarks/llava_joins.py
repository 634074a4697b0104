"""LLaVA-1.5's question files joined with the files that hold their answers.

LLaVA's question files carry a prompt (`text`) and an image path but, for most tasks,
no answer: its scripts look the answer up afterwards in the benchmark's own files. Each
join here does that lookup when the task is opened and gives every question the fields
the task's Hugging Face dataset has (tasks.py), so scorers see one schema per task. It
returns [(fields, image paths relative to the image folder)] in question-file order.
A question the answer files do not cover is an error naming both files.
"""

import os

from visregion_jax.benchmarks import llava_files, tasks
from visregion_jax.benchmarks.llava_files import image_path, read_json, read_jsonl, require, require_list
from visregion_jax.errors import VisRegionError

_QUESTION_KEYS = ("question_id", "image", "text")
_SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
_OCR_PREFIX = "Reference OCR token: "
_MME_YES_NO = "Please answer yes or no."


def _path(root: str, relative: str) -> str:
  return os.path.join(root, relative)


def _questions(root: str, spec: tasks.Llava, *more: str) -> list:
  """LLaVA's question file: question_id, image and text on every line (and the string keys `more`)."""
  return read_jsonl(_path(root, spec.question_file), _QUESTION_KEYS + more, ("text",) + more)


def gqa(root: str, spec: tasks.Llava) -> list:
  """Answers from GQA's testdev_balanced_questions.json, keyed by question id."""
  answers_path = _path(root, spec.answer_files[0])
  answers = read_json(answers_path, dict)
  rows = []
  for where, line in _questions(root, spec):
    qid = str(line["question_id"])
    if qid not in answers:
      raise VisRegionError(answers_path, f"expected question {qid!r} (asked at {where})")
    entry = require(answers[qid], ("question", "answer", "imageId"), f"{answers_path} question {qid!r}")
    rows.append(({"id": qid, "imageId": entry["imageId"], "question": entry["question"], "answer": entry["answer"]},
                 [image_path(line, "image", where)]))
  return rows


def _textvqa_prompt_parts(text: str, where: str) -> tuple:
  """(question, OCR tokens) of LLaVA's three-line prompt: question, OCR tokens, instruction."""
  lines = text.split("\n")
  if len(lines) != 3 or not lines[1].startswith(_OCR_PREFIX.strip()):
    raise VisRegionError(where, "expected the text 'question\\nReference OCR token: ...\\ninstruction' "
                         "of llava_textvqa_val_v051_ocr.jsonl")
  tokens = lines[1][len(_OCR_PREFIX):]
  return lines[0], tokens.split(", ") if tokens else []


def textvqa(root: str, spec: tasks.Llava) -> list:
  """Answers from TextVQA_0.5.1_val.json, matched on (image id, question) as LLaVA's
  eval_textvqa does (its question files name the image id as question_id); the OCR
  tokens are the ones LLaVA's prompt lists."""
  answers_path = _path(root, spec.answer_files[0])
  data = require(read_json(answers_path, dict), ("data",), answers_path)["data"]
  index = {}
  for number, entry in enumerate(require_list(data, f"{answers_path} data")):
    entry = require(entry, ("image_id", "question", "question_id", "answers"), f"{answers_path} data[{number}]")
    index.setdefault((str(entry["image_id"]), entry["question"].lower()), entry)
  rows = []
  for where, line in _questions(root, spec):
    question, tokens = _textvqa_prompt_parts(line["text"], where)
    entry = index.get((str(line["question_id"]), question.lower()))
    if entry is None:
      raise VisRegionError(answers_path, f"expected the question of {where} for image {line['question_id']!r}")
    rows.append(({"question_id": entry["question_id"], "image_id": entry["image_id"], "question": entry["question"],
                  "answers": entry["answers"], "ocr_tokens": tokens}, [image_path(line, "image", where)]))
  return rows


def pope(root: str, spec: tasks.Llava) -> list:
  """Labels from POPE's coco_pope_<category>.json, matched by position within the
  category as LLaVA's eval_pope does; the image of each pair must agree."""
  label_files = {os.path.basename(f)[len("coco_pope_"):-len(".json")]: f for f in spec.answer_files}
  labels, used, rows = {}, {}, []
  for where, line in _questions(root, spec, "category"):
    category = line["category"]
    if category not in label_files:
      raise VisRegionError(where, f"expected a category among {', '.join(label_files)}, got {category!r}")
    path = _path(root, label_files[category])
    if category not in labels:
      labels[category] = read_jsonl(path, ("image", "text", "label"), ("image", "text", "label"))
    position = used[category] = used.get(category, -1) + 1
    if position >= len(labels[category]):
      raise VisRegionError(path, f"expected a label for question {position + 1} of category {category!r} ({where})")
    image = image_path(line, "image", where)
    label_where, label = labels[category][position]
    if label["image"] != image:
      raise VisRegionError(label_where, f"expected image {image!r} as in {where}, got {label['image']!r}")
    rows.append(({"question_id": line["question_id"], "question": label["text"], "answer": label["label"],
                  "category": category}, [image]))
  return rows


def _mme_truth(image_root: str, category: str, image: str, where: str) -> list:
  """[(question, answer)] of an MME image: its .txt in the category folder, or in
  questions_answers_YN/ for categories that keep images in images/ (MME's release)."""
  category_dir = llava_files.folder(image_root, category)
  if os.path.isdir(os.path.join(category_dir, "images")):
    category_dir = llava_files.folder(category_dir, "questions_answers_YN")
  path = os.path.join(category_dir, os.path.splitext(os.path.basename(image))[0] + ".txt")
  pairs = []
  for number, line in enumerate(llava_files.read_text(path).splitlines(), 1):
    if line.strip():
      parts = line.strip().split("\t")
      if len(parts) != 2:
        raise VisRegionError(f"{path}:{number}", f"expected 'question<TAB>answer' (for {where})")
      pairs.append(tuple(parts))
  return pairs


def mme(root: str, spec: tasks.Llava) -> list:
  """Answers from MME's own question files; LLaVA's prompt drops MME's 'Please answer
  yes or no.', so a question matches once that is removed from both."""
  image_root = llava_files.folder(root, spec.image_dir)
  truth, rows = {}, []
  for where, line in _questions(root, spec, "category"):
    key = (line["category"], image_path(line, "image", where))
    if key not in truth:
      truth[key] = _mme_truth(image_root, *key, where)
    asked = line["text"].removesuffix(_SHORT_ANSWER).replace(_MME_YES_NO, "").strip()
    match = [(q, a) for q, a in truth[key] if q.replace(_MME_YES_NO, "").strip() == asked]
    if not match:
      raise VisRegionError(where, f"expected MME's answer file of {line['image']!r} to hold this question")
    rows.append(({"question_id": line["question_id"], "question": match[0][0], "answer": match[0][1],
                  "category": key[0]}, [key[1]]))
  return rows


def scienceqa(root: str, spec: tasks.Llava) -> list:
  """ScienceQA-IMG: the entries of llava_test_CQM-A.json that have an image, with their
  fields from ScienceQA's problems.json."""
  question_path, problems_path = _path(root, spec.question_file), _path(root, spec.answer_files[0])
  entries, problems = read_json(question_path, list), read_json(problems_path, dict)
  rows = []
  for number, entry in enumerate(entries):
    entry = require(entry, ("id",), f"{question_path} entry {number}")
    if "image" not in entry:
      continue
    pid = str(entry["id"])
    if pid not in problems:
      raise VisRegionError(problems_path, f"expected problem {pid!r} (entry {number} of {question_path})")
    problem = require(problems[pid], ("question", "choices", "answer", "hint"), f"{problems_path} problem {pid!r}")
    image = image_path(entry, "image", f"{question_path} entry {number}")
    rows.append(({name: problem[name] for name in ("question", "choices", "answer", "hint")}, [image]))
  return rows


def seedbench(root: str, spec: tasks.Llava) -> list:
  """Questions, options and answers from SEED-Bench.json, keyed by question id."""
  answers_path = _path(root, spec.answer_files[0])
  questions = require(read_json(answers_path, dict), ("questions",), answers_path)["questions"]
  names = ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer", "data_type",
           "question_type_id")
  index = {}
  for number, entry in enumerate(require_list(questions, f"{answers_path} questions")):
    entry = require(entry, names, f"{answers_path} questions[{number}]")
    index[str(entry["question_id"])] = entry
  rows = []
  for where, line in _questions(root, spec):
    entry = index.get(str(line["question_id"]))
    if entry is None:
      raise VisRegionError(answers_path, f"expected question {line['question_id']!r} (asked at {where})")
    rows.append(({name: entry[name] for name in names}, [image_path(line, "image", where)]))
  return rows


JOINS = {"gqa": gqa, "textvqa": textvqa, "pope": pope, "mme": mme, "scienceqa": scienceqa, "seedbench": seedbench}
