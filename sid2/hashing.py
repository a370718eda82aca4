"""File digests, one home (the digest of a parameter tree is `sid2.export.params_sha256`, kept in export.py so an
export directory loads with that one file).

Recorded in run records, exports and evaluation results so that a reader can tell which file produced a number.
"""
from __future__ import annotations

import hashlib


def file_sha256(path: str) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()

