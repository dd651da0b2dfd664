"""The package layering (issue 15): imports only point down, never up, no cycles.

Layer order, lowest first::

    react < index < retrieval_service < download < downstream < customize < demo

``react`` is the core (contracts, model loading, templates, progress, errors,
config, images, the embedded world) and imports no other package of ours; the
stages plug into it through entry points (``pyproject.toml``, react/plugins.py),
which may name any stage.

Every ``.py`` file of these packages is parsed with ``ast`` -- nothing is
imported, so the check costs a fraction of a second and sees lazy imports too.
What counts as an import of package P:

- ``import P...`` and ``from P... import ...`` anywhere in the file (inside
  functions, under ``if TYPE_CHECKING``), relative imports resolved;
- a string constant that names a module of ours: ``"P.mod"`` or ``"P.mod:attr"``
  (entry-point form), or any string passed to ``importlib.import_module``,
  ``__import__`` or ``importlib.util.find_spec``. A dotted string counts only if
  the module exists in the tree (``P/mod.py`` or ``P/mod/__init__.py``), so file
  names such as ``"index.json"`` or ``"download.json"`` are not mistaken for
  modules, nor entry-point group names such as ``"react.commands"``.
"""
from __future__ import annotations

import ast
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("react", "index", "retrieval_service", "download", "downstream", "customize", "demo")
RANK = {name: i for i, name in enumerate(LAYERS)}
CORE = "react"

_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_IMPORT_CALLS = {"import_module", "__import__", "find_spec"}


@dataclass(frozen=True)
class Edge:
    src: str        # importing package
    dst: str        # imported package
    file: str       # path relative to the tree's root
    line: int
    what: str       # the offending statement or string, as written

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}  ({self.src} -> {self.dst})"


