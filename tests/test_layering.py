"""The layering of the code, enforced: every import in engine/, app/, benchmarks/ and main.py, walked
with `ast` (module-level and function-level, `import a.b`, `from a import b`, relative imports and
`importlib.import_module("...")` with a literal name), is checked against `LAYERS` below.

`LAYERS` is the one place the allowed edges are written; docs/ARCHITECTURE.md shows the same table and
defers to this file. Lowest layer first. A unit (a package of engine/, a top-level module of engine/,
or app / benchmarks / main) may import itself and any unit of a LOWER layer; units of the same layer do
not import each other. The checks:

(a) no upward (or sideways) edge;
(b) no import cycle between units (the unit graph is built from all imports and searched for cycles,
    independently of the table);
(c) engine/ never imports Qt, pyqtgraph or app/;
(d) no private name (`_name`, or a `_module`) is imported from another unit;
(e) every unit is placed in the table (a new package must be given its layer).

Only files are parsed, nothing is imported, so this runs in well under a second. It lives outside
tests/engine because tests/engine/conftest.py imports the engine (torch, open3d).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first. Each entry is one layer: the units in it may import themselves and every lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),  # engine/errors.py: UserError, the message meant for the user
    ("io", "jobs", "settings"),  # engine/io: atomic writes, torch files, writing video;
    #                  engine/jobs: job events, cancel token, pacing (TimeShare);
    #                  engine/settings.py: choices (Literal) and field docs of config dataclasses
    ("geometry",),  # cameras, pixel rays, rotations, linear blend skinning: pure tensor maths
    ("body",),  # body models (Anny, SMPL/SMPL-X) behind one interface
    ("project",),  # the project folder: the one format every stage reads and writes
    ("fields", "render", "metrics", "mesh"),  # encodings and body SDF; ray casting and volume
    #                  compositing; metrics; marching cubes, posing and writing meshes
    ("rig", "project_body"),  # rigged avatars: skeleton, skin weights, motion, the glTF binary;
    #                  engine/project_body.py: the body a project carries (arrays and SDF grid)
    ("synth",),  # synthetic scenes with exact ground truth
    ("preprocess",),  # video → project (decode, person, body fit, overlay)
    ("refine",),  # the avatar, its renders, losses, steps, fit/export jobs, checkpoints, prior files
    ("texture",),  # `bake`: UV textures of the fitted avatar from the video's pixels
    ("evaluation", "export"),  # engine/evaluation.py: `eval`, live held-out scores; engine/export.py: `export`
    ("prior", "preview"),  # `prior train`: the human fields over many videos; `render`: motion/turntable videos
    ("cli",),  # engine/cli.py: the headless command line
    ("app", "benchmarks"),  # the desktop app; the benchmarks
    ("main",),  # main.py: CLI or app
]

GUI_MODULES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "OpenGL", "app")


@dataclass(frozen=True)
class Import:
    """One imported name: `module` is absolute; `name` is the imported attribute (`from m import name`)."""

    file: str  # path relative to the root, e.g. engine/refine/loop.py
    line: int
    module: str  # e.g. engine.refine.loop
    name: str | None  # e.g. _step (None for `import m`)
    source: str  # the importing unit
    target: str | None  # the imported unit (None: outside the project, e.g. torch)

    def where(self) -> str:
        what = f"from {self.module} import {self.name}" if self.name else f"import {self.module}"
        return f"{self.file}:{self.line}: {what}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str | None:
    """engine.refine.loop → refine, engine.cli → cli, app.views.frames → app; None outside the project."""
    parts = module.split(".")
    if parts[0] == "engine":
        return parts[1] if len(parts) > 1 else "engine"
    if parts[0] in ("app", "benchmarks", "main"):
        return parts[0]
    return None


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import statement in a file, wherever it is (module level, functions, classes, if-blocks)."""
    rel = path.relative_to(root).as_posix()
    module = module_name(path, root)
    source = unit_of(module)
    is_package = path.name == "__init__.py"
    found = []

    def add(line: int, mod: str, name: str | None) -> None:
        target = unit_of(mod)
        if mod == "engine" and name is not None:  # `from engine import refine`: the unit is the name
            target = unit_of(f"engine.{name}")
        found.append(Import(rel, line, mod, name, source, target))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, module, is_package)
            for alias in node.names:
                add(node.lineno, mod, alias.name)
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.lineno, node.args[0].value, None)
    return found


