"""The lr timeline (a pure function) and `tunespec lr-plot`."""

from __future__ import annotations

import pytest

from tunespec import SpecError
from tunespec.cli import main
from tunespec.recipe.ramps import Ramp
from tunespec.recipe.schedule import LRSchedule
from tunespec.lifecycle.timeline import lr_timeline

RECIPE = {
    "preset": "heads", "optimizer": {"name": "sgd", "lr": 0.1},
    "schedule": {"type": "step", "step_size": 2, "unit": "epoch", "gamma": 0.5},
    "stages": [{"at_epoch": 2, "preset": "4+", "name": "unfreeze", "ramp": {"start": 0.25, "growth": 2.0}},
               {"at_epoch": 4, "preset": "all", "name": "all", "restart": True, "lr_factor": 0.1}],
}


def test_timeline_without_a_model_has_one_group_per_stage():
    tl = lr_timeline(RECIPE, epochs=6, steps_per_epoch=3)
    assert tl.steps == 18 and tl.starts == [(0, "start"), (6, "unfreeze"), (12, "all")]
    head, later, last = tl.series.values()
    factor = LRSchedule.from_dict(RECIPE["schedule"]).in_steps(3).factor
    assert head[:12] == [0.1 * factor(t) for t in range(12)]
    assert head[12:] == [0.1 * factor(t - 12) for t in range(12, 18)]  # restarted at stage 'all'
    ramp = Ramp(0.25, 2.0)
    assert later[:6] == [None] * 6 and later[6] == ramp.lr(0.1, 0) * factor(6)
    assert later[9] == ramp.lr(0.1, 1) * factor(9) and later[12] == ramp.lr(0.1, 2) * factor(0)
    assert last[:12] == [None] * 12 and last[12] == pytest.approx(0.01)
    text = tl.table()
    assert text.splitlines()[0].split() == ["step", "epoch", "stage", *tl.series]
    assert "> unfreeze" in text and "> all" in text and len(text.splitlines()) == 1 + 6 + 3


def test_plateau_stages_are_not_previewed():
    recipe = {**RECIPE, "stages": [{"on_plateau": 2, "preset": "all"}]}
    tl = lr_timeline(recipe, epochs=3)
    assert len(tl.series) == 1 and "plateau" in tl.table()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"epochs": 0}, "epochs: expected a positive integer"),
    ({"epochs": 10**5, "steps_per_epoch": 10**5}, "more than"),
    ({"epochs": 2, "lr": -1.0}, "lr: expected a finite number > 0"),
])
def test_bad_timeline_arguments(kwargs, fragment):
    with pytest.raises(SpecError, match=fragment):
        lr_timeline(RECIPE, **kwargs)


def test_timeline_equals_the_runner_step_by_step():
    """The timeline replays the runner's decisions: every tensor's lr, every step, float ==."""
    torch = pytest.importorskip("torch", reason="needs torch: pip install 'tunespec[torch]'")
    import tunespec
    from frameworks import HARNESSES

    recipe = {"freeze": [".*"], "train": [r"8\..*"], "lr_mult": {r"8\..*": 10},
              "optimizer": {"name": "sgd", "lr": 0.05},
              "schedule": {"type": "cosine", "total_steps": 12},
              "stages": [{"at_epoch": 1, "freeze": [".*"], "train": [r"[38]\..*"], "lr_factor": 0.5,
                          "ramp": {"start": 0.1, "growth": 3.0}},
                         {"at_epoch": 2, "train": [".*"], "restart": True,
                          "ramp": {"start": 0.5, "growth": 2.0, "per": "step"}}]}
    net = HARNESSES["torch"]().small_cnn(dtype="float32")
    runner = tunespec.StageRunner(recipe)
    net, opt = runner.start(net)
    names = {id(p): n for n, p in net.named_parameters()}
    seen: dict[str, list] = {n: [] for n in names.values()}
    for epoch in range(4):
        for _ in range(3):
            of = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
            for n in seen:
                seen[n].append(of.get(n))
            opt.step()
            runner.lr_scheduler.step()
        net, opt = runner.step(epoch, net, opt)
    from tunespec.cli import stage_trainables

    tl = lr_timeline(recipe, 4, 3, stage_trainables(net, recipe, 3))
    replayed = {n: values for label, values in tl.series.items() for n in tl.members[label]}
    assert replayed == {n: v for n, v in seen.items() if any(x is not None for x in v)}
    assert torch.is_tensor(net[0].weight)


def test_lr_plot_prints_a_table_and_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="needs matplotlib (comes with the mxnet extra)")
    import json

    path, png = tmp_path / "r.json", tmp_path / "lr.png"
    path.write_text(json.dumps(RECIPE))
    assert main(["lr-plot", str(path), "--epochs", "6", "--steps-per-epoch", "2", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "> unfreeze" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_plot_errors_name_the_fix(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text('{"preset": "heads", "stages": [{"at_epoch": 1, "preset": "all"}]}')
    assert main(["lr-plot", str(path), "--epochs", "3"]) == 2
    assert "no optimizer lr" in capsys.readouterr().err
    assert main(["lr-plot", str(path), "--epochs", "3", "--lr", "0.1", "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err


def test_lr_plot_groups_a_models_tensors_by_their_lrs(tmp_path, capsys):
    pytest.importorskip("torchvision", reason="needs torchvision: pip install 'tunespec[torch]'")
    path = tmp_path / "r.yaml"
    path.write_text("preset: heads\nlr_mult: {'fc\\..*': 10}\noptimizer: {name: sgd, lr: 0.01}\n"
                    "stages:\n  - {at_epoch: 2, preset: '4+', ramp: {start: 0.1, growth: 2.0}}\n")
    assert main(["lr-plot", str(path), "--epochs", "4", "--model", "torchvision:resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "epoch", "stage", "G0:fc.*", "G1:layer3+layer4"]
    assert lines[3].split() == ["2", "2", ">", "4+", "0.1", "0.001"] and lines[4].split()[-1] == "0.002"
    assert lines[6].startswith("G1:layer3+layer4: layer3.0.conv1.weight") and lines[6].endswith("(30 tensors)")
