"""Generated answers are cleaned as lmms-eval's command line cleans them before any task
scores them: its default reasoning tags cut out and whitespace stripped, equal to its own
`strip_reasoning_tags` (lmms_eval/api/reasoning.py, 0.7.3)."""

import ast
import json
import os
import re

import lmms_eval_reference
import pytest
from scoring_cases import ANSWERS

from visregion_jax.benchmarks.scoring.response import REASONING_TAGS, without_reasoning

TAGGED = ["<think>a</think>b<think>c</think>d", "</think>x<think>y", "<think>a</think></think>tail", "a</think>b</think>c",
          "<analysis>x</analysis><think>y</think> z ", "<think><analysis>x</think>y</analysis>w", "<THINK>x</THINK>y",
          "<think>only open", "</analysis>", "<think></think>", " \n B\n"]


@pytest.fixture(scope="module")
def lmms():
  with lmms_eval_reference.loaded() as load:
    yield load


def test_equal_to_lmms_evals(lmms):
  reasoning = lmms("api.reasoning")
  for text in ANSWERS + TAGGED:
    assert without_reasoning(text) == reasoning.strip_reasoning_tags(text, lmms_eval_reference.CLI_REASONING_TAGS), text


def test_tags_are_the_command_lines_default():
  with open(os.path.join(lmms_eval_reference.root(), "__main__.py"), encoding="utf-8") as f:
    source = f.read()
  default = re.search(r'"--reasoning_tags",\s*type=str,\s*default=(\'[^\']*\')', source).group(1)
  assert json.loads(ast.literal_eval(default)) == lmms_eval_reference.CLI_REASONING_TAGS == [list(t) for t in
                                                                                          REASONING_TAGS]