def project_files(root: Path) -> list[Path]:
    files = [p for d in ("engine", "app", "benchmarks") for p in sorted((root / d).rglob("*.py"))]
    if (root / "main.py").exists():
        files.append(root / "main.py")
    return [p for p in files if "__pycache__" not in p.parts]


def scan(root: Path) -> list[Import]:
    return [imp for path in project_files(root) for imp in imports_of(path, root)]


def rank_of(layers: list[tuple[str, ...]]) -> dict[str, int]:
    rank = {"engine": -1}  # engine/__init__.py: the namespace, below everything, imports nothing
    for i, layer in enumerate(layers):
        for unit in layer:
            assert unit not in rank, f"{unit} appears twice in LAYERS"
            rank[unit] = i
    return rank


def _describe(rank: dict[str, int], unit: str) -> str:
    return f"{unit} (layer {rank[unit]})" if unit in rank else f"{unit} (not in LAYERS)"


def layer_violations(imports: list[Import], layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    """(a) upward or sideways edges, (e) units missing from the table."""
    rank = rank_of(layers)
    out = []
    for imp in imports:
        src, dst = imp.source, imp.target
        if dst is None or src == dst:
            continue
        if src not in rank or dst not in rank:
            missing = src if src not in rank else dst
            out.append(f"{imp.where()}  [{src} → {dst}: {missing} is not in LAYERS; give it a layer]")
        elif rank[dst] > rank[src]:
            out.append(f"{imp.where()}  [{_describe(rank, src)} → {_describe(rank, dst)}: upward edge]")
        elif rank[dst] == rank[src]:
            out.append(
                f"{imp.where()}  [{src} → {dst}: same layer {rank[src]}; siblings do not import each other]"
            )
    return out


def cycles(imports: list[Import]) -> list[str]:
    """(b) every strongly connected set of units, each shown as one cycle with a witness per edge."""
    witness: dict[tuple[str, str], Import] = {}
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.target is not None and imp.source is not None and imp.source != imp.target:
            graph[imp.source].add(imp.target)
            witness.setdefault((imp.source, imp.target), imp)

    # Tarjan's strongly connected components (recursive: there are a few dozen units at most).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(list(graph)):
        if v not in index:
            visit(v)

    out = []
    for comp in components:
        if len(comp) < 2:
            continue
        members = set(comp)
        start = min(comp)
        # Shortest path start → … → start inside the component (BFS).
        prev: dict[str, str] = {}
        frontier, seen, closing = [start], {start}, None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        closing = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if closing is not None:
                    break
            frontier = nxt
        path = [closing]
        while path[-1] != start:
            path.append(prev[path[-1]])
        path.reverse()  # start … closing
        ring = path + [start]
        edges = "; ".join(witness[(a, b)].where() for a, b in zip(ring, ring[1:]))
        out.append(f"cycle {' → '.join(ring)} (units {', '.join(sorted(comp))}): {edges}")
    return out


def gui_in_engine(imports: list[Import]) -> list[str]:
    """(c) engine/ importing Qt, pyqtgraph or app/."""
    return [
        f"{imp.where()}  [engine must not import {imp.module.split('.')[0]}]"
        for imp in imports
        if imp.file.startswith("engine/") and imp.module.split(".")[0] in GUI_MODULES
    ]


def private_across_units(imports: list[Import]) -> list[str]:
    """(d) `from engine.x.y import _name` (or a `_module` on the way) where x is not the importer's unit."""
    out = []
    for imp in imports:
        if imp.target is None or imp.target == imp.source:
            continue
        parts = imp.module.split(".") + ([imp.name] if imp.name else [])
        private = [p for p in parts if p.startswith("_") and not (p.startswith("__") and p.endswith("__"))]
        if private:
            out.append(f"{imp.where()}  [{imp.source} uses {imp.target}'s private {', '.join(private)}]")
    return out


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}; the table is LAYERS in tests/test_layering.py):\n  " + "\n  ".join(
        problems
    )


@pytest.fixture(scope="module")
def repo_imports() -> list[Import]:
    return scan(REPO)


