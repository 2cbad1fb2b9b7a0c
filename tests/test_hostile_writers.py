"""Hostile and careless output paths: tunespec writes only regular files or new paths.

Every writer (``save_checkpoint``, a sharded ``save_checkpoint``, ``tunespec port``'s weights,
``tunespec convert --out``, ``tunespec lr-plot --png``) replaces the directory entry it writes, so a
FIFO, a device node, a socket or a directory given as the output (or a link to one) would stop
being what it was for every other process. Each is refused with a SpecError naming it; the node is
left as it was and so is the run (tests/snapshot.py). The nodes are made in a temporary directory:
a character device with the null device's numbers (as root), never the system's own.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tunespec
from frameworks import batches, needs, np
from snapshot import assert_unchanged, state_of
from tunespec import SpecError
from tunespec.cli import main

RECIPE = {"freeze": [r"0\..*"], "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
          "schedule": {"type": "multistep", "milestones": [3], "gamma": 0.5}}
KINDS = ["fifo", "char_device", "socket", "directory", "link_to_fifo", "link_to_device", "dangling_dir"]


def node(tmp_path: Path, kind: str) -> Path:
    """A path of ``kind`` in ``tmp_path`` (skips kinds this user cannot make)."""
    path = tmp_path / f"{kind}.out"
    if kind in ("fifo", "link_to_fifo"):
        real = tmp_path / "pipe"
        os.mkfifo(real)
    elif kind in ("char_device", "link_to_device"):
        real = tmp_path / "null-like"
        try:  # the null device's numbers, on a node of our own
            os.mknod(real, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "socket":
        real = tmp_path / "s.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(real))
        s.close()
    elif kind == "directory":
        real = tmp_path / "folder"
        real.mkdir()
        (real / "keep.txt").write_text("mine")
    else:  # a path whose parent is a regular file: no file can be made there
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "child.out"
    if kind.startswith("link_to"):
        path.symlink_to(real)
        return path
    return real


def fingerprint(path: Path) -> tuple:
    """What a refused write must leave: the node's type, device numbers, inode, and the link."""
    st = os.stat(path) if path.exists() or path.is_symlink() and path.resolve().exists() else None
    link = os.readlink(path) if path.is_symlink() else None
    contents = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    return (None if st is None else (stat.S_IFMT(st.st_mode), st.st_rdev, st.st_ino), link, contents,
            sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else None)


def trained(h):
    net = h.small_cnn()
    schedule = tunespec.StageRunner(RECIPE)
    net, opt = schedule.start(net)
    for x, y in batches(1, 8):
        h.step(net, opt, x, y)
    return net, opt, schedule


@pytest.mark.parametrize("kind", KINDS)
def test_save_checkpoint_refuses_what_is_not_a_regular_file(h, tmp_path, kind):
    path = node(tmp_path, kind)
    net, opt, schedule = trained(h)
    before, was = state_of(net, opt, schedule, schedule.lr_scheduler), fingerprint(path)
    with pytest.raises(SpecError, match=r"save_checkpoint: .*(FIFO|device|socket|directory|cannot write)"):
        tunespec.save_checkpoint(path, net, opt, schedule, epoch=0)
    assert fingerprint(path) == was
    assert_unchanged(before, state_of(net, opt, schedule, schedule.lr_scheduler))


def test_the_message_names_the_link_and_what_it_points_to(tmp_path):
    from tunespec.recipe.files import writable_file

    path = node(tmp_path, "link_to_fifo")
    with pytest.raises(SpecError, match=r"link_to_fifo.out' \(a link to .*pipe'\) is a FIFO"):
        writable_file(path, "save_checkpoint")


def test_a_regular_file_through_a_link_and_a_new_path_are_still_written(h, tmp_path):
    net, opt, schedule = trained(h)
    real = tmp_path / "real.ckpt"
    real.write_bytes(b"old")
    (tmp_path / "link.ckpt").symlink_to(real)
    tunespec.save_checkpoint(tmp_path / "link.ckpt", net, opt, schedule)
    tunespec.save_checkpoint(tmp_path / "new.ckpt", net, opt, schedule)
    assert (tmp_path / "link.ckpt").is_symlink() and real.read_bytes()[:1] != b"o"
    assert (tmp_path / "new.ckpt").is_file()


def test_a_path_that_becomes_a_fifo_while_writing_is_not_replaced(h, tmp_path, monkeypatch):
    """The check runs again just before the rename (a FIFO made during a long save survives)."""
    from tunespec.recipe import files

    net, opt, schedule = trained(h)
    path = tmp_path / "run.ckpt"
    keep = files._keep_mode

    def meanwhile(target, tmp):
        keep(target, tmp)
        os.mkfifo(path)

    monkeypatch.setattr(files, "_keep_mode", meanwhile)
    before = state_of(net, opt, schedule, schedule.lr_scheduler)
    with pytest.raises(SpecError, match="is a FIFO"):
        tunespec.save_checkpoint(path, net, opt, schedule)
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left
    assert_unchanged(before, state_of(net, opt, schedule, schedule.lr_scheduler))


# --- the command line ---------------------------------------------------------------------------

