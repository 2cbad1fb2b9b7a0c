"""The layering the design promises, checked on the source: the core names no framework, and
backends see the core only through the protocol module (plus the errors they raise)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

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
    return rel[0] in ("cards", "cards.py", "importers")


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
        if f.name == "lightning.py" and f.parent == BACKENDS:
            continue  # the deprecated alias of tunespec.integrations.lightning, not a backend
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
