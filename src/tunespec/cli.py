"""tunespec's command line.

    tunespec plan RECIPE --model ZOO:NAME          what a recipe does to a model
    tunespec diff RECIPE --a ZOO:NAME --b ZOO:NAME  where two models' plans differ
    tunespec port SRC DST --from ZOO:NAME --to ZOO:NAME   convert weights between frameworks
    tunespec convert --from mmengine CONFIG [--out RECIPE.yaml]   a peer's config as a recipe
    tunespec lr-plot RECIPE --epochs N [--model ZOO:NAME] [--png FILE]   each group's lr over a run

ZOO is a model zoo a backend builds from offline (see each backend's facts) or a Python module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence
import yaml

from tunespec.backend_api import CheckpointFiles, ModelZoo, require
from tunespec.errors import SpecError
from tunespec.registry import load_backend, registered
from tunespec.planning.make import plan
from tunespec.lifecycle.port import port
from tunespec.dispatch import backend_for
from tunespec.recipe.files import atomic_write
from tunespec.importers.mmengine import from_mmengine_config, read_config
from tunespec.recipe.recipe import load_recipe
from tunespec.lifecycle.timeline import lr_timeline
from tunespec.lifecycle.stages import StageRunner


def zoos() -> dict[str, str]:
    """Model zoos the command line can build offline, and the backend that builds each."""
    return {zoo: facts.name for facts in registered().values() for zoo in facts.zoos}


def build_model(source: str, input_size: int | None = None) -> Any:
    """``ZOO:NAME`` from a backend's zoo (``torchvision:resnet18``) or ``module.path:factory``."""
    zoo, sep, name = source.partition(":")
    known = zoos()
    if not sep or not name:
        examples = ", ".join(f"{z}:NAME" for z in known)
        raise SpecError(f"--model {source!r}: write ZOO:NAME ({examples or 'no zoo is registered'}) "
                        f"or my.module:make_model")
    if zoo in known:
        backend = require(load_backend(known[zoo]), ModelZoo, f"--model {source!r}")
        return backend.build_model(zoo, name, input_size)
    try:
        factory = getattr(importlib.import_module(zoo), name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"--model {source!r}: cannot load {name!r} from {zoo!r} ({exc})") from None
    return factory()


def _plan_command(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.input_size)
    p = plan(model, args.recipe, backend=args.backend, strict=False if args.no_strict else None)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print(p.table(full=args.full))
    return 0


def _diff_command(args: argparse.Namespace) -> int:
    a = plan(build_model(args.a, args.input_size), args.recipe)
    b = plan(build_model(args.b, args.input_size), args.recipe)
    rows = diff_plans(a, b)
    for name, left, right in rows:
        print(f"{name}: {left}  |  {right}")
    print(f"{len(rows)} difference(s) between {args.a} ({len(a.decisions)} tensors) and "
          f"{args.b} ({len(b.decisions)} tensors)")
    return 1 if rows else 0


def diff_plans(a: Any, b: Any) -> list[tuple[str, str, str]]:
    """Per canonical name, where two plans differ (missing tensors, trainability, multipliers)."""
    def view(p: Any) -> dict[str, str]:
        out = {d.name: ("frozen" if not d.trainable else f"train lr x{d.lr_mult:g} wd x{d.wd_mult:g}")
               for d in p.decisions}
        out.update({f"{n.norm.name} (BN statistics)": "frozen" if n.frozen else "updating" for n in p.norms})
        return out

    va, vb = view(a), view(b)
    names = list(dict.fromkeys(list(va) + list(vb)))
    return [(n, va.get(n, "absent"), vb.get(n, "absent")) for n in names if va.get(n) != vb.get(n)]


def _port_command(args: argparse.Namespace) -> int:
    src = build_model(args.from_model, args.input_size)
    dst = build_model(args.to_model, args.input_size)
    load_weights(src, args.src, allow_pickle=args.allow_pickle)
    report = port(src, dst, strict=not args.no_strict)
    save_weights(dst, args.dst)
    print(f"{report}\nwrote {args.dst}")
    return 0


def load_weights(model: Any, path: str, allow_pickle: bool = False) -> None:
    """A weights file in the model's framework's format (nothing that runs code unless
    ``allow_pickle``); every key and shape is checked before the model changes."""
    require(backend_for(model), CheckpointFiles, "port").load_file(model, path, allow_pickle)


def save_weights(model: Any, path: str) -> None:
    """The model's weights, written atomically (a crash or a full disk leaves the old file)."""
    be = require(backend_for(model), CheckpointFiles, "port")
    atomic_write(path, lambda tmp: be.save_file(model, tmp), "port")


def _convert_command(args: argparse.Namespace) -> int:
    recipe = from_mmengine_config(read_config(args.config, allow_exec=args.exec_config))
    text = f"# converted from {args.config} by tunespec convert --from {args.source}\n" + \
        yaml.safe_dump(recipe, sort_keys=False)
    if args.out is None:
        print(text, end="")
        return 0

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(args.out, write, "convert --out")
    print(f"wrote {args.out}: {len(recipe['rules'])} rules")
    return 0


