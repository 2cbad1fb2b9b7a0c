"""A new user's first hour: discoverable groups and presets, a compact plan summary, no silent
no-op (unapplied plans, quoted numbers in YAML, lr-plot without a model), a package that says
its version and explains every argument."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tunespec
from tunespec import SpecError
from tunespec.cli import main

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

HEAD_AND_L4 = {"freeze": [".*"], "train": [r"layer4\..*", r"fc\..*"], "lr_mult": {r"fc\..*": 10},
               "wd_mult": {"@bias": 0, "@norm": 0}}


def resnet18():
    return torchvision.models.resnet18(weights=None, num_classes=3)


def gluon_resnet18(forward: bool = True):
    mx = pytest.importorskip("mxnet")
    from tunespec.backends.mxnet import import_gluoncv

    net = import_gluoncv().model_zoo.get_model("resnet18_v1b", pretrained=False, classes=3)
    net.initialize()
    if forward:
        net(mx.nd.zeros((1, 3, 32, 32)))
    return net


# --- groups and presets ---------------------------------------------------------------------

def test_groups_of_a_torchvision_resnet_say_what_4plus_trains():
    info = tunespec.groups(resnet18())
    assert info.card == "ResNet" and info.backend == "torch" and info.tensors == 62
    assert info.preset("4+").trains == ("stage4", "stage5", "heads")
    assert info.group("stage4").modules == ("layer3",) and info.group("@heads").modules == ("fc",)
    assert info.group("layer:batch_norm").tensors == 40 and info.group("bias").tensors == 21
    # the counts are what a plan with that preset trains
    plan = tunespec.plan(resnet18(), {"preset": "4+"})
    assert info.preset("4+").tensors == len(plan.trainable)
    text = str(info)
    assert "4+" in text and "stage4 (layer3), stage5 (layer4), heads (fc)" in text
    with pytest.raises(KeyError, match="stage4"):
        info.group("stage9")


def test_groups_of_a_gluoncv_resnet_match_torchvision():
    info = tunespec.groups(gluon_resnet18())
    assert info.backend == "mxnet" and info.card == "ResNet"
    assert info.preset("4+").trains == ("stage4", "stage5", "heads")
    assert info.group("stage5").modules == ("layer4",)
    torch_info = tunespec.groups(resnet18())
    assert [(g.name, g.tensors) for g in info.groups if g.source == "card"] == \
        [(g.name, g.tensors) for g in torch_info.groups if g.source == "card"]


def test_groups_of_a_timm_vit_list_last_k():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=32, num_classes=3)
    info = tunespec.groups(vit)
    assert info.card == "ViT (timm)" and info.last_k == 3
    assert info.preset("heads").trains == ("heads",)
    assert "last-K for K = 1..3" in str(info)
    assert info.group("layer:layer_norm").tensors > 0


def test_groups_inside_one_shared_module_show_their_first_and_last_tensor():
    """A detector's stages all live in ``backbone``: the listing tells them apart by tensor range."""
    det = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3)
    info = tunespec.groups(det)
    stage = info.group("stage4")
    assert len(stage.modules) == 1 and " .. " in stage.modules[0]
    first, last = stage.modules[0].split(" .. ")
    names = [d.name for d in tunespec.plan(det, {"freeze": [".*"], "train": ["@stage4"]}).trainable]
    assert (first, last) == (names[0], names[-1])
    assert info.group("heads").modules == ("roi_heads",) or "roi_heads" in info.group("heads").modules
    assert "4+" in str(info)


def test_groups_of_a_model_without_card_lists_built_in_groups_only():
    info = tunespec.groups(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)))
    assert info.card is None and info.presets == ()
    assert {g.name for g in info.groups} == {"bias", "norm", "1d", "layer:linear", "layer:layer_norm"}
    assert "no groups or presets beyond the built-in ones" in str(info)


def test_groups_changes_nothing_and_refuses_what_is_not_a_model():
    model = resnet18()
    before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    tunespec.groups(model)
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    for bad in (None, "resnet18", 3):
        with pytest.raises(SpecError):
            tunespec.groups(bad)


