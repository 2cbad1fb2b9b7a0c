"""Run checkpoints: tunespec.save_checkpoint and tunespec.resume against raw safetensors.

The bound is the safetensors library writing (``save_file``) and reading (``load_file``, then
``load_state_dict`` into the model and the optimizer) the very same arrays: the model's state and
its AdamW state, after one training step. tunespec's save also fsyncs (its write is atomic), so
the bound's save is timed with an fsync too. Models: torchvision ResNet-50 (161 tensors, 321
optimizer arrays) and a synthetic one of 20,000 tensors (a ParameterList of 8 x 8 tensors). Growth:
save and resume at 1,000, 4,000 and 20,000 tensors, exponent of time against tensors from 1,000
to 20,000 (1.0 is linear). Resume here is into a fresh model and optimizer (no StageRunner: that
would add the planning the planning family measures).
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from pathlib import Path

from common import Context, ratio, rounds, row, tag

FAMILY = "checkpoints"
FRAMEWORKS = ("torch",)
SIZES = (1_000, 4_000, 20_000)


def _synthetic(tensors: int):
    """``tensors`` parameters of 8 x 8 (a ParameterList: quick to build, one name each)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.ParameterList([nn.Parameter(torch.randn(8, 8)) for _ in range(tensors)])


def _resnet50():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None)


def _trained(build):
    """A model and its AdamW after one step: the optimizer holds its full state."""
    import torch

    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    return model, opt


def _flat(model, opt) -> dict:
    """The same arrays tunespec stores, as one flat safetensors mapping."""
    out = {f"model/{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    params = {p: i for i, p in enumerate(q for g in opt.param_groups for q in g["params"])}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"opt/{params[p]}/{key}"] = value.detach().contiguous().reshape(value.shape)
    return out


def _raw_save(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _raw_load(path: Path, model, opt) -> None:
    from safetensors.torch import load_file

    data = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("model/")})
    state: dict = {}
    for k, v in data.items():
        if k.startswith("opt/"):
            _, index, key = k.split("/", 2)
            state.setdefault(int(index), {})[key] = v
    opt.load_state_dict(_groups(opt, state))


def _groups(opt, state: dict) -> dict:
    """A state_dict of ``opt``'s groups (parameters numbered in order) holding ``state``."""
    n = 0
    groups = []
    for g in opt.param_groups:
        groups.append(dict({k: v for k, v in g.items() if k != "params"}, params=list(range(n, n + len(g["params"])))))
        n += len(g["params"])
    return {"state": state, "param_groups": groups}


def _pair(build, n: int, where: Path) -> dict[str, list[float]]:
    """Seconds per call of tunespec's save and resume and of the raw bound, side by side."""
    import tunespec

    model, opt = _trained(build)
    fresh, fresh_opt = _trained(build)
    flat = _flat(model, opt)
    ours, raw = where / "run.ckpt", where / "raw.safetensors"
    variants = {
        "save": lambda: tunespec.save_checkpoint(ours, model, opt),
        "raw_save": lambda: _raw_save(raw, flat),
    }
    times = rounds(variants, n, warmup=1)
    variants = {
        "resume": lambda: tunespec.resume(ours, fresh, optimizer=fresh_opt),
        "raw_load": lambda: _raw_load(raw, fresh, fresh_opt),
    }
    times.update(rounds(variants, n, warmup=1))
    return times


def rows(ctx: Context) -> list[dict]:
    import torch

    torch.set_num_threads(ctx.threads)
    n = 2 if ctx.quick else 5
    found = []
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        t = _pair(_resnet50, n, where)
        found += [
            row("save_checkpoint / raw safetensors save (ResNet-50 + AdamW)", ratio(t["save"], t["raw_save"]), "x",
                1.3, save_s=statistics.median(t["save"]), load=load),
            row("resume / raw safetensors load (ResNet-50 + AdamW)", ratio(t["resume"], t["raw_load"]), "x", 1.3,
                resume_s=statistics.median(t["resume"]), load=load)]
        medians = {}
        for size in SIZES:
            t = _pair(lambda size=size: _synthetic(size), 1 if ctx.quick else 3, where)
            medians[size] = {k: statistics.median(v) for k, v in t.items()}
            if size == SIZES[-1]:
                found += [
                    row(f"save_checkpoint / raw safetensors save ({size:,} tensors + AdamW)",
                        ratio(t["save"], t["raw_save"]), "x", 1.3, save_s=medians[size]["save"], load=load),
                    row(f"resume / raw safetensors load ({size:,} tensors + AdamW)",
                        ratio(t["resume"], t["raw_load"]), "x", 1.3, resume_s=medians[size]["resume"], load=load)]
        low, high = SIZES[0], SIZES[-1]
        for what in ("save", "resume"):
            exponent = math.log(medians[high][what] / medians[low][what]) / math.log(high / low)
            found.append(row(f"{what} growth exponent, {low:,} -> {high:,} tensors", exponent, "", 1.1,
                             seconds={str(k): v[what] for k, v in medians.items()}, load=load))
    device = "cpu"
    return tag(found, "torch", device)
