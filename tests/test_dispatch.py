"""Backend choice per call from sys.modules; import tunespec imports no framework."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tunespec
from frameworks import needing, needs
from tunespec import MissingFrameworkError, SpecError
from tunespec import dispatch


def test_import_tunespec_imports_no_framework():
    code = ("import sys, tunespec\n"
            "bad = [m for m in ('torch', 'mxnet', 'gluoncv', 'numpy', 'yaml', 'regex') if m in sys.modules]\n"
            "print('imported:', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "imported: []", out.stdout + out.stderr


@needing("torch")
def test_planning_a_torch_model_does_not_import_mxnet():
    code = ("import sys, torch, tunespec\n"
            "tunespec.plan(torch.nn.Linear(2, 2), {'freeze': ['bias']})\n"
            "print('mxnet' in sys.modules, 'tunespec.backends.mxnet.backend' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr


def test_unknown_backend_and_mismatch_are_clear_errors():
    torch = needs("torch")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(SpecError, match="unknown backend 'tf'.*(torch, mxnet|mxnet, torch)"):
        tunespec.plan(model, {"freeze": ["bias"]}, backend="tf")
    needs("mxnet")
    with pytest.raises(SpecError, match="backend='mxnet'.*Linear is not a mxnet model.*backend='torch'"):
        tunespec.plan(model, {"freeze": ["bias"]}, backend="mxnet")
    assert tunespec.plan(model, {"freeze": ["bias"]}, backend="torch").backend_name == "torch"


def test_not_a_model_is_a_clear_error():
    with pytest.raises(SpecError, match="cannot tell which framework builtins.dict"):
        tunespec.plan({}, {"freeze": ["x"]})


def test_missing_framework_names_the_extra():
    import dataclasses

    from tunespec import registry

    real = registry.registered()["mxnet"]
    registry.unregister_backend("mxnet")
    registry.register_backend(dataclasses.replace(real, framework="no_such_framework_xyz"))
    try:
        with pytest.raises(MissingFrameworkError) as info:
            dispatch.load_backend("mxnet")
    finally:
        registry.unregister_backend("mxnet")
        registry.register_backend(real)
    msg = str(info.value)
    assert "\n" not in msg and "pip install 'tunespec[mxnet]'" in msg


def test_strict_argument_overrides_the_spec():
    torch = needs("torch")
    model = torch.nn.Linear(2, 2)
    with pytest.warns(tunespec.TuneSpecWarning):
        tunespec.plan(model, {"freeze": ["nope"]}, strict=False)
    with pytest.raises(SpecError):
        tunespec.plan(model, {"freeze": ["nope"], "strict": False}, strict=True)
