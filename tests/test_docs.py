"""The documentation holds together: links resolve, and the README's commands are CI's."""

from __future__ import annotations

import glob
import os
import re

import pytest

from conftest import REPO

DOCS = sorted([os.path.join(REPO, "README.md"), os.path.join(REPO, "CHANGELOG.md")] +
              glob.glob(os.path.join(REPO, "docs", "*.md")))
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
  """The lines outside fenced code blocks, inline code spans blanked out."""
  lines, fenced = [], False
  for line in text.splitlines():
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced and not line.startswith("    "):
      lines.append(re.sub(r"`[^`]*`", "``", line))
  return lines


def _anchors(path: str) -> set[str]:
  """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -n twins."""
  seen: dict[str, int] = {}
  ids = set()
  with open(path, encoding="utf-8") as f:
    text = f.read()
  for line in _prose(text.replace("``", "")):
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    title = re.sub(r"`", "", m.group(1))
    slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    ids.add(slug if n == 0 else f"{slug}-{n}")
  return ids


def _links(path: str) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [m.group(1) for line in _prose(f.read()) for m in _LINK.finditer(line)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(doc):
  broken = []
  for target in _links(doc):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
      continue
    file_part, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(os.path.dirname(doc), file_part)) if file_part else doc
    if not os.path.exists(dest):
      broken.append(f"{target}: no file {os.path.relpath(dest, REPO)}")
    elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
      broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, REPO)}")
  assert not broken, f"{os.path.relpath(doc, REPO)}: " + "; ".join(broken)


def test_the_docs_pages_are_linked_from_the_readme():
  linked = {os.path.normpath(os.path.join(REPO, t.partition("#")[0]))
            for t in _links(os.path.join(REPO, "README.md"))}
  pages = glob.glob(os.path.join(REPO, "docs", "*.md"))
  assert pages, "docs/ has no pages"
  missing = sorted(os.path.relpath(p, REPO) for p in pages if p not in linked)
  assert not missing, f"README.md links none of {missing}"


def test_the_readme_test_command_is_the_last_line_ci_runs():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
  command = 'pip install -e ".[test]" && python -m pytest -q'
  assert command in readme.splitlines()
  assert ci[-1].replace("pip install -q ", "pip install ") == command  # pip's -q: quieter


def test_the_readme_is_a_front_door_not_a_notebook():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    assert len(f.read().splitlines()) <= 200
