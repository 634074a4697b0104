"""Checksums of what a checkpoint wrote, verified before it is restored.

Orbax publishes a step directory only when its write is complete, but a file can still
go missing, be truncated or change on disk afterwards, and orbax would restore the
damaged bytes silently (a weight of 4.9e35, a dead run). So once a step is committed,
every file in it is hashed into `WORKDIR/checkpoints/<step>/visregion_manifest.json`
(written last, atomically); restoring verifies every listed file's size and SHA-256
first. A committed step without a manifest (the run died in the moment between orbax's
commit and the manifest) is complete by orbax's own commit and restored with a warning.
"""

import hashlib
import json
import os
from typing import Optional

from visregion_jax.publish import write_file_atomically

MANIFEST = "visregion_manifest.json"
CHUNK = 1 << 22


def _files(step_dir: str) -> list:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != MANIFEST]
  return sorted(out)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      h.update(block)
  return h.hexdigest()


def write_manifest(step_dir: str) -> None:
  files = {name: {"bytes": os.path.getsize(os.path.join(step_dir, name)),
                  "sha256": _sha256(os.path.join(step_dir, name))} for name in _files(step_dir)}
  write_file_atomically(os.path.join(step_dir, MANIFEST), json.dumps({"files": files}, indent=1))


def has_manifest(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, MANIFEST))


def damage(step_dir: str) -> Optional[str]:
  """What is wrong with a committed step directory, or None when every file is intact
  (or it has no manifest to check against: see the module docstring)."""
  try:
    with open(os.path.join(step_dir, MANIFEST), encoding="utf-8") as f:
      files = json.load(f)["files"]
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable checksum manifest ({type(e).__name__})"
  for name, want in files.items():
    path = os.path.join(step_dir, name)
    if not os.path.isfile(path):
      return f"{name} is missing"
    if os.path.getsize(path) != want["bytes"]:
      return f"{name} has {os.path.getsize(path)} bytes, {want['bytes']} were written"
    if _sha256(path) != want["sha256"]:
      return f"{name} changed since it was written (checksum mismatch)"
  return None
