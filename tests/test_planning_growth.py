"""Planning grows linearly with the model: work counted for n and 4n tensors, never timed.

Speed targets live in benchmarks/ (planning, layer_decay). These tests count what a return of
super-linear growth would multiply: regex calls, Python lines executed inside tunespec (a
quadratic loop shows there), and tensors the listing visits.
"""

from __future__ import annotations

import re
import sys
import types
import warnings

import pytest

import tunespec
from tunespec.planning import decay, matching

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

EXPERTS = 16
SLACK = 1.15  # 4n tensors may cost at most 4 x 1.15 the work of n


def moe(tensors: int) -> tuple[nn.Module, int]:
    """A mixture-of-experts-shaped model: blocks of EXPERTS two-tensor Linear experts."""
    blocks = tensors // (2 * EXPERTS)
    return nn.ModuleDict({"blocks": nn.ModuleList(
        nn.ModuleDict({"experts": nn.ModuleList(nn.Linear(2, 2) for _ in range(EXPERTS))})
        for _ in range(blocks))}), blocks


def many_rules(blocks: int) -> dict:
    """One frozen block and 99 rules that each select one expert (the benchmark's spec)."""
    return {"freeze": [r"blocks\.0\..*"],
            "rules": [{"match": rf"blocks\.{i % blocks}\.experts\.{i % EXPERTS}\..*", "lr_mult": 0.5 + i / 100}
                      for i in range(99)]}


NUMBERED = {"freeze": [r"blocks\.0\..*"],
            "layer_decay": {"rate": 0.9, "layers": [r"blocks\.(\d+)\.experts\.(\d+)\..*"]}}


class CountingPattern:
    """A compiled pattern that counts the names it is tried on."""

    def __init__(self, pattern, counts: dict[str, int]) -> None:
        self._pattern, self._counts, self.groups = pattern, counts, pattern.groups

    def fullmatch(self, name, *args, **kwargs):
        self._counts["regex calls"] += 1
        return self._pattern.fullmatch(name, *args, **kwargs)

    def match(self, name, *args, **kwargs):
        self._counts["regex calls"] += 1
        return self._pattern.match(name, *args, **kwargs)


def work(model: nn.Module, spec: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Regex calls, tunespec lines executed and tensors listed while planning ``spec``."""
    counts = {"regex calls": 0, "lines": 0, "tensors listed": 0}
    counting_re = types.SimpleNamespace(**vars(re))
    counting_re.compile = lambda pattern, flags=0: CountingPattern(re.compile(pattern, flags), counts)
    compile_timed = matching._compile
    with monkeypatch.context() as patch:
        patch.setattr(matching, "re", counting_re)
        patch.setattr(decay, "re", counting_re)
        patch.setattr(matching, "_compile", lambda p, origin: CountingPattern(compile_timed(p, origin), counts))

        def local(frame, event, arg):
            if event == "line":
                counts["lines"] += 1
            return local

        def calls(frame, event, arg):
            name = frame.f_code.co_filename
            return local if "tunespec" in name or "/backends/" in name else None

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sys.settrace(calls)
            try:
                plan = tunespec.plan(model, spec)
            finally:
                sys.settrace(None)
    counts["tensors listed"] = len(plan.listing)
    return counts


@pytest.mark.parametrize("which", ["100 rules", "layer_decay"])
def test_planning_work_grows_linearly(which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 1024
    small, small_blocks = moe(n)
    large, large_blocks = moe(4 * n)
    spec_of = (lambda blocks: many_rules(blocks)) if which == "100 rules" else (lambda blocks: NUMBERED)
    before = work(small, spec_of(small_blocks), monkeypatch)
    after = work(large, spec_of(large_blocks), monkeypatch)
    assert after["tensors listed"] == 4 * before["tensors listed"] == 4 * n
    for key in ("regex calls", "lines"):
        assert after[key] <= 4 * SLACK * before[key], (key, before, after)
    if which == "100 rules":
        # The rules share the prefix 'blocks\.': the sorted-name index tries each rule only on
        # the names that start with its own literal prefix, far from rules x names.
        assert after["regex calls"] <= 2 * 4 * n, after
    else:
        # One pass of the numbered layer regex over the names (selection and captured numbers
        # together) plus the frozen block's rule: never a second pass.
        assert after["regex calls"] <= 4 * n + 2 * 2 * EXPERTS + 8, after


def test_the_numbered_layer_regex_runs_on_re_and_matches_each_name_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = moe(256)
    timed = []
    monkeypatch.setattr(matching, "_compile", lambda p, origin: timed.append(p))
    counts = work(model, {"layer_decay": NUMBERED["layer_decay"]}, monkeypatch)
    assert counts["regex calls"] == 256 and not timed
    plan = tunespec.plan(model, {"layer_decay": NUMBERED["layer_decay"]})
    # 8 blocks x 16 experts = 128 layers, in numeric order of (block, expert): the last is the top
    assert plan["blocks.7.experts.15.weight"].lr_mult == 1.0
    assert plan["blocks.0.experts.0.bias"].lr_mult == pytest.approx(0.9 ** 127)
    assert plan["blocks.1.experts.2.weight"].lr_mult == pytest.approx(0.9 ** (127 - 18))
