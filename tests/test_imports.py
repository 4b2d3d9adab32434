"""covseg's own imports: every module imports, no module reaches itself again through others
(a cycle), and imports run one way down the layers of :data:`LAYERS`.

The import graph is read from the source with :mod:`ast`: module-level and function-level
imports count alike (a lazy import is still a dependency, and a cycle hidden inside a function is
still a cycle), and so do imports under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import covseg

PACKAGE = "covseg"
SRC = Path(covseg.__file__).resolve().parent

#: The layers, top first: a module may import its own unit and the units of LOWER layers, never
#: a unit of its own layer or of a higher one. A unit is a name below ``covseg`` (a package or a
#: module, the longest that fits wins); ``""`` is ``covseg/__init__.py`` alone (the public API,
#: which loads the Segmenter lazily). Every module must fall in some unit: a new package is placed
#: here on purpose, not by accident.
#:
#: Two places sit otherwise than the project's short rule ``cli -> studies -> training/evaluation
#: -> inference -> models/data`` suggests, because the code needs them there:
#: - ``demo`` stands above ``studies``: the demo runs a small cross-validation
#:   (:func:`covseg.studies.crossval.run_cv`) and then scores and reports it.
#: - ``checkpoint`` stands above ``models``: loading a checkpoint builds its network
#:   (:func:`covseg.models.build_model`, :class:`covseg.models.ensemble.Ensemble`).
#: ``evaluation.metrics`` stands low, apart from the rest of ``evaluation``: training validates
#: with it, while ``evaluation`` never imports ``training``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("demo",),
    ("studies",),
    ("training", "evaluation", "serve", "cohort", ""),
    ("inference", "followup"),
    ("checkpoint",),
    ("models", "data", "figures", "meta", "tensor_pair", "evaluation.metrics"),
    ("config", "files"),
    ("errors", "_version"),
)

#: Modules that cannot be imported as a library: ``python -m covseg`` runs the CLI on import.
NOT_IMPORTABLE = {"covseg.__main__"}


def module_files(root: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that module ``name`` (the file ``path``) imports, anywhere in
    its body; ``from a import b`` counts ``a`` and, where it is a module, ``a.b``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the modules of ``files``."""
    names = set(files)
    return {name: imported_modules(name, path, names) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: one per strongly connected component of more than one
    module, as a closed path ``[a, b, ..., a]`` through it (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_closed_path(graph, c) for c in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` through the first module of ``component``."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always holds one


def unit_of(module: str) -> str | None:
    """The unit of :data:`LAYERS` that ``module`` falls in (the longest that fits), or None."""
    rel = module.removeprefix(PACKAGE).removeprefix(".")
    units = [u for layer in LAYERS for u in layer]
    fits = [u for u in units if rel == u or (u and rel.startswith(u + "."))]
    return max(fits, key=len) if fits else None


def layer_of(unit: str) -> int:
    """The depth of ``unit`` in :data:`LAYERS` (0 at the top)."""
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b (unit X imports unit Y of a layer not below it)"`` for every import that breaks
    :data:`LAYERS`."""
    out = []
    for name, targets in sorted(graph.items()):
        unit = unit_of(name)
        for target in sorted(targets):
            other = unit_of(target)
            if unit is None or other is None or other == unit:
                continue
            if layer_of(other) <= layer_of(unit):
                out.append(f"{name} -> {target} ({unit!r} may not import {other!r})")
    return out


FILES = module_files()
GRAPH = import_graph(FILES)


@pytest.mark.parametrize("name", sorted(set(FILES) - NOT_IMPORTABLE))
def test_every_module_imports(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == FILES[name]


def test_the_graph_is_read_from_the_code():
    """The checks below read the real package: its modules, and imports at module level and
    inside functions (``covseg.__getattr__`` loads the Segmenter lazily)."""
    assert len(FILES) > 40 and "covseg.cli" in FILES
    assert "covseg.config" in GRAPH["covseg.models.bifurcated"]
    assert GRAPH["covseg"] >= {"covseg.errors", "covseg.inference.segmenter"}


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles between covseg modules:\n" + "\n".join(
        " -> ".join(c) for c in found
    )


def test_every_module_has_a_layer():
    lost = sorted(m for m in FILES if unit_of(m) is None)
    assert not lost, f"modules in no unit of LAYERS (place them in tests/test_imports.py): {lost}"


def test_imports_run_down_the_layers():
    wrong = upward_imports(GRAPH)
    assert not wrong, "imports against the layers (LAYERS):\n" + "\n".join(wrong)


def test_a_cycle_and_an_upward_import_are_caught(tmp_path):
    """The checks can fail: a two-module loop, a three-module loop through a function-level
    relative import, and an import from a low layer up into a high one are all reported."""
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "config.py": "from covseg.cli import main\n",
        "cli.py": "import covseg.config\n",
        "data/__init__.py": "",
        "data/a.py": "from covseg.data import b\n",
        "data/b.py": "def f():\n    from .c import g\n",
        "data/c.py": "from covseg.data.a import x\n",
        "data/d.py": "from covseg.data.a import x\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(module_files(pkg))
    assert sorted(cycles(graph)) == [
        ["covseg.cli", "covseg.config", "covseg.cli"],
        ["covseg.data.a", "covseg.data.b", "covseg.data.c", "covseg.data.a"],
    ]
    assert upward_imports(graph) == ["covseg.config -> covseg.cli ('config' may not import 'cli')"]


def test_the_command_line_answers_without_loading_torch():
    """``--help`` and a refused option answer in a moment: building the parser must not import
    torch (30-50 s on a loaded 2-core machine before a one-line error)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from covseg.cli import main\n"
        "for argv in (['segment', '--help'], ['export-onnx', 'm.onnx', '--opset', '1'],\n"
        "             ['segment', 'x', '--out', 'o', '--jobs', '0'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_server_listens_before_loading_torch():
    """``covseg serve`` answers the page while the model loads: its app and upload checks
    (``covseg.serve.app``, ``covseg.data.io``) import no torch, scipy or scikit-image."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import covseg.serve.app, covseg.data.io\n"
        "print(sorted(m for m in ('torch', 'scipy', 'skimage') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