def module_exists(root: Path, dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of ours in the tree at ``root``."""
    parts = dotted.split(".")
    if parts[0] not in RANK:
        return False
    base = root.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    """(dotted module name, is a package's __init__) of a file under ``root``."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join(parts), is_init


def _resolve_relative(module: str, is_init: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from {'.' * level}{target} import ...`` inside ``module``."""
    package = module.split(".") if is_init else module.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join(package + ([target] if target else []))


def _string_target(root: Path, value: str, forced: bool) -> str | None:
    """The module a string constant names, if it names one of ours.

    ``forced``: the string is an argument of an import call, so a bare package
    name counts too; otherwise only dotted names and ``mod:attr`` forms do (a
    bare word such as ``"index"`` is a dict key or a command name far more
    often than an import).
    """
    text = value.strip()
    if ":" in text:
        text, _, attr = text.partition(":")
        if not _DOTTED.fullmatch(attr):
            return None
        forced = True
    if not _DOTTED.fullmatch(text) or text.split(".")[0] not in RANK:
        return None
    if "." not in text and not forced:
        return None
    return text if module_exists(root, text) else None


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def edges_of_file(root: Path, path: Path) -> list[Edge]:
    """Every reference from ``path`` (a file of package ``src``) to another package of ours."""
    module, is_init = _module_name(root, path)
    src = module.split(".")[0]
    rel = path.relative_to(root).as_posix()
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=rel)
    lines = source.splitlines()
    found: list[Edge] = []

    def add(target: str, node: ast.AST, what: str | None = None) -> None:
        dst = target.split(".")[0]
        if dst in RANK and dst != src:
            line = getattr(node, "lineno", 0)
            text = what or (lines[line - 1].strip() if 0 < line <= len(lines) else target)
            found.append(Edge(src, dst, rel, line, text))

    forced_strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in _IMPORT_CALLS:
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    forced_strings.add(id(arg))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve_relative(module, is_init, node.level, node.module)
            else:
                target = node.module or ""
            add(target, node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            target = _string_target(root, node.value, id(node) in forced_strings)
            if target is not None:
                line = lines[node.lineno - 1].strip() if 0 < node.lineno <= len(lines) else repr(node.value)
                add(target, node, f"{line}  [string naming module {target}]")
    return found


def package_files(root: Path) -> list[Path]:
    files = []
    for name in LAYERS:
        pkg = root / name
        if pkg.is_dir():
            files += sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def import_edges(root: Path) -> list[Edge]:
    edges: list[Edge] = []
    for path in package_files(root):
        edges += edges_of_file(root, path)
    return edges


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Cycles of the package graph (each once, as a closed path of packages)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    cycles.append(path + [start])
            elif nxt not in path and RANK[nxt] > RANK[start]:  # each cycle from its lowest package
                visit(start, nxt, path + [nxt])

    for start in sorted(graph, key=RANK.__getitem__):
        visit(start, start, [start])
    return cycles


def violations(root: Path) -> list[str]:
    """Every breach of the layering in the tree at ``root``, one message each."""
    edges = import_edges(root)
    problems: list[str] = []
    for e in edges:
        if e.src == CORE:
            problems.append(f"core imports a stage: {e}")
        elif RANK[e.dst] > RANK[e.src]:
            problems.append(f"upward import ({e.src} is below {e.dst}): {e}")
    for cycle in find_cycles(edges):
        witness = []
        for a, b in zip(cycle, cycle[1:]):
            first = next(e for e in edges if e.src == a and e.dst == b)
            witness.append(f"{a} -> {b} at {first.file}:{first.line} ({first.what})")
        problems.append("import cycle " + " -> ".join(cycle) + ": " + "; ".join(witness))
    return problems


def entry_point_problems(root: Path) -> list[str]:
    """pyproject.toml's entry points may name any stage, but must name a module and
    an attribute that exist."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    problems = []
    for group, entries in data.get("project", {}).get("entry-points", {}).items():
        for name, value in entries.items():
            mod, _, attr = value.partition(":")
            where = f"pyproject.toml [project.entry-points.{group!r}] {name} = {value!r}"
            if not module_exists(root, mod):
                problems.append(f"{where}: no module {mod}")
                continue
            base = root.joinpath(*mod.split("."))
            file = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            if attr and attr.split(".")[0] not in _top_level_names(file):
                problems.append(f"{where}: {file.relative_to(root)} defines no {attr.split('.')[0]}")
    scripts = data.get("project", {}).get("scripts", {})
    for name, value in scripts.items():
        mod = value.partition(":")[0]
        if not module_exists(root, mod):
            problems.append(f"pyproject.toml [project.scripts] {name} = {value!r}: no module {mod}")
    return problems


def _top_level_names(file: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


# --------------------------------------------------------------------------- the tree


def test_layering_of_the_tree():
    problems = violations(ROOT)
    assert not problems, "imports that break the layering " + " < ".join(LAYERS) + ":\n" + "\n".join(problems)


def test_entry_points_name_existing_modules():
    problems = entry_point_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_check_sees_the_tree():
    # Guard against a checker that passes because it parsed nothing.
    files = package_files(ROOT)
    assert {p.relative_to(ROOT).parts[0] for p in files} == set(LAYERS)
    edges = import_edges(ROOT)
    pairs = {(e.src, e.dst) for e in edges}
    assert ("demo", "customize") in pairs and ("index", "react") in pairs


# --------------------------------------------------------------------------- the checker itself


def _copy_tree(dst: Path) -> Path:
    for name in LAYERS:
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_core_importing_a_stage_fails(tmp_path):
    root = _copy_tree(tmp_path)
    models = root / "react" / "models.py"
    n = len(models.read_text().splitlines())
    with models.open("a") as f:
        f.write("\nimport customize\n")
    problems = violations(root)
    assert any(p.startswith("core imports a stage") and f"react/models.py:{n + 2}: import customize" in p
               for p in problems), problems


def test_synthetic_breaches_are_named(tmp_path):
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "index" / "sub").mkdir()
    (tmp_path / "index" / "sub" / "__init__.py").write_text("")
    (tmp_path / "customize" / "gated.py").write_text("def apply():\n    pass\n")
    (tmp_path / "download" / "json.py").write_text("")  # makes "download.json" a module name below

    # allowed: downward imports, relative imports, file names that are not modules
    (tmp_path / "customize" / "train.py").write_text(
        "from downstream import zeroshot\nfrom . import gated\nNAME = 'index.json'\n")
    (tmp_path / "demo" / "run.py").write_text("import customize.gated\nimport react\n")
    (tmp_path / "index" / "sub" / "a.py").write_text("from .. import build\nfrom ..build import y\nfrom react import x\n")
    assert violations(tmp_path) == []

    # a lazy import inside a function, an entry-point-style string, import_module of a bare name
    (tmp_path / "react" / "models.py").write_text(
        "def load():\n    from customize.gated import apply\n    return apply\n")
    (tmp_path / "react" / "plugins.py").write_text("DEFAULT = 'customize.gated:apply'\n")
    (tmp_path / "index" / "build.py").write_text(
        "import importlib\n\n\ndef f():\n    return importlib.import_module('download')\n")
    (tmp_path / "download" / "runner.py").write_text("X = 'download.json'\n")  # same package: fine
    problems = violations(tmp_path)
    assert any("core imports a stage" in p and "react/models.py:2: from customize.gated import apply" in p
               for p in problems), problems
    assert any("react/plugins.py:1: DEFAULT = 'customize.gated:apply'  [string naming module customize.gated]" in p for p in problems), problems
    assert any(p.startswith("upward import (index is below download)") and "index/build.py:5" in p
               and "import_module('download')" in p for p in problems), problems
    assert len(problems) == 3, problems

    # a cycle among stages is named with a witness per edge
    (tmp_path / "react" / "models.py").write_text("")
    (tmp_path / "react" / "plugins.py").write_text("")
    (tmp_path / "index" / "build.py").write_text("")
    (tmp_path / "downstream" / "zeroshot.py").write_text("from customize import gated\n")
    problems = violations(tmp_path)
    assert any("upward import (downstream is below customize): downstream/zeroshot.py:1" in p
               for p in problems), problems
    cycles = [p for p in problems if p.startswith("import cycle")]
    assert len(cycles) == 1 and "downstream -> customize -> downstream" in cycles[0], problems
    assert "customize/train.py:1" in cycles[0] and "downstream/zeroshot.py:1" in cycles[0], cycles


def test_strings_that_are_not_modules_are_ignored(tmp_path):
    for name in LAYERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "react" / "x.py").write_text(
        "A = ['index', 'download', 'index.json', 'react.commands', 'customize:', 'a customize.gated b',\n"
        "     'download.json', 'https://demo.example/x', 'retrieval_service.static']\n"
        '"""Docstring naming customize.gated and index.build."""\n')
    assert violations(tmp_path) == []
