"""Names removed in 0.2.0 (CHANGELOG.md) are refused with their new name, never silently taken."""

from __future__ import annotations

import warnings

import pytest

import tunespec
from fake_backend import FakeBackend, small_net
from tunespec import SpecError
from tunespec.errors import refuse_renamed
from tunespec.planning.optimizers import check_optimizer, check_semantics

REC = {"preset": "heads", "stages": [{"at_epoch": 1, "preset": "all"}]}


def test_the_old_stage_runner_name_is_refused_naming_the_new_one():
    with pytest.raises(AttributeError, match=r"tunespec.Schedule is now tunespec.StageRunner"):
        tunespec.Schedule  # noqa: B018
    assert not hasattr(tunespec, "Schedule") and "Schedule" not in dir(tunespec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns nothing
        assert tunespec.StageRunner(REC).stages[1].name == "all"


@pytest.mark.parametrize("call", [tunespec.resume, tunespec.save_checkpoint])
def test_schedule_keyword_is_refused_naming_runner(call, tmp_path):
    """Before anything is read or written: no file appears, none is needed."""
    path = tmp_path / "run.ckpt"
    args = (path, small_net()) if call is tunespec.resume else (path, small_net(), None)
    with pytest.raises(SpecError, match=r"schedule= is now runner="):
        call(*args, schedule=tunespec.StageRunner(REC))
    with pytest.raises(TypeError, match="unexpected keyword argument 'runer'"):
        call(*args, runer=None)
    assert not path.exists()


@pytest.mark.parametrize("old, new", [("torch", "portable"), ("torch-exact", "portable-exact")])
def test_old_semantics_names_are_refused_naming_the_new_ones(old, new):
    with pytest.raises(SpecError, match=f"semantics: '{old}' is now called '{new}'"):
        check_semantics(old)
    spec = tunespec.load_recipe({"optimizer": {"lr": 0.1, "semantics": old}}).optimizer  # read: no backend asked
    with pytest.raises(SpecError, match=f"is now called '{new}'"):
        check_optimizer(FakeBackend(), spec.name, spec.lr, spec.weight_decay, spec.semantics, spec.options)
    assert check_semantics(new) == new


def test_refuse_renamed_takes_only_names_it_knows():
    refuse_renamed("f", {}, {"a": "b"})  # nothing given: nothing refused
    with pytest.raises(SpecError, match=r"f: a= is now b="):
        refuse_renamed("f", {"a": 1}, {"a": "b"})
    for odd in ("", "b", "A", "a "):
        with pytest.raises(TypeError, match="unexpected keyword"):
            refuse_renamed("f", {odd: 1}, {"a": "b"})
