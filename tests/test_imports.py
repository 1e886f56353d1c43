"""Imports run one way: ground -> weights -> families -> services -> faces (read with ``ast``; nothing is
imported).

Where each part of ``anyphone/`` sits, and why:

ground (layer 0): ``text``, ``data``, ``models``, ``losses``, ``optim``, ``fileio``, ``utils``, ``inventory``
    (phone inventories of languages: package data plus IPA handling, used by data preparation and by
    recognition alike) and ``decoding`` (pure searches over tensors: CTC greedy/prefix beam, transducer
    greedy/beam; decode options; PER/PFER scoring; no weights, no model loading). The ground imports only the
    ground.
weights (layer 1): ``weights`` (checkpoint files, selection by --iter/--epoch/--avg, averaging, verified
    loading, config.json, the Zipformer configuration of a state_dict). It imports only the ground.
families (layer 2): ``families`` (the model-family objects and their registry: build a model from its config,
    its loss, its searches, recognising its state_dict, its ONNX graphs). It imports the ground and the weights;
    every service reaches models through it.
services (layer 3), in this order; each imports the layers below and only the services before it:
    ``evaluation`` the decode run behind decode.py (weights, family, search, scores) and the weight-selection
                  flags export.py shares;
    ``alignment`` aligning a known transcript with any loaded recogniser's log-probabilities (below inference:
                  ``PhoneRecognizer.align`` calls it; it never loads a model itself);
    ``inference`` the hub, audio input, the recogniser and the ONNX runtime (uses decoding's CTC search and
                  alignment's blank sharing);
    ``export``    ONNX export (reads weights the way decode.py does);
    ``training``  the loop, fine-tuning (validation decodes and scores; finetune fetches models
                  from the hub) and the recipes' train/decode command lines;
    ``tuning``    hyper-parameter search around training runs.
faces (layer 4): ``cli``. The recipes (``zipformer_*/``), ``local/`` and ``benchmarks/`` are faces too and live
    outside the package, which never imports them.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "anyphone"

GROUND = ("text", "data", "models", "losses", "optim", "fileio", "utils", "inventory", "decoding")
SERVICES = ("evaluation", "alignment", "inference", "export", "training", "tuning")
FACES = ("cli",)
OUTSIDE = ("zipformer_crctc", "zipformer_transducer", "local", "benchmarks", "tests")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ("anyphone", *p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported name) for every import statement anywhere in the file (lazy ones included), plus
    ``importlib.import_module("...")`` calls and the module names of lazy-export tables (string constants
    that name a module of the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            found.append((node.lineno, base))
            for a in node.names:  # "from anyphone.training import loop" imports the module loop
                if f"{base}.{a.name}" in MODULES:
                    found.append((node.lineno, f"{base}.{a.name}"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__", "run_module") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Dict):
            for v in node.values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value in MODULES:
                    found.append((v.lineno, v.value))
    return found


def _part(module: str) -> str:
    """The folder (or top-level module) of the package a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(part: str) -> tuple[int, int]:
    if part in ("",) + GROUND:
        return (0, 0)
    if part == "weights":
        return (1, 0)
    if part == "families":
        return (2, 0)
    if part in SERVICES:
        return (3, SERVICES.index(part))
    if part in FACES:
        return (4, 0)
    raise AssertionError(f"anyphone/{part}: not assigned to a layer in tests/test_imports.py; add it")


def _edges() -> list[tuple[str, int, str]]:
    edges = []
    for module, path in MODULES.items():
        for line, name in _imports(module, path):
            edges.append((module, line, name))
    return edges


EDGES = _edges()


def test_every_part_of_the_package_has_a_layer():
    for module in MODULES:
        _rank(_part(module))


def _upward(edges: list[tuple[str, int, str]]) -> list[str]:
    """The edges that run upwards: into a higher layer, or into a later service."""
    out = []
    for module, line, name in edges:
        if not name.startswith("anyphone.") or name not in MODULES:
            continue
        src, dst = _part(module), _part(name)
        if src == dst:
            continue
        a, b = _rank(src), _rank(dst)
        if b[0] > a[0] or (a[0] == b[0] == 3 and b[1] > a[1]):
            out.append(f"{module}:{line} imports {name} ({src or 'anyphone'} -> {dst})")
    return out