MMENGINE = {"optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.01, "weight_decay": 1e-4},
                              "paramwise_cfg": {"norm_decay_mult": 0.0}}}


def cli_refuses(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("tunespec: error:"), err
    assert any(m in err for m in match), err


@pytest.mark.parametrize("kind", KINDS)
def test_convert_out_refuses_what_is_not_a_regular_file(tmp_path, capsys, kind):
    path = node(tmp_path, kind)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(MMENGINE))
    was = fingerprint(path)
    cli_refuses(capsys, ["convert", "--from", "mmengine", str(config), "--out", str(path)],
                ["convert --out", str(path.name)])
    assert fingerprint(path) == was


@pytest.mark.parametrize("kind", KINDS)
def test_lr_plot_png_refuses_what_is_not_a_regular_file_before_computing(tmp_path, capsys, kind):
    path = node(tmp_path, kind)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    was = fingerprint(path)
    cli_refuses(capsys, ["lr-plot", str(recipe), "--epochs", "3", "--png", str(path)], ["--png"])
    assert fingerprint(path) == was
    assert "epoch" not in capsys.readouterr().out  # refused before the table was printed


def test_lr_plot_png_is_written_atomically_through_a_link(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(real)
    assert main(["lr-plot", str(recipe), "--epochs", "3", "--png", str(tmp_path / "link.png")]) == 0
    assert real.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "link.png").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "r.json", "real.png"]


def make_small_cnn():
    """A factory for ``--from/--to module:factory`` (the torch harness's network)."""
    from frameworks import HARNESSES

    return HARNESSES["torch"]().small_cnn()


@pytest.mark.parametrize("kind", KINDS)
def test_port_refuses_a_destination_that_is_not_a_regular_file(tmp_path, capsys, kind):
    torch = needs("torch")
    path = node(tmp_path, kind)
    src = tmp_path / "src.pt"
    torch.save(make_small_cnn().state_dict(), src)
    was = fingerprint(path)
    model = f"{__name__}:make_small_cnn"
    cli_refuses(capsys, ["port", str(src), str(path), "--from", model, "--to", model], ["port"])
    assert fingerprint(path) == was


# --- sharded checkpoints: a directory replaced whole ----------------------------------------------

SHARDED = textwrap.dedent('''
    import json, os, stat, sys, tempfile
    import torch, torch.distributed as dist
    from pathlib import Path
    import tunespec
    from tunespec import SpecError

    root = Path(sys.argv[1])
    dist.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=0, world_size=1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    from torch.distributed.device_mesh import init_device_mesh
    plan = tunespec.shard(net, {"freeze": ["0\\\\..*"]}, mesh=init_device_mesh("cpu", (1,)))
    opt = plan.optimizer("sgd", lr=0.1, momentum=0.9)
    net(torch.ones(2, 4)).sum().backward()
    opt.step()

    def snapshot():
        full = {n: (p.full_tensor().tolist(), p.requires_grad) for n, p in net.named_parameters()}
        state = {i: {k: v.full_tensor().tolist() if hasattr(v, "full_tensor") else float(v)
                     for k, v in s.items()} for i, s in enumerate(opt.state.values())}
        return json.dumps([full, state, [g["lr"] for g in opt.param_groups]], sort_keys=True)

    out = {}
    for name in sys.argv[2:]:
        path = root / name
        before_state = snapshot()
        st = os.lstat(path) if os.path.lexists(path) else None
        listing = sorted(os.listdir(path)) if path.is_dir() else None
        try:
            tunespec.save_checkpoint(path, net, opt)
            out[name] = "saved"
        except SpecError as exc:
            out[name] = str(exc)
        same = (snapshot() == before_state
                and (st is None or os.lstat(path)[:3] == st[:3])
                and listing == (sorted(os.listdir(path)) if path.is_dir() else None))
        out[name] = (out[name], same)
    dist.destroy_process_group()
    print(json.dumps(out))
''')


def test_a_sharded_save_replaces_only_a_new_path_or_an_earlier_sharded_checkpoint(tmp_path):
    """A sharded checkpoint is a directory that a save replaces whole: a user's folder, a regular
    file, a FIFO or a device given as its path is refused (the folder's files stay), on a real
    FSDP2 model in one gloo process."""
    needs("torch")
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch without distributed support")
    names = ["fifo", "plain", "folder", "new", "new", "link_to_folder"]
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "plain").write_text("mine")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("mine")
    (tmp_path / "link_to_folder").symlink_to(tmp_path / "folder")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path), *names], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["fifo"][0].startswith("save_checkpoint:") and "FIFO" in out["fifo"][0] and out["fifo"][1]
    assert "not a regular file" in out["plain"][0] and out["plain"][1]
    assert "not a sharded checkpoint" in out["folder"][0] and out["folder"][1]
    assert "not a sharded checkpoint" in out["link_to_folder"][0] and out["link_to_folder"][1]
    assert out["new"][0] == "saved"  # saved twice: the second replaces the first
    assert (tmp_path / "folder" / "keep.txt").read_text() == "mine"
    assert (tmp_path / "plain").read_text() == "mine"
