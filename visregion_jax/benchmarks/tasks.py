"""The benchmark tasks in one declarative table: where each is read from, the exact
columns read, how it is answered and how it is prompted.

A task (named as lmms-eval names it) is read from either of two published layouts of the
same data: the parquet files of the Hugging Face dataset lmms-eval loads for it, or
LLaVA-1.5's own evaluation layout (`playground/data/eval/<dir>/`: a question file, an
image folder and the files holding the answers). Both readers give a row the fields the
parquet dataset names, so prompts and scorers see one schema per task whichever copy a
user has. A file without one of the listed columns is refused when the task is opened,
before any model is loaded. docs/evaluation.md says the same in words.
"""

from dataclasses import dataclass
from typing import Optional

from visregion_jax.errors import VisRegionError

# How a task is answered, i.e. what its scorer compares.
SHORT_ANSWER = "short_answer"  # a word or phrase, normalised and matched with the answer(s)
YES_NO = "yes_no"
OPTION_LETTER = "option_letter"  # multiple choice, answered with an option's letter
MMMU_MIXED = "mmmu_mixed"  # multiple-choice rows answered by letter, open rows by a short answer
LOGLIKELIHOOD = "loglikelihood"  # the answer letter the model finds most likely; nothing generated

# How a parquet row's image columns become the sample's images.
NO_IMAGES = "none"
ONE_IMAGE = "one"  # one image column; a null cell is a missing image
OPTIONAL_IMAGE = "optional"  # one image column; a null cell is a question without an image
IMAGE_LIST = "list"  # one column holding a list of images (SEED-Bench: a video's frames)
REFERENCED = "referenced"  # image_1..image_7, those the question or options name as <image i>
JOINED = "joined"  # kept in another config of the dataset, joined on an id (GQA)


@dataclass(frozen=True)
class ImageTable:
  """Images kept in another config of the dataset, joined to the rows on an id."""
  config_dir: str
  split: str
  key: str  # the row's column naming its image
  id_column: str
  image_column: str


@dataclass(frozen=True)
class Parquet:
  """A dataset's parquet files as `huggingface-cli download` lays them out:
  `<root>/<config_dir>/<split>-NNNNN-of-NNNNN.parquet` (or `<config_dir>/<split>/*.parquet`)."""
  repo: str  # the dataset's repo id, for docs and messages
  config: str  # the dataset config (lmms-eval's dataset_name); "default" when it has one config
  config_dir: str  # the config's folder in the snapshot; "*": one folder per subject (MMMU)
  split: str
  columns: tuple  # the non-image columns read, under the dataset's names
  images: str = NO_IMAGES
  image_columns: tuple = ()
  image_table: Optional[ImageTable] = None


@dataclass(frozen=True)
class Llava:
  """LLaVA-1.5's evaluation layout of the task; paths are relative to its folder."""
  question_file: str
  image_dir: Optional[str]  # "": the folder itself; None: images inline (MMBench's base64 column)
  answer_files: tuple  # the files that give each question its answer fields
  join: str  # how they are joined: llava_joins.JOINS, or "mmbench" (the tsv reader, mmbench_tsv.py)


@dataclass(frozen=True)
class Task:
  name: str
  answer: str
  prompt: str  # the prompt builder (prompts.BUILDERS)
  parquet: Parquet
  llava: Optional[Llava] = None
  fewshot: Optional[Parquet] = None  # the split few-shot exemplars come from (MMLU's dev)


_IMAGE = ("image",)
_MMMU_IMAGES = tuple(f"image_{i}" for i in range(1, 8))
_MMLU_COLUMNS = ("question", "subject", "choices", "answer")

TASKS = {t.name: t for t in (
    Task("gqa", SHORT_ANSWER, "short_answer",
         Parquet("lmms-lab/GQA", "testdev_balanced_instructions", "testdev_balanced_instructions", "testdev",
                 ("id", "imageId", "question", "answer"), JOINED,
                 image_table=ImageTable("testdev_balanced_images", "testdev", "imageId", "id", "image")),
         Llava("llava_gqa_testdev_balanced.jsonl", "data/images", ("data/testdev_balanced_questions.json",), "gqa")),
    Task("textvqa_val", SHORT_ANSWER, "textvqa",
         Parquet("lmms-lab/textvqa", "default", "data", "validation",
                 ("question_id", "image_id", "question", "answers", "ocr_tokens"), ONE_IMAGE, _IMAGE),
         Llava("llava_textvqa_val_v051_ocr.jsonl", "train_images", ("TextVQA_0.5.1_val.json",), "textvqa")),
    Task("vqav2_val", SHORT_ANSWER, "short_answer",
         Parquet("lmms-lab/VQAv2", "default", "data", "validation",
                 ("question_id", "image_id", "question", "answers", "answer_type", "multiple_choice_answer"),
                 ONE_IMAGE, _IMAGE)),
    Task("pope", YES_NO, "pope",
         Parquet("lmms-lab/POPE", "default", "data", "test", ("question_id", "question", "answer", "category"),
                 ONE_IMAGE, _IMAGE),
         Llava("llava_pope_test.jsonl", "val2014", tuple(f"coco/coco_pope_{c}.json"
                                                         for c in ("adversarial", "popular", "random")), "pope")),
    Task("mme", YES_NO, "mme",
         Parquet("lmms-lab/MME", "default", "data", "test", ("question_id", "question", "answer", "category"),
                 ONE_IMAGE, _IMAGE),
         # the answers are MME's own text files next to its images (llava_reader.mme_answers)
         Llava("llava_mme.jsonl", "MME_Benchmark_release_version", (), "mme")),
    Task("scienceqa_img", OPTION_LETTER, "scienceqa",
         Parquet("lmms-lab/ScienceQA", "ScienceQA-IMG", "ScienceQA-IMG", "test",
                 ("question", "choices", "answer", "hint"), OPTIONAL_IMAGE, _IMAGE),
         Llava("llava_test_CQM-A.json", "images/test", ("problems.json",), "scienceqa")),
    Task("seedbench", OPTION_LETTER, "seedbench",
         Parquet("lmms-lab/SEED-Bench", "default", "data", "test",
                 ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer", "data_type",
                  "question_type_id"), IMAGE_LIST, _IMAGE),
         Llava("llava-seed-bench.jsonl", "", ("SEED-Bench.json",), "seedbench")),
    Task("mmbench_en_dev", OPTION_LETTER, "mmbench",
         Parquet("lmms-lab/MMBench", "en", "en", "dev",
                 ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "L2-category"),
                 ONE_IMAGE, _IMAGE),
         Llava("mmbench_dev_20230712.tsv", None, (), "mmbench")),
    Task("mmmu_val", MMMU_MIXED, "mmmu",
         Parquet("MMMU/MMMU", "one per subject", "*", "validation",
                 ("id", "question", "options", "answer", "question_type"), REFERENCED, _MMMU_IMAGES)),
    Task("mmlu", LOGLIKELIHOOD, "mmlu",
         Parquet("cais/mmlu", "all", "all", "test", _MMLU_COLUMNS),
         fewshot=Parquet("cais/mmlu", "all", "all", "dev", _MMLU_COLUMNS)),
)}


def task(name: str) -> Task:
  """The table's entry for `name`; an unknown name is an error that lists the known ones."""
  if name not in TASKS:
    raise VisRegionError("eval.tasks", f"expected tasks among {', '.join(TASKS)}; got {name!r}")
  return TASKS[name]
