"""The benchmark driver's family interface (benchmarks/common.py): every family module is in the
driver's FAMILIES, names itself, and runs through ``run.py --only``. Timings are not checked here
(they are what the benchmarks report); only that the plumbing carries rows to the table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
NOT_FAMILIES = {"common.py", "run.py"}


@pytest.fixture
def driver(monkeypatch):
    """benchmarks/run.py imported as the script sees it (its own directory first on sys.path);
    the generic module names it brings (common, steps, memory, ...) are dropped afterwards."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(BENCH))
    import run

    yield run
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_every_family_module_is_in_the_driver(driver):
    modules = {p.stem for p in BENCH.glob("*.py") if p.name not in NOT_FAMILIES}
    assert {f.__name__ for f in driver.FAMILIES} == modules
    assert len(driver.BY_NAME) == len(driver.FAMILIES)  # FAMILY names are unique
    for family in driver.FAMILIES:
        assert callable(family.rows), family.__name__
        assert set(getattr(family, "FRAMEWORKS", ())) <= {"torch", "mxnet"}, family.__name__


def test_only_runs_the_named_family_and_writes_its_rows(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "imports", "--repeats", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, check=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["figure"] for r in rows] == [
        "import tunespec, beyond python startup",
        "  import tunespec; tunespec.plan (the first attribute loads planning), beyond startup"]
    assert rows[0]["modules_loaded"] == 1  # the package itself: its public names load on first use
    assert "import tunespec, beyond python startup" in done.stdout


def test_only_refuses_an_unknown_family():
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "imports,nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown family nope" in done.stderr and "imports,planning" in done.stderr
