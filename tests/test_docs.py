"""Every ```python block of README.md and docs/ runs as pasted, and the API reference builds.

A page's blocks run in order in one namespace (a later block may use what an earlier one made),
in a fresh directory that holds what a reader in a clone of this repository has: ``examples/``.
A ```yaml block whose first line is ``# NAME.yaml`` is a file the page tells the reader to save:
it is written there before the page's Python runs. Blocks that are not Python must be fenced as
```text, ```bash, ```yaml or ```toml so that nothing a reader copies is silently untested.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sybil = pytest.importorskip("sybil")
from sybil.parsers.markdown import PythonCodeBlockParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^ *```(\w*)", re.M)
PYTHON_FENCE = re.compile(r"^ *```python *$", re.M)
SAVED_FILE = re.compile(r"```yaml\n# ([\w.-]+\.ya?ml)\n(.*?)```", re.S)
ALLOWED_LANGUAGES = {"python", "text", "bash", "yaml", "toml", "json"}


def _pages_with_python() -> list[Path]:
    return [p for p in PAGES if PYTHON_FENCE.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", _pages_with_python(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_runs_as_pasted(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    text = page.read_text(encoding="utf-8")
    for name, body in SAVED_FILE.findall(text):
        (tmp_path / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    document = sybil.Sybil(parsers=[PythonCodeBlockParser()]).parse(page)
    examples = list(document)
    assert examples, f"{page.name}: no python block was found"
    for example in examples:
        example.evaluate()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_names_its_language(page: Path) -> None:
    """An unlabelled fence would hide code from the test above; opening fences alternate with
    closing ones, so every other fence is an opening one."""
    fences = FENCE.findall(page.read_text(encoding="utf-8"))
    assert len(fences) % 2 == 0, f"{page.name}: a code block is not closed"
    openings = fences[0::2]
    bad = [lang or "(none)" for lang in openings if lang not in ALLOWED_LANGUAGES]
    assert not bad, f"{page.name}: code blocks must say their language ({sorted(ALLOWED_LANGUAGES)}), got {bad}"


def test_the_saved_file_convention_is_used() -> None:
    """The porting page's recipe.yaml is written from its yaml block (the convention is live)."""
    assert any(SAVED_FILE.search(p.read_text(encoding="utf-8")) for p in PAGES)


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` fails on a broken link, a missing page or an API reference that
    names something that does not exist (mkdocstrings), so the reference cannot drift."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "index.html").exists()


def test_a_broken_api_reference_fails_the_build(tmp_path: Path) -> None:
    """The check above can fail: a reference to a name tunespec does not have aborts the build."""
    pytest.importorskip("mkdocstrings")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# x\n\n::: tunespec.no_such_function\n", encoding="utf-8")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: x\nplugins:\n  - mkdocstrings:\n      handlers:\n        python:\n"
        f"          paths: [{json.dumps(str(ROOT / 'src'))}]\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "tunespec.no_such_function" in result.stdout + result.stderr


def test_the_api_reference_lists_every_public_name_where_it_is_defined() -> None:
    """mkdocstrings reads the source statically and cannot see the lazy top-level names, so the
    reference names each one in its defining module; a new public name must be added there."""
    import tunespec

    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    listed = dict((name, where) for where, name in re.findall(r"^::: tunespec\.([\w.]+)\.(\w+)$", text, re.M))
    deprecated = {"Schedule"}  # the old name of StageRunner
    missing = sorted(set(tunespec.__all__) - set(listed) - deprecated)
    assert not missing, f"docs/reference.md does not list {missing}"
    for name, where in listed.items():
        assert getattr(tunespec, name) is getattr(__import__(f"tunespec.{where}", fromlist=[name]), name), name
