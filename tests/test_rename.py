"""A rename rule that renames nothing is an error (a warning with strict=False) giving the spelling
that works: rename patterns fullmatch the whole name, so the re.sub idiom ``{'^module\\.': ''}``
would otherwise silently rename nothing."""

from __future__ import annotations

import re
import warnings

import pytest

import tunespec
from frameworks import np
from snapshot import assert_unchanged, state_of
from tunespec import SpecError, TuneSpecWarning
from tunespec.planning.naming import NameMap


def test_a_rule_that_renames_nothing_names_itself_and_the_working_spelling():
    names = NameMap(rename={r"^classifier\.": ""})
    assert [names(k) for k in ("classifier.weight", "features.0.weight")] == ["classifier.weight",
                                                                             "features.0.weight"]
    with pytest.raises(SpecError) as info:
        names.check_used("load")
    message = str(info.value)
    assert message.startswith("load: rename[" + repr(r"^classifier\.") + "] renames nothing")
    assert "matches the start of 'classifier.weight'" in message
    assert message.endswith("write rename=" + repr({r"classifier\.(.*)": r"\1"}))
    fixed = NameMap(rename={r"classifier\.(.*)": r"\1"})
    assert fixed("classifier.weight") == "weight"
    fixed.check_used("load")  # every rule renamed something: no error


def test_the_suggested_spelling_does_what_the_idiom_meant():
    names = NameMap(rename={r"^module\.": ""})
    keys = ["module.conv.weight", "module.fc.bias"]
    [names(k) for k in keys]
    with pytest.raises(SpecError) as info:
        names.check_used("load")
    spelled = eval(str(info.value).rsplit("rename=", 1)[1])  # the dict literal the message gives
    fixed = NameMap(rename=spelled)
    assert [fixed(k) for k in keys] == ["conv.weight", "fc.bias"]


def test_a_rule_for_names_that_are_not_there_lists_what_names_look_like():
    names = NameMap(rename={r"head\.(.*)": r"fc.\1"})
    names("fc.weight")
    with pytest.raises(SpecError, match=r"renames nothing.*names look like 'fc.weight'"):
        names.check_used("port")


def test_load_and_port_refuse_a_rename_that_renames_nothing_and_change_nothing(h):
    src, dst = h.small_cnn(), h.small_cnn()
    state = {f"module.{k}": v for k, v in h.arrays(src).items()}
    before = state_of(dst)
    with pytest.raises(SpecError, match=re.escape("load: rename[" + repr(r"^module\.") + "] renames nothing")):
        tunespec.load(dst, state, rename={r"^module\.": ""})
    with pytest.raises(SpecError, match=re.escape("port: rename[" + repr(r"8\.w") + "] renames nothing")):
        tunespec.port(src, dst, rename={r"8\.w": "8.weight"})
    assert_unchanged(before, state_of(dst))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = tunespec.load(dst, state, rename={r"^module\.": "", r"module\.(.*)": r"\1"}, strict=False)
    assert any(issubclass(w.category, TuneSpecWarning) and "renames nothing" in str(w.message) for w in seen)
    assert sorted(report.loaded) == sorted(h.arrays(src))  # the second rule did the work
    assert all(np.array_equal(h.arrays(dst)[k], v) for k, v in h.arrays(src).items())
