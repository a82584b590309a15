"""The shape of the package: stages as folders, small modules and functions, imports that
only point down the floors, and experiments that are configs over the library."""

import ast
import os

import setuptools

from conftest import REPO

PACKAGE = os.path.join(REPO, "sgdlab")
EXPERIMENTS = os.path.join(REPO, "experiments")
ENTRY_POINTS = ("launch.py", "fit.py", "report.py")
MAX_FUNCTION_LINES = 60

# Lowest first; an import may point to its own floor or lower. Keyed by the first name
# under sgdlab (a module or a folder); "sgdlab" is the package's own __init__.py.
FLOORS = {
    "errors": 0, "units": 0,
    "data": 1, "models": 1, "optim": 1,
    "config": 2,
    "noise": 3, "noise_window": 3, "curvature": 3,
    "train": 4,
    "memory": 5,
    "results": 6,
    "trainer": 7,
    "sweep": 8,
    "studies": 9,
    "cli": 10, "launch": 10, "fit": 10, "report": 10, "sgdlab": 10,
    # A run's record and the findings read from its curves: plain data over numpy, the
    # type the loop (floor 4) produces; they sit in results/ beside their readers.
    "results.history": 3, "results.diagnostics": 3,
}

# (importer, imported) pairs allowed to point up, each with the reason it must stay.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("sgdlab.results.history", "sgdlab.results.figures"):
        "History.plot() draws with matplotlib, imported only when a figure is asked for",
}

# experiments/ files allowed to edit sys.path, each with the reason.
SYS_PATH_EXCEPTIONS = {
    "device_check.py": "runs on a lent accelerator machine that has no pip: it puts the "
                       "wheels carried with the tree on sys.path before importing sgdlab",
}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield name.removesuffix(".__init__"), path


def _experiments():
  return sorted(os.path.join(EXPERIMENTS, f) for f in os.listdir(EXPERIMENTS)
                if f.endswith(".py"))


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


def _import_lines(path: str, name: str) -> list[tuple[str, int]]:
  """(sgdlab module, line) for each import in `path`, module level or inside functions.

  `from sgdlab import data` names sgdlab.data, not the package; `from sgdlab.x import y`
  names sgdlab.x.y (a module or a name in sgdlab.x: the same floor either way).
  """
  tree = ast.parse(open(path).read())
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
  return [(m, line) for m, line in out if m == "sgdlab" or m.startswith("sgdlab.")]


def _floor(module: str) -> int:
  """The floor of a module (or of a name inside one): its most specific FLOORS key."""
  parts = module.split(".")
  if len(parts) > 2 and ".".join(parts[1:3]) in FLOORS:
    return FLOORS[".".join(parts[1:3])]
  key = parts[1] if len(parts) > 1 else "sgdlab"
  assert key in FLOORS, f"{module}: no floor assigned; add {key!r} to FLOORS"
  return FLOORS[key]


def test_every_module_has_a_floor():
  for name, _ in _modules():
    _floor(name)


def test_imports_only_point_down_the_floors():
  bad, used = [], set()
  for name, path in _modules():
    own = _floor(name)
    for target, line in _import_lines(path, name):
      if _floor(target) <= own:
        continue
      key = next(((a, b) for a, b in UPWARD_EXCEPTIONS
                  if a == name and (target == b or target.startswith(b + "."))), None)
      if key:
        used.add(key)
        continue
      bad.append(f"{os.path.relpath(path, REPO)}:{line} (floor {own}) imports {target} "
                 f"(floor {_floor(target)})")
  assert not bad, "imports that point up:\n" + "\n".join(bad)
  assert used == set(UPWARD_EXCEPTIONS), f"stale exceptions: {set(UPWARD_EXCEPTIONS) - used}"


def test_no_import_cycles():
  # Deferred imports count too: a cycle through a function body is still a cycle.
  modules = dict(_modules())
  # `from sgdlab import data` names the package sgdlab too; an edge to one's own
  # ancestor package is how every package works, not a cycle.
  ancestor = lambda m, name: name.startswith(m + ".")

  def targets(path, name):
    for m, _ in _import_lines(path, name):
      while m not in modules and "." in m:  # a name inside a module: the module
        m = m.rsplit(".", 1)[0]
      yield m

  graph = {name: {m for m in targets(path, name)
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


def test_no_function_is_longer_than_one_screen():
  long = []
  for _, path in _modules():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} {n} lines")
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _touches_sys_path(tree: ast.AST) -> bool:
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr == "path" and
        isinstance(node.value, ast.Name) and node.value.id == "sys"):
      return True
    if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(
        a.name == "path" for a in node.names):
      return True
  return False


def test_experiments_import_only_the_library():
  """An experiment is a config over sgdlab: it never imports another experiment (a
  second, unlayered library) and never edits sys.path to reach one."""
  names = {os.path.basename(p)[:-3] for p in _experiments()}
  bad = []
  for path in _experiments():
    tree = ast.parse(open(path).read())
    rel = os.path.relpath(path, REPO)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        mods = [(a.name, node.lineno) for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        mods = [("." * node.level + (node.module or ""), node.lineno)]
      else:
        continue
      for mod, line in mods:
        top = mod.split(".")[0]
        if mod.startswith(".") or top in names or top == "experiments":
          bad.append(f"{rel}:{line} imports {mod}, another experiment")
    if _touches_sys_path(tree) and os.path.basename(path) not in SYS_PATH_EXCEPTIONS:
      bad.append(f"{rel} edits sys.path")
  assert not bad, "\n".join(bad)
  for f in SYS_PATH_EXCEPTIONS:
    assert os.path.exists(os.path.join(EXPERIMENTS, f)), f"stale exception: {f}"
