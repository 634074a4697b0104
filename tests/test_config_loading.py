"""`--config FILE.py [--config.KEY=VALUE ...]`: every argv form, overrides parsed to the
type of the value they replace, `{workdir}` following the workdir override, and each
bad input as one VisRegionError naming the file or key."""

import os
import sys

import ml_collections
import pytest

from visregion_jax.config.loading import load_config
from visregion_jax.errors import VisRegionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
import ml_collections
from sibling import DATA  # configs import their siblings

def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = "runs/a"
  c.seed = 0
  c.distributed = False
  c.model = ml_collections.ConfigDict()
  c.model.init_from = "{workdir}/base"
  c.model.feature_layers = (-2,)
  c.model.pretrain_vision_tower = None
  c.model.extra = ml_collections.config_dict.placeholder(int)
  c.region = ml_collections.ConfigDict()
  c.region.layers = ()
  c.region.lora_alpha = 256.0
  c.region.lora_rank = 128
  c.data = ml_collections.ConfigDict()
  c.data.buckets = [64]
  c.data.synthetic_sizes = dict(num_train=20, image_size=64)
  c.data.num_epochs = None
  c.data.train_json = DATA
  c.data.nested = ml_collections.ConfigDict()
  c.data.nested.root = "{workdir}/x:{workdir}/y"
  return c