def test_groups_command_prints_and_writes_json(capsys):
    assert main(["groups", "--model", "torchvision:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "@stage4" in out and "4+" in out and "layer3" in out
    assert main(["groups", "--model", "torchvision:resnet18", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in data["presets"]} >= {"heads", "4+", "all"}
    assert main(["groups", "--model", "torchvision:no_such_net"]) == 2
    assert main(["groups", "--model", "nocolon"]) == 2


# --- the compact summary ----------------------------------------------------------------------

def test_summary_table_one_row_per_group_with_absolute_lr_and_wd():
    plan = tunespec.plan(resnet18(), HEAD_AND_L4)
    text = plan.summary_table(lr=0.01, weight_decay=5e-4)
    rows = [line.split() for line in text.splitlines()[2:7]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "frozen"]
    fc_weight = next(r for r in rows if r[-1] == "fc" and r[5] == "0.0005")
    assert fc_weight[:5] == ["2", "yes", "1", "1,536", "0.1"]
    assert rows[-1][:4] == ["frozen", "no", "45", f"{sum(p.numel() for n, p in resnet18().named_parameters() if not n.startswith(('layer4', 'fc'))):,}"]
    assert "trainable params:" in text and "non-trainable params:" in text
    assert "x10" in plan.summary_table()  # multipliers without an lr
    for bad in ({"lr": -1}, {"lr": float("nan")}, {"weight_decay": "1e-4"}):
        with pytest.raises(SpecError):
            plan.summary_table(**bad)


def test_summary_table_on_gluon_and_timm():
    plan = tunespec.plan(gluon_resnet18(), HEAD_AND_L4)
    assert "frozen  no" in plan.summary_table(lr=0.01)
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=3)
    text = tunespec.plan(vit, {"preset": "heads", "lr_mult": {"@heads": 10}}).summary_table(lr=1e-3)
    assert "0.01" in text and "head" in text


def test_print_plan_collapses_rows_like_the_cli(capsys):
    plan = tunespec.plan(resnet18(), HEAD_AND_L4)
    assert str(plan) == plan.table(full=False)
    assert "layer1.*" in str(plan) and "layer1.0.conv1.weight" not in str(plan)
    assert main(["plan", "examples/resnet_finetune.yaml", "--model", "torchvision:resnet18"]) == 0
    assert "layer1.*" in capsys.readouterr().out
    assert main(["plan", "examples/resnet_finetune.yaml", "--model", "torchvision:resnet18",
                 "--summary", "--lr", "0.01"]) == 0
    assert "trainable params" in capsys.readouterr().out


# --- silent no-ops ----------------------------------------------------------------------------

def test_param_groups_and_check_of_an_unapplied_plan_are_errors():
    model = resnet18()
    plan = tunespec.plan(model, HEAD_AND_L4)
    with pytest.raises(SpecError, match="never applied.*get gradients.*update their statistics.*plan.apply"):
        plan.param_groups(lr=0.01)
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n.startswith(("layer4", "fc"))], lr=0.1)
    with pytest.raises(SpecError, match="check: this plan was never applied"):
        plan.check(opt)
    assert all(p.requires_grad for p in model.parameters())  # nothing changed
    plan.apply()
    assert len(plan.param_groups(lr=0.01)) == 4
    plan.check(opt)
    # a plan that changes nothing needs no apply
    tunespec.plan(resnet18(), {"lr_mult": {r"fc\..*": 2}}).param_groups(lr=0.1)


def test_unapplied_gluon_plan_is_refused_too():
    plan = tunespec.plan(gluon_resnet18(), HEAD_AND_L4)
    with pytest.raises(SpecError, match="never applied"):
        plan.param_groups(lr=0.01)


def test_a_gluon_trainer_over_uninitialised_parameters_is_a_spec_error():
    net = gluon_resnet18(forward=False)
    mx = pytest.importorskip("mxnet")
    from tunespec.backends.mxnet import import_gluoncv

    bare = import_gluoncv().model_zoo.get_model("resnet18_v1b", pretrained=False, classes=3)
    plan = tunespec.plan(bare, HEAD_AND_L4)
    before = {n: (p.grad_req, p.lr_mult, p.wd_mult) for n, p in bare.collect_params().items()}
    with pytest.raises(SpecError, match=r"not initialised.*net.initialize\(\)"):
        plan.optimizer("sgd", lr=0.01, momentum=0.9)
    assert not plan.applied  # rolled back
    assert {n: (p.grad_req, p.lr_mult, p.wd_mult) for n, p in bare.collect_params().items()} == before
    assert isinstance(tunespec.plan(net, HEAD_AND_L4).optimizer("sgd", lr=0.01), mx.gluon.Trainer)


@pytest.mark.parametrize("text, fix", [("1e-3", "1.0e-3"), ("5E4", "5.0e+4"), ("1e+3", "1.0e+3")])
def test_yaml_exponent_without_dot_says_why_and_what_works(tmp_path: Path, text: str, fix: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"optimizer: {{name: sgd, lr: {text}}}\n")
    with pytest.raises(SpecError, match=rf"YAML reads {re.escape(text)} as text.*write {re.escape(fix)}"):
        tunespec.load_recipe(path)


def test_quoted_numbers_elsewhere_say_to_drop_the_quotes():
    with pytest.raises(SpecError, match="without quotes, 0.01"):
        tunespec.load_recipe({"optimizer": {"name": "sgd", "lr": "0.01"}})
    with pytest.raises(SpecError) as info:
        tunespec.load_recipe({"optimizer": {"name": "sgd", "lr": "fast"}})
    assert "a string" not in str(info.value)  # no hint for what is not a number


