"""The layering the design promises, checked on the source: the core names no framework, and
backends see the core only through the protocol module (plus the errors they raise)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Collection, Mapping

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "tunespec"
BACKENDS = ROOT / "backends"

# Frameworks, their modules and classes, and framework-only spellings the core must not know.
FRAMEWORK_TOKENS = frozenset({
    "torch", "torchvision", "mxnet", "mx", "gluon", "gluoncv", "lightning", "nn", "nd", "fx",
    "Module", "Block", "HybridBlock", "SymbolBlock", "Dense", "Linear", "Conv2d", "BatchNorm2d",
    "Trainer", "DataParallel", "DistributedDataParallel", "DTensor", "LambdaLR", "LRScheduler",
    "num_batches_tracked", "_orig_mod", "_fsdp_wrapped_module", "DMLC_ROLE", "kvstore",
    "update_on_kvstore", "grad_req", "use_global_stats", "requires_grad", "moving_mean", "moving_var",
})
ALLOWED_CORE_IMPORTS = {"tunespec.backend_api", "tunespec.errors"}
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def exempt(path: Path) -> bool:
    """Model cards describe zoo models by their zoos' own names, and importers read peers'
    configurations by the peers' names: that is their job."""
    rel = path.relative_to(CORE).parts
    return rel[:2] == ("planning", "cards") or rel[0] == "importers"


def docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    return ids


def framework_tokens(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs = docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        words: set[str] = set()
        if isinstance(node, ast.Name):
            words = {node.id}
        elif isinstance(node, ast.Attribute):
            words = {node.attr}
        elif isinstance(node, ast.arg):
            words = {node.arg}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words = {node.name}
        elif isinstance(node, ast.keyword) and node.arg:
            words = {node.arg}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words = set(IDENTIFIER.findall(node.value)) | set(re.split(r"[^A-Za-z0-9]+", node.value))
        elif isinstance(node, ast.Import):
            words = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            words = {node.module.split(".")[0]}
        found += [f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {w}"
                  for w in sorted(words & FRAMEWORK_TOKENS)]
    return found


def test_the_scanner_finds_what_it_is_meant_to(tmp_path):
    """The check can fail: a planted identifier, attribute, string and import are each found,
    a docstring is not."""
    sample = CORE / "_planted_for_the_test.py"
    sample.write_text('"""torch in a docstring is fine."""\nimport torch\nx = model.gluon\n'
                      'y = "a Dense layer"\ndef f(nn): pass\n')
    try:
        words = [line.rsplit(": ", 1)[1] for line in framework_tokens(sample)]
    finally:
        sample.unlink()
    assert sorted(words) == ["Dense", "gluon", "nn", "torch"]


def test_the_core_names_no_framework():
    hits = [h for f in sorted(CORE.rglob("*.py")) if not exempt(f) for h in framework_tokens(f)]
    assert hits == [], "\n".join(hits)


def core_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "tunespec"]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module \
                and node.module.split(".")[0] == "tunespec":
            out.append(node.module)
    return out


def test_backends_import_only_the_protocol_from_the_core():
    bad = []
    for f in sorted(BACKENDS.rglob("*.py")):
        for module in core_imports(f):
            if module not in ALLOWED_CORE_IMPORTS and not module.startswith("tunespec.backends."):
                bad.append(f"{f.relative_to(ROOT)}: {module}")
    assert bad == [], "\n".join(bad)


def test_backends_are_packages_with_the_same_module_names():
    packages = sorted(p for p in BACKENDS.iterdir() if (p / "__init__.py").exists())
    assert [p.name for p in packages] == ["mxnet", "torch"]
    shared = {"__init__.py", "facts.py", "backend.py", "listing.py", "execute.py", "optimizers.py",
              "checkpoints.py", "graph.py", "distributed.py", "zoo.py"}
    for p in packages:
        assert shared <= {f.name for f in p.glob("*.py")}, p.name


