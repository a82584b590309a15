"""The shape of the package: stages as folders, small modules, no import cycles."""

import ast
import os

import setuptools

from conftest import REPO

PACKAGE = os.path.join(REPO, "sgdlab")
ENTRY_POINTS = ("launch.py", "fit.py", "report.py")


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield name.removesuffix(".__init__"), path


def test_every_folder_is_a_package_that_pip_installs():
  folders = {os.path.relpath(root, REPO).replace(os.sep, ".")
             for root, _, files in os.walk(PACKAGE) if any(f.endswith(".py") for f in files)}
  found = set(setuptools.find_packages(REPO, include=["sgdlab", "sgdlab.*"]))
  assert folders == found, folders ^ found


def test_no_module_is_longer_than_one_sitting():
  long = {name: n for name, path in _modules() if (n := len(open(path).readlines())) > 400}
  assert not long, long
  for entry in ENTRY_POINTS:
    assert len(open(os.path.join(PACKAGE, entry)).readlines()) < 100, entry


def _imports(path: str, name: str) -> set[str]:
  """sgdlab modules `name` imports, at module level or deferred inside functions."""
  tree = ast.parse(open(path).read())
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      out.add(base)
      out |= {f"{base}.{a.name}" for a in node.names}
  return {m for m in out if m == "sgdlab" or m.startswith("sgdlab.")}


def test_no_import_cycles():
  # Deferred imports count too: a cycle through a function body is still a cycle.
  modules = dict(_modules())
  # `from sgdlab import data` names the package sgdlab too; an edge to one's own
  # ancestor package is how every package works, not a cycle.
  ancestor = lambda m, name: name.startswith(m + ".")
  graph = {name: {m for m in _imports(path, name)
                  if m in modules and m != name and not ancestor(m, name)}
           for name, path in modules.items()}
  done, stack = set(), []

  def visit(node):
    if node in stack:
      cycle = stack[stack.index(node):] + [node]
      raise AssertionError("import cycle: " + " -> ".join(cycle))
    if node in done:
      return
    stack.append(node)
    for dep in sorted(graph[node]):
      visit(dep)
    stack.pop()
    done.add(node)

  for name in sorted(graph):
    visit(name)