def test_lr_plot_without_a_model_says_lr_mult_is_not_applied(tmp_path: Path, capsys):
    assert main(["lr-plot", "examples/two_phase.yaml", "--epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "lr_mult and layer_decay are not applied" in out and "--model" in out


@pytest.mark.parametrize("name, fragment", [("lr.jpx", "cannot write .jpx"), ("lr", "without an extension"),
                                            ("sub", "is a directory"), ("nowhere/lr.png", "does not exist")])
def test_lr_plot_png_names_matplotlib_cannot_write_fail_before_anything(tmp_path: Path, capsys, name, fragment):
    pytest.importorskip("matplotlib")
    (tmp_path / "sub").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["lr-plot", "examples/two_phase.yaml", "--epochs", "4", "--png", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""  # refused before the table was computed
    assert sorted(tmp_path.rglob("*")) == before


def test_lr_plot_png_has_title_epoch_axis_and_unclipped_stage_labels(tmp_path: Path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from tunespec import cli

    seen = {}
    real_close = plt.close

    def keep(fig):
        ax = fig.axes[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [t for t in ax.texts]
        seen.update(title=ax.get_title(), xlabel=ax.get_xlabel(), labels=[t.get_text() for t in texts],
                    inside=all(box.x0 <= t.get_window_extent(renderer).x0 and
                               t.get_window_extent(renderer).x1 <= box.x1 and
                               t.get_window_extent(renderer).y1 <= box.y1 for t in texts))
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    png = tmp_path / "lr.png"
    assert cli.main(["lr-plot", "examples/two_phase.yaml", "--epochs", "6", "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert seen["title"] == "two_phase.yaml: lr over 6 epochs"
    assert seen["xlabel"].startswith("epoch") and seen["labels"] == ["start", "4+"] and seen["inside"]


# --- a package that says what it is ------------------------------------------------------------

def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"tunespec {tunespec.__version__}"
    run = subprocess.run([sys.executable, "-m", "tunespec", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"tunespec {tunespec.__version__}"


def test_every_argument_of_every_command_has_help():
    from tunespec.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"groups", "plan", "diff", "port", "convert", "lr-plot"}
    for name, command in sub.choices.items():
        assert "example:" in command.description, name
        for action in command._actions:
            assert action.help, f"tunespec {name}: {action.dest} has no help text"


def test_package_ships_typing_marker_and_license():
    root = Path(__file__).resolve().parents[1]
    assert (Path(tunespec.__file__).parent / "py.typed").exists()
    assert "Apache License" in (root / "LICENSE").read_text(encoding="utf-8")
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    assert 'requires-python = ">=3.11"' in text and '"py.typed"' in text


def test_every_public_name_says_what_it_does_with_an_example():
    """help(tunespec.X) is where a user looks first: every public function and class explains
    itself and shows one use (the deprecated alias Schedule points to StageRunner instead)."""
    import inspect

    thin = []
    for name in tunespec.__all__:
        doc = inspect.getdoc(getattr(tunespec, name)) or ""
        if name == "Schedule":
            assert "StageRunner" in doc
        elif len(doc) < 100 or not (re.search(r"::\n\n\s+\S", doc) or ">>>" in doc):
            thin.append(f"{name} ({len(doc)} characters)")
    for cls, names in ((tunespec.Plan, ("summary", "summary_table", "table", "to_dict", "verify", "apply",
                                        "optimizer", "param_groups", "check")),
                       (tunespec.Spec, ("to_dict", "from_dict", "with_strict")),
                       (tunespec.Recipe, ("from_dict",))):
        for method in names:
            doc = inspect.getdoc(getattr(cls, method)) or ""
            if len(doc) < 60:
                thin.append(f"{cls.__name__}.{method} ({len(doc)} characters)")
    assert not thin, "docstrings too thin: " + ", ".join(thin)


def test_an_epoch_schedule_without_steps_per_epoch_names_the_runners_argument():
    runner = tunespec.StageRunner("examples/two_phase.yaml")   # the recipe's schedule counts epochs
    with pytest.raises(SpecError, match=r"StageRunner\(recipe, steps_per_epoch=len\(loader\)\)"):
        runner.start(resnet18())


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"[-+]?\d{1,5}(\.\d*)?[eE][-+]?\d{1,4}", fullmatch=True),
                 st.floats(allow_nan=True, allow_infinity=True).map(str)))
def test_a_string_where_a_number_belongs_always_gets_a_one_line_error(text):
    """Whatever string lands in a numeric field (YAML exponents, 'nan', 'inf', huge digit runs,
    text), the error is a SpecError of one line; a hint appears only for finite numbers, and the
    number it suggests reads back as that number in YAML."""
    import yaml

    with pytest.raises(SpecError) as info:
        tunespec.load_recipe({"optimizer": {"name": "sgd", "lr": text}})
    message = str(info.value)
    assert "\n" not in message
    hint = re.search(r"; write (\S+), or", message)
    if hint:
        assert yaml.safe_load(f"x: {hint.group(1)}")["x"] == float(text)