def test_imports_run_one_way():
    """Ground imports ground; weights imports ground; families import ground and weights; a service imports
    ground, weights, families and the services before it in SERVICES; faces import anything."""
    upward = _upward(EDGES)
    assert not upward, "imports that run upwards:\n" + "\n".join(upward)


def test_no_cycle_between_service_folders():
    graph: dict[str, set[str]] = {s: set() for s in SERVICES}
    where: dict[tuple[str, str], str] = {}
    for module, line, name in EDGES:
        src, dst = _part(module), _part(name) if name in MODULES else ""
        if src in SERVICES and dst in SERVICES and src != dst:
            graph[src].add(dst)
            where.setdefault((src, dst), f"{MODULES[module].relative_to(PKG.parent)}:{line}")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for s in SERVICES:
        if s not in state:
            cycle = visit(s)
            assert cycle is None, "service folders import each other in a circle: " + ", ".join(
                f"{a} -> {b} ({where[a, b]})" for a, b in itertools.pairwise(cycle))


def test_the_package_never_imports_recipes_local_or_tests():
    bad = [f"{MODULES[m].relative_to(PKG.parent)}:{line} imports {name}" for m, line, name in EDGES
           if name.split(".")[0] in OUTSIDE]
    assert not bad, "\n".join(bad)


def test_recognition_and_the_onnx_runtime_stay_off_the_training_stack():
    """What ``load_model`` and ``anyphone recognize`` load never reaches training or the optimiser, and the ONNX
    runtime imports no torch at all."""
    graph: dict[str, set[str]] = {}
    for module, _, name in EDGES:
        if name in MODULES:
            graph.setdefault(module, set()).add(name)
    seen, todo = set(), ["anyphone.inference.api"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += sorted(graph.get(m, ()))
        parent = m.rsplit(".", 1)[0]
        if parent in MODULES and parent != m:
            todo.append(parent)  # importing a module runs its package's __init__
    assert not {m for m in seen if _part(m) in ("training", "optim", "tuning")}, sorted(seen)
    onnx_imports = [name for m, _, name in EDGES if m == "anyphone.inference.onnx_runtime"]
    assert not [n for n in onnx_imports if n.split(".")[0] == "torch"], onnx_imports


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """An import inside a function, a relative one and ``from pkg import module`` all count as edges, and an
    upward one among them is reported."""
    src = tmp_path / "run.py"
    src.write_text("def f():\n    from anyphone.training import loop\n    from ..weights import checkpoint\n",
                   encoding="utf-8")
    edges = [("anyphone.evaluation.run", line, name) for line, name in _imports("anyphone.evaluation.run", src)]
    names = {name for _, _, name in edges}
    assert {"anyphone.training.loop", "anyphone.weights.checkpoint"} <= names
    assert _upward(edges) == ["anyphone.evaluation.run:2 imports anyphone.training (evaluation -> training)",
                              "anyphone.evaluation.run:2 imports anyphone.training.loop (evaluation -> training)"]


def test_the_families_sit_between_the_weights_and_the_services(tmp_path):
    """A family importing a service (the decode run, inference) runs upwards; a family importing the weights or
    the ground does not; the ground importing a family runs upwards."""
    src = tmp_path / "fam.py"
    src.write_text("from anyphone.evaluation import run\nfrom anyphone.weights import config\n"
                   "from anyphone.decoding import ctc\n", encoding="utf-8")
    edges = [("anyphone.families.crctc", line, name) for line, name in _imports("anyphone.families.crctc", src)]
    assert _upward(edges) == [
        "anyphone.families.crctc:1 imports anyphone.evaluation (families -> evaluation)",
        "anyphone.families.crctc:1 imports anyphone.evaluation.run (families -> evaluation)"]
    down = [("anyphone.decoding.ctc", 1, "anyphone.families")]
    assert _upward(down) == ["anyphone.decoding.ctc:1 imports anyphone.families (decoding -> families)"]
