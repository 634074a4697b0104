"""`--config FILE.py [--config.KEY=VALUE ...]`, ml_collections style, with our errors.

A config file defines `get_config()` returning an `ml_collections.ConfigDict`. An
override must name an existing key (a typo would otherwise train the wrong thing
silently) and is parsed to the type of the value it replaces.
"""

import ast
import importlib.util
import os
import sys

import ml_collections

from visregion_jax.errors import VisRegionError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def load_config_file(path: str) -> ml_collections.ConfigDict:
  if not os.path.isfile(path):
    raise VisRegionError(path, "config file not found")
  spec = importlib.util.spec_from_file_location("visregion_config", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # configs import their siblings
  try:
    spec.loader.exec_module(module)
    config = module.get_config() if hasattr(module, "get_config") else None
  except Exception as e:  # a user's config file can raise anything, on import or in get_config()
    raise VisRegionError(path, f"expected a loadable Python config ({type(e).__name__}: {e})") from None
  finally:
    sys.path.pop(0)
  if not hasattr(module, "get_config"):
    raise VisRegionError(path, "expected a get_config() function")
  if not isinstance(config, ml_collections.ConfigDict):
    raise VisRegionError(f"{path}: get_config()", "expected an ml_collections.ConfigDict")
  return config


def parse_value(text: str, current, key: str):
  """`text` as the type of `current` (bools by name, numbers, tuples, lists and dicts literally)."""
  if isinstance(current, (dict, ml_collections.ConfigDict)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if not isinstance(value, dict):
      raise VisRegionError(f"--config.{key}", f"expected a dict literal, got {text!r}")
    return ml_collections.ConfigDict(value)
  if isinstance(current, bool):
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise VisRegionError(f"--config.{key}", f"expected true or false, got {text!r}")
  if isinstance(current, (int, float)) or isinstance(current, (tuple, list)) or current is None:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      if current is None:
        return text
      raise VisRegionError(f"--config.{key}", f"expected a {type(current).__name__}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    # bool is an int to isinstance, but `steps=True` is a typo, not a step count
    if current is not None and (not isinstance(value, type(current)) or isinstance(value, bool)):
      if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
      raise VisRegionError(f"--config.{key}", f"expected a {type(current).__name__}, got {text!r}")
    return value
  return text


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise VisRegionError(f"--config.{key}", f"unknown config key ({'.'.join(parts[:i + 1])} does not exist)")
    if i < len(parts) - 1:
      node = node[part]
  with node.unlocked():
    try:
      node[parts[-1]] = parse_value(text, node[parts[-1]], key)
    except TypeError as e:  # ml_collections refuses a type change
      raise VisRegionError(f"--config.{key}", f"expected a value of the key's type ({e})") from None


def load_config(argv: list, prog: str) -> ml_collections.ConfigDict:
  """The config named by `--config` with every `--config.KEY=VALUE` applied, in order."""
  path, overrides = None, []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg == "--config" and args:
      path = args.pop(0)
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg.startswith("--config.") and "=" in arg:
      key, value = arg[len("--config."):].split("=", 1)
      overrides.append((key, value))
    elif arg.startswith("--config.") and args:
      overrides.append((arg[len("--config."):], args.pop(0)))
    else:
      raise VisRegionError(prog, f"unexpected argument {arg!r} (expected --config FILE and --config.KEY=VALUE)")
  if path is None:
    raise VisRegionError(prog, "expected --config FILE.py")
  config = load_config_file(path)
  for key, value in overrides:
    apply_override(config, key, value)
  return expand_workdir(config, config.get("workdir", ""))


def expand_workdir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """Replaces `{workdir}` in string values, so paths follow a `--config.workdir` override."""
  with config.unlocked():
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        expand_workdir(value, workdir)
      elif isinstance(value, str) and "{workdir}" in value:
        config[key] = value.replace("{workdir}", workdir)
  return config