# --- the core's import graph: layers, cycles, imports inside functions ------------------------
# Each core module's layer; a module imports only from its own layer or below. The protocol and
# the registry sit beside the layers, between recipe (which asks no backend anything) and planning.
LAYERS = (
    ("errors", ("tunespec.errors",)),
    ("recipe", ("tunespec.recipe",)),
    ("protocol", ("tunespec.backend_api", "tunespec.listing", "tunespec.registry", "tunespec.framework_facts",
                  "tunespec.dispatch", "tunespec.facts_validation")),
    ("planning", ("tunespec.planning",)),
    ("lifecycle", ("tunespec.lifecycle",)),
    ("entry points", ("tunespec", "tunespec.__main__", "tunespec.cli", "tunespec.importers")),
)
# Imports allowed inside functions in the core, each with why; everything else imports at the top
# (``import tunespec`` itself imports nothing: its public names are lazy module attributes).
FUNCTION_IMPORTS_ALLOWED = {
    ("tunespec.lifecycle.init", "numpy"),  # draws init values; numpy is no dependency of the core
    ("tunespec.lifecycle.run_files", "numpy"),  # run checkpoints' arrays; likewise, on first save/resume
    ("tunespec.cli", "matplotlib"),        # `tunespec lr --plot` only; an optional dependency
    ("tunespec.cli", "matplotlib.pyplot"),
    ("tunespec.importers.mmengine", "mmengine.config"),  # exec'ing a config needs MMEngine, a peer
}


def module_name(path: Path) -> str:
    parts = ["tunespec", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    return {module_name(f): f for f in sorted(CORE.rglob("*.py"))}


def imports_of(path: Path, modules: Collection[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in ``path``, relative ones
    resolved and ``from package import module`` taken as the module; TYPE_CHECKING blocks count."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    found.append((sub if sub in modules else target, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def core_graph() -> dict[str, set[str]]:
    modules = core_modules()
    return {m: {t for t, _, _ in imports_of(f, modules) if t in modules and t != m} for m, f in modules.items()}


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "tunespec" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module}: in no layer; add it to LAYERS"
    return best[0]


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_core_modules():
    assert cycles(core_graph()) == []


def test_each_layer_imports_only_its_own_layer_or_below():
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
           for m, targets in core_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert bad == [], "\n".join(bad)


def test_the_layer_check_can_fail():
    assert layer_of("tunespec.recipe.spec") < layer_of("tunespec.registry") < layer_of("tunespec.planning.plan") \
        < layer_of("tunespec.lifecycle.stages") < layer_of("tunespec.cli")


def test_no_imports_inside_functions_in_the_core_but_the_allowed_ones():
    modules = core_modules()
    bad = [f"{f.relative_to(ROOT)}:{line}: {target}"
           for m, f in modules.items() for target, line, inside in imports_of(f, modules)
           if inside and (m, target) not in FUNCTION_IMPORTS_ALLOWED]
    assert bad == [], "\n".join(bad)


def test_the_function_import_scan_finds_a_planted_one(tmp_path):
    sample = CORE / "_planted_for_the_import_test.py"
    sample.write_text("import json\n\ndef f():\n    import csv\n    from . import errors\n")
    try:
        found = imports_of(sample, core_modules())
    finally:
        sample.unlink()
    assert found == [("json", 1, False), ("csv", 4, True), ("tunespec.errors", 5, True)]


# --- the lazy top-level namespace ---------------------------------------------------------------
def test_import_tunespec_loads_nothing_else_and_plan_is_one_attribute_away():
    code = ("import sys, tunespec\n"
            "before = sorted(m for m in sys.modules if m.split('.')[0] in ('tunespec', 'torch', 'mxnet', 'yaml'))\n"
            "plan = tunespec.plan\n"
            "print(before, plan.__module__, 'tunespec.lifecycle.stages' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['tunespec']", "tunespec.planning.make", "False"]


def test_the_public_namespace_is_exactly_all():
    import tunespec

    for name in tunespec.__all__:
        assert getattr(tunespec, name) is not None, name
    importlib.import_module("tunespec.lifecycle.stages")  # submodules bound on the package stay hidden
    assert dir(tunespec) == sorted(tunespec.__all__) == tunespec.__all__
    assert not any(isinstance(getattr(tunespec, n), types.ModuleType) for n in tunespec.__all__)
    for wrong in ("nope", "Plan2", "__wrapped__", ""):
        with pytest.raises(AttributeError, match="module 'tunespec' has no attribute"):
            getattr(tunespec, wrong)
