"""A text corpus every CPython install has: Python's own documentation topics.

`pydoc_data.topics` (about 0.5 MB of UTF-8) is what the language-model studies train
on when no data.path is given: no download, the same bytes on every machine with the
same Python.
"""

from __future__ import annotations

import os


def python_docs_bytes(n_bytes: int = 0) -> bytes:
  """The topics sorted by key, joined by blank lines, cut to about n_bytes (0: all of
  it) at a character boundary."""
  import pydoc_data.topics  # pylint: disable=g-import-not-at-top
  topics = pydoc_data.topics.topics
  raw = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
  if n_bytes:
    raw = raw[:n_bytes].decode("utf-8", errors="ignore").encode("utf-8")
  return raw


def write_python_docs(directory: str, n_bytes: int = 0) -> str:
  """python-docs.txt in `directory` (written atomically; kept if already whole there
  and n_bytes is 0); its path."""
  path = os.path.join(directory, "python-docs.txt")
  if n_bytes or not os.path.exists(path):
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
      f.write(python_docs_bytes(n_bytes))
    os.replace(path + ".tmp", path)
  return path


def cached_python_docs(cache_dir: str = "") -> str:
  """The whole corpus in the cache folder (data.cache_dir, default ~/.cache/sgdlab),
  written once."""
  root = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "sgdlab")
  return write_python_docs(root)