def test_scan_sees_the_code(repo_imports):
    """Guards against a walk that silently finds nothing (a moved folder, a broken glob)."""
    units = {imp.source for imp in repo_imports}
    assert {"refine", "cli", "app", "body", "project"} <= units, units
    assert any(imp.target == "refine" and imp.source == "app" for imp in repo_imports)


def test_imports_follow_the_layers(repo_imports):
    problems = layer_violations(repo_imports)
    assert not problems, _report("imports against the layering", problems)


def test_no_import_cycles_between_units(repo_imports):
    problems = cycles(repo_imports)
    assert not problems, _report("import cycles", problems)


def test_engine_never_imports_the_gui(repo_imports):
    problems = gui_in_engine(repo_imports)
    assert not problems, _report("engine imports of the GUI", problems)


def test_no_private_names_across_units(repo_imports):
    problems = private_across_units(repo_imports)
    assert not problems, _report(
        "private names imported from another unit (make them public or move them)", problems
    )


# ---- the checks themselves, on a small made-up tree -------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checks_flag_a_made_up_tree(tmp_path):
    _write(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/errors.py": "",
            "engine/geometry/__init__.py": "",
            # upward edge, hidden in a function, written `import a.b.c`: geometry → body (and a cycle with it)
            "engine/geometry/camera.py": "import numpy\n\ndef f():\n    import engine.body.base\n",
            # relative import two levels up: body → geometry (fine on its own)
            "engine/body/__init__.py": "from ..geometry import camera\n",
            "engine/body/base.py": "from . import _helpers\n_secret = 1\n",  # private, same unit: fine
            "engine/body/_helpers.py": "",
            # private name across units, and Qt in the engine
            "engine/project/__init__.py": "from engine.body.base import _secret\nfrom PySide6.QtCore import QThread\n",
            # sideways: two units of the same layer
            "engine/fields/__init__.py": "from engine import render\n",
            "engine/render/__init__.py": "",
            # a package nobody placed
            "engine/newthing/__init__.py": "from engine.errors import *\n",
            # allowed: app above everything in engine, lazy import inside a method
            "app/window.py": "class W:\n    def f(self):\n        from engine.project import x\n",
        },
    )
    imports = scan(tmp_path)

    layers = layer_violations(imports)
    assert any(
        p.startswith("engine/geometry/camera.py:4: import engine.body.base") and "upward" in p for p in layers
    ), layers
    assert any(
        p.startswith("engine/fields/__init__.py:1: from engine import render") and "same layer" in p
        for p in layers
    )
    assert any(
        p.startswith("engine/newthing/__init__.py:1:") and "newthing is not in LAYERS" in p for p in layers
    )
    assert not any(p.startswith(("engine/body/", "app/")) for p in layers), layers
    assert len(layers) == 3, layers

    found = cycles(imports)
    assert len(found) == 1, found
    assert found[0].startswith("cycle body → geometry → body"), found
    assert "engine/body/__init__.py:1: from engine.geometry import camera" in found[0]
    assert "engine/geometry/camera.py:4: import engine.body.base" in found[0]

    assert gui_in_engine(imports) == [
        "engine/project/__init__.py:2: from PySide6.QtCore import QThread  [engine must not import PySide6]"
    ]
    assert private_across_units(imports) == [
        "engine/project/__init__.py:1: from engine.body.base import _secret  [project uses body's private _secret]"
    ]


def test_checks_pass_a_clean_tree(tmp_path):
    _write(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/errors.py": "",
            "engine/geometry/__init__.py": "",
            "engine/geometry/camera.py": "from engine.errors import UserError\n",
            "engine/body/__init__.py": "from .base import Body\nfrom engine.geometry import camera\n",
            "engine/body/base.py": "import engine.geometry.camera\n",
            "app/jobs.py": "from PySide6.QtCore import QThread\nfrom engine.body import Body\n",
            "main.py": "def main():\n    from app.jobs import x\n    import importlib\n    importlib.import_module('engine.cli')\n",
        },
    )
    imports = scan(tmp_path)
    assert any(i.file == "main.py" and i.module == "engine.cli" for i in imports)  # import_module is seen
    assert layer_violations(imports) == []
    assert cycles(imports) == []
    assert gui_in_engine(imports) == []
    assert private_across_units(imports) == []
