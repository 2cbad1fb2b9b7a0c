"""Run checkpoints cost O(n) in tensors, counted (not timed): the calls save_checkpoint and resume
make (Python and builtin, such as the str.startswith a key-counting namer would call per stored
key) and the bytes the digest sees, for n and 4n tensors. The digest sees every byte once, so
resuming reads the file once."""

from __future__ import annotations

import sys

import pytest

import tunespec
from frameworks import needs
from tunespec.recipe import files


def _model(layers: int):
    torch = needs("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(layers)])
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # a momentum buffer per parameter: 2n optimizer arrays besides the n tensors
    return net, opt


def _calls(fn) -> int:
    """Function calls (Python and builtin) made by ``fn``."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def _work(layers: int, tmp_path) -> dict[str, int]:
    net, opt = _model(layers)
    fresh, fresh_opt = _model(layers)
    path = tmp_path / f"run{layers}.ckpt"
    files.Work.reset()
    save = _calls(lambda: tunespec.save_checkpoint(path, net, opt))
    saved = files.Work.hashed
    files.Work.reset()
    resume = _calls(lambda: tunespec.resume(path, fresh, optimizer=fresh_opt))
    return {"save": save, "resume": resume, "hashed_save": saved, "hashed_resume": files.Work.hashed,
            "bytes": path.stat().st_size}


def test_save_and_resume_grow_linearly_in_tensors(tmp_path):
    small, large = _work(100, tmp_path), _work(400, tmp_path)  # 200 and 800 tensors
    for what in ("save", "resume"):
        assert large[what] / small[what] < 4.4, (what, small[what], large[what])  # 4.0 is linear
    for w in (small, large):
        # every byte of the file is hashed once (the header in its normal form), and no more
        assert w["hashed_save"] == w["hashed_resume"] <= w["bytes"] * 1.1


def test_the_digest_is_checked_in_the_same_pass_that_reads(tmp_path, monkeypatch):
    """One read of the data: the file is opened once by resume, read into one buffer."""
    net, opt = _model(3)
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt)
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file) == str(path):
            opened.append(args[0] if args else kwargs.get("mode"))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    fresh, fresh_opt = _model(3)
    tunespec.resume(path, fresh, optimizer=fresh_opt)
    assert opened == ["rb"]


@pytest.mark.parametrize("layers", [5])
def test_resume_restores_the_exact_state(tmp_path, layers):
    torch = needs("torch")
    net, opt = _model(layers)
    path = tmp_path / "run.ckpt"
    tunespec.save_checkpoint(path, net, opt)
    fresh, fresh_opt = _model(layers)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    tunespec.resume(path, fresh, optimizer=fresh_opt)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
    saved = [s["momentum_buffer"] for s in opt.state.values()]
    loaded = [fresh_opt.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(saved, loaded, strict=True))
