"""The command line: tunespec plan RECIPE --model ZOO:NAME."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from frameworks import needing, needs

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunespec.cli", *args], capture_output=True,
                          text=True, timeout=300)


@needing("torchvision")
def test_plan_torchvision_resnet18_collapsed_with_totals():
    out = run("plan", str(EXAMPLES / "resnet_finetune.yaml"), "--model", "torchvision:resnet18")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("layer1.*") and "frozen" in line for line in lines)
    assert any(line.startswith("fc.weight") and " 10 " in line for line in lines)
    assert "62 parameter tensors, 11,689,512 elements" in out.stdout
    assert "trainable 17 tensors / 8,906,728 elements" in out.stdout
    assert len(lines) < 40


@needing("gluoncv")
def test_plan_gluoncv_ssd_full_and_json():
    out = run("plan", str(EXAMPLES / "ssd_heads.yaml"), "--model", "gluoncv:ssd_300_mobilenet0.25_voc")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2].startswith("features.*") and "frozen" in out.stdout.splitlines()[2]
    assert "norm layers with running stats: 35 (35 frozen" in out.stdout
    full = run("plan", str(EXAMPLES / "ssd_heads.yaml"), "--model", "gluoncv:ssd_300_mobilenet0.25_voc", "--full")
    assert "features.mobilenet0_conv0_weight" in full.stdout and "ssd0_mobilenet0_conv0_weight" in full.stdout
    js = run("plan", str(EXAMPLES / "ssd_heads.yaml"), "--model", "gluoncv:ssd_300_mobilenet0.25_voc", "--json")
    data = json.loads(js.stdout)
    assert data["summary"]["frozen_tensors"] == 105 and data["params"][0]["trainable"] is False


@needing("torchvision")
def test_plan_errors_are_one_line_with_a_fix(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("freeze: ['layer5\\..*']\n")
    out = run("plan", str(recipe), "--model", "torchvision:resnet18")
    assert out.returncode == 2
    assert "tunespec: error: freeze[0]: 'layer5\\\\..*' matches no parameter" in out.stderr
    assert "closest names" in out.stderr
    bad_model = run("plan", str(recipe), "--model", "torchvision:resnet19")
    assert bad_model.returncode == 2 and "torchvision has no model 'resnet19'" in bad_model.stderr


def test_factory_models(tmp_path):
    needs("torch")
    (tmp_path / "mymodels.py").write_text(
        "import torch\ndef tiny():\n    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))\n")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"freeze": ["0\\..*"]}))
    out = subprocess.run([sys.executable, "-m", "tunespec.cli", "plan", str(recipe), "--model", "mymodels:tiny",
                          "--full"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "0.weight" in out.stdout and "frozen 2 tensors" in out.stdout