"""


@pytest.fixture
def config_file(tmp_path):
  (tmp_path / "sibling.py").write_text('DATA = "{workdir}/data/train.json"\n')
  path = tmp_path / "cfg.py"
  path.write_text(CONFIG)
  yield str(path)
  sys.modules.pop("sibling", None)


def load(config_file, *overrides):
  return load_config(["--config", config_file, *overrides], "prog")


# (key, text, value and type it becomes)
OVERRIDES = [
    ("distributed", "true", True),
    ("distributed", "True", True),
    ("distributed", "yes", True),
    ("distributed", "1", True),
    ("distributed", "FALSE", False),
    ("distributed", "no", False),
    ("distributed", "0", False),
    ("seed", "7", 7),
    ("seed", "-3", -3),
    ("region.lora_alpha", "16", 16.0),  # an int where a float was: a float
    ("region.lora_alpha", "1e-3", 1e-3),
    ("model.feature_layers", "(-3, -1)", (-3, -1)),
    ("model.feature_layers", "[-3, -1]", (-3, -1)),  # a list where a tuple was: a tuple
    ("model.feature_layers", "-3,", (-3,)),
    ("region.layers", "()", ()),
    ("region.layers", "1,5,9", (1, 5, 9)),
    ("data.buckets", "(96, 128)", [96, 128]),
    ("data.buckets", "[]", []),
    ("data.num_epochs", "3", 3),        # None takes any literal
    ("data.num_epochs", "None", None),
    ("data.num_epochs", "[1, 2]", [1, 2]),
    ("data.num_epochs", "two", "two"),  # ... or the text itself
    ("model.init_from", "/a/b", "/a/b"),
    ("model.init_from", "5", "5"),      # a string stays a string
    ("model.init_from", "", ""),
]


@pytest.mark.parametrize("key, text, want", OVERRIDES, ids=[f"{k}={t}" for k, t, _ in OVERRIDES])
def test_override_takes_the_type_it_replaces(config_file, key, text, want):
  config = load(config_file, f"--config.{key}={text}")
  node = config
  for part in key.split("."):
    node = node[part]
  assert node == want and type(node) is type(want)


def test_dict_overrides_become_config_dicts(config_file):
  config = load(config_file, "--config.data.synthetic_sizes={'num_train': 4}",
                "--config.model.pretrain_vision_tower={'steps': 2}")
  for value in (config.data.synthetic_sizes, config.model.pretrain_vision_tower):
    assert isinstance(value, ml_collections.ConfigDict)
  assert config.data.synthetic_sizes.to_dict() == {"num_train": 4}
  assert config.model.pretrain_vision_tower.to_dict() == {"steps": 2}
  config = load(config_file, "--config.data.synthetic_sizes.image_size=32")
  assert config.data.synthetic_sizes.image_size == 32


# (override, the key the error names, what it says)
BAD_OVERRIDES = [
    ("--config.sead=1", "--config.sead", "unknown config key (sead does not exist)"),
    ("--config.region.layer=1", "--config.region.layer", "(region.layer does not exist)"),
    ("--config.regoin.layers=1", "--config.regoin.layers", "(regoin does not exist)"),
    ("--config.seed.x=1", "--config.seed.x", "(seed.x does not exist)"),
    ("--config.distributed=maybe", "--config.distributed", "expected true or false, got 'maybe'"),
    ("--config.seed=2.5", "--config.seed", "expected a int, got '2.5'"),
    ("--config.seed=seven", "--config.seed", "got 'seven'"),
    ("--config.seed=True", "--config.seed", "got 'True'"),
    ("--config.region.lora_rank=False", "--config.region.lora_rank", "got 'False'"),
    ("--config.region.lora_alpha=True", "--config.region.lora_alpha", "expected a float"),
    ("--config.region.lora_alpha=[1]", "--config.region.lora_alpha", "expected a float"),
    ("--config.model.feature_layers=-2", "--config.model.feature_layers", "expected a tuple, got '-2'"),
    ("--config.model.feature_layers=(-2", "--config.model.feature_layers", "expected a tuple"),
    ("--config.data.buckets={'a': 1}", "--config.data.buckets", "expected a list"),
    ("--config.data.synthetic_sizes=[1]", "--config.data.synthetic_sizes", "expected a dict literal"),
    ("--config.data.synthetic_sizes=4", "--config.data.synthetic_sizes", "expected a dict literal"),
    ("--config.model.extra=abc", "--config.model.extra", "expected a value of the key's type"),
]


@pytest.mark.parametrize("override, where, words", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_bad_override_names_the_key(config_file, override, where, words):
  with pytest.raises(VisRegionError) as e:
    load(config_file, override)
  assert e.value.where == where and words in e.value.expected, str(e.value)
  assert "\n" not in str(e.value)


def test_placeholder_takes_its_type(config_file):
  assert load(config_file, "--config.model.extra=4").model.extra == 4


def test_workdir_follows_the_override(config_file):
  config = load(config_file)
  assert config.model.init_from == "runs/a/base"
  assert config.data.train_json == "runs/a/data/train.json"
  assert config.data.nested.root == "runs/a/x:runs/a/y"
  config = load(config_file, "--config.data.train_json={workdir}/mine.json", "--config.workdir=/w")
  assert config.workdir == "/w"
  assert config.model.init_from == "/w/base"
  assert config.data.train_json == "/w/mine.json"
  assert config.data.nested.root == "/w/x:/w/y"
  config = load(config_file, "--config.model.init_from=/fixed", "--config.workdir=/w")
  assert config.model.init_from == "/fixed"


def test_demo_config_paths_follow_the_workdir():
  demo = os.path.join(REPO, "configs", "demo.py")
  config = load_config(["--config", demo, "--config.workdir=/tmp/w"], "prog")
  assert config.data.train_json == "/tmp/w/data/train.json"
  assert config.model.vision_tower == "/tmp/w/vision_tower"
  assert not any("{workdir}" in str(v) for v in config.data.values())


@pytest.mark.parametrize("argv", [
    ["--config", "{f}", "--config.seed=3", "--config.region.layers", "1,2"],
    ["--config={f}", "--config.seed", "3", "--config.region.layers=(1, 2)"],
    ["--config.seed=9", "--config.region.layers=(1, 2)", "--config.seed", "3", "--config={f}"],
], ids=["space", "equals", "overrides_first_last_wins"])
def test_argv_forms(config_file, argv):
  config = load_config([a.replace("{f}", config_file) for a in argv], "prog")
  assert config.seed == 3 and config.region.layers == (1, 2)


def test_value_may_contain_equals(config_file):
  assert load(config_file, "--config.model.init_from=a=b").model.init_from == "a=b"


@pytest.mark.parametrize("argv, words", [
    ([], "expected --config FILE.py"),
    (["--config.seed=3"], "expected --config FILE.py"),
    (["--config"], "unexpected argument '--config'"),
    (["--config", "{f}", "--seed=3"], "unexpected argument '--seed=3'"),
    (["--config", "{f}", "extra"], "unexpected argument 'extra'"),
    (["--config", "{f}", "--config.seed"], "unexpected argument '--config.seed'"),
])
def test_bad_argv(config_file, argv, words):
  with pytest.raises(VisRegionError) as e:
    load_config([a.replace("{f}", config_file) for a in argv], "prog")
  assert e.value.where == "prog" and words in e.value.expected


@pytest.mark.parametrize("body, where, words", [
    ("x = 1 / 0\n", "{f}", "expected a loadable Python config (ZeroDivisionError: division by zero)"),
    ("def get_config():\n  return {}['missing']\n", "{f}", "(KeyError: 'missing')"),
    ("import not_a_module_anywhere\n", "{f}", "(ModuleNotFoundError:"),
    ("def get_config(:\n", "{f}", "(SyntaxError:"),
    ("CONFIG = 1\n", "{f}", "expected a get_config() function"),
    ("def get_config():\n  return {'seed': 1}\n", "{f}: get_config()",
     "expected an ml_collections.ConfigDict"),
])
def test_bad_config_file(tmp_path, body, where, words):
  path = tmp_path / "bad.py"
  path.write_text(body)
  before = list(sys.path)
  with pytest.raises(VisRegionError) as e:
    load_config(["--config", str(path)], "prog")
  assert e.value.where == where.format(f=path) and words in e.value.expected, str(e.value)
  assert sys.path == before


def test_missing_config_file(tmp_path):
  with pytest.raises(VisRegionError, match="nope.py: config file not found"):
    load_config(["--config", str(tmp_path / "nope.py")], "prog")


def test_sys_path_is_restored(config_file):
  before = list(sys.path)
  load(config_file)
  assert sys.path == before