def _lr_plot_command(args: argparse.Namespace) -> int:
    if args.every is not None and args.every < 1:
        raise SpecError(f"--every: expected a positive number of steps, got {args.every}")
    recipe = load_recipe(args.recipe)
    trainable = None
    if args.model:
        trainable = stage_trainables(build_model(args.model, args.input_size), recipe, args.steps_per_epoch)
    timeline = lr_timeline(recipe, args.epochs, args.steps_per_epoch, trainable, lr=args.lr)
    print(timeline.table(args.every))
    if args.png:
        write_png(timeline, args.png, log=args.log)
        print(f"wrote {args.png}")
    return 0


def stage_trainables(model: Any, recipe: Any, steps_per_epoch: int) -> list[dict[str, float]]:
    """Per stage, the trainable parameters' names and lr multipliers its plan gives ``model``."""
    runner = StageRunner(recipe, steps_per_epoch)
    return [{d.name: d.lr_mult for d in plan(model, stage.spec, strict=False).trainable}
            for stage in runner.stages]


def write_png(timeline: Any, path: str, log: bool = False) -> None:
    """The timeline as a line plot, stage changes marked (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    steps = range(timeline.steps)
    for label, values in timeline.series.items():
        ax.plot(steps, [float("nan") if v is None else v for v in values], label=label)
    for start, name in timeline.starts[1:]:
        ax.axvline(start, color="grey", linestyle=":")
        ax.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8, color="grey")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(f"optimizer step ({timeline.steps_per_epoch} per epoch)")
    ax.set_ylabel("effective lr")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise SpecError(f"--png {path!r}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunespec", description=__doc__)
    model_help = " or ".join([*(f"{z}:NAME" for z in zoos()), "module.path:factory"])
    sub = parser.add_subparsers(dest="command", required=True)
    plan_p = sub.add_parser("plan", help="print the plan a recipe makes for a model")
    plan_p.add_argument("recipe", help="recipe file (.yaml, .json, .toml)")
    plan_p.add_argument("--model", required=True, help=model_help)
    plan_p.add_argument("--backend", choices=list(registered()), help="check the model's framework")
    plan_p.add_argument("--full", action="store_true", help="one row per tensor (default: by module)")
    plan_p.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan_p.add_argument("--no-strict", action="store_true", help="rules matching nothing only warn")
    plan_p.add_argument("--input-size", type=int, help="input size, where a zoo infers shapes by a forward")
    plan_p.set_defaults(func=_plan_command)
    diff_p = sub.add_parser("diff", help="where one recipe's plans for two models differ")
    diff_p.add_argument("recipe")
    diff_p.add_argument("--a", required=True, help=f"first model: {model_help}")
    diff_p.add_argument("--b", required=True, help="second model, e.g. the same network from another zoo")
    diff_p.add_argument("--input-size", type=int)
    diff_p.set_defaults(func=_diff_command)
    port_p = sub.add_parser("port", help="convert weights between frameworks (e.g. from one zoo's twin to another's)")
    port_p.add_argument("src", help="weights of --from, in its framework's own format")
    port_p.add_argument("dst", help="where to write the weights of --to")
    port_p.add_argument("--from", dest="from_model", required=True, help="model SRC belongs to")
    port_p.add_argument("--to", dest="to_model", required=True, help="model DST is written for")
    port_p.add_argument("--no-strict", action="store_true", help="copy what matches, report the rest")
    port_p.add_argument("--allow-pickle", action="store_true",
                        help="read a SRC that needs pickle (runs code from the file: trusted files only)")
    port_p.add_argument("--input-size", type=int)
    port_p.set_defaults(func=_port_command)
    convert_p = sub.add_parser("convert", help="a peer's fine-tuning config as a recipe YAML")
    convert_p.add_argument("config", help="MMEngine config (.json, .yaml; .py with --exec-config)")
    convert_p.add_argument("--from", dest="source", required=True, choices=["mmengine"],
                           help="whose config it is")
    convert_p.add_argument("--out", help="recipe file to write (default: print it)")
    convert_p.add_argument("--exec-config", action="store_true",
                           help="read a .py config with mmengine's Config (runs its code: trusted files only)")
    convert_p.set_defaults(func=_convert_command)
    lr_p = sub.add_parser("lr-plot", help="each group's effective lr over a run, and the stage changes")
    lr_p.add_argument("recipe")
    lr_p.add_argument("--epochs", type=int, required=True)
    lr_p.add_argument("--steps-per-epoch", type=int, default=1, help="optimizer steps per epoch (default 1)")
    lr_p.add_argument("--model", help="group by the model's tensors (ZOO:NAME); default: one group per stage")
    lr_p.add_argument("--lr", type=float, help="base lr (default: the recipe's optimizer lr)")
    lr_p.add_argument("--every", type=int, help="a row every N steps (default: every epoch)")
    lr_p.add_argument("--png", help="also write the plot to this PNG file")
    lr_p.add_argument("--log", action="store_true", help="log-scale lr axis in the PNG")
    lr_p.add_argument("--input-size", type=int)
    lr_p.set_defaults(func=_lr_plot_command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"tunespec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
