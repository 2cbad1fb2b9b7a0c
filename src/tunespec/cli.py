"""tunespec's command line: look at a recipe's effect before training.

    tunespec groups --model ZOO:NAME               the groups and presets a recipe can name
    tunespec plan RECIPE --model ZOO:NAME          what a recipe does to a model
    tunespec diff RECIPE --a ZOO:NAME --b ZOO:NAME  where two models' plans differ
    tunespec port SRC DST --from ZOO:NAME --to ZOO:NAME   convert weights between frameworks
    tunespec convert --from mmengine CONFIG [--out RECIPE.yaml]   a peer's config as a recipe
    tunespec lr-plot RECIPE --epochs N [--model ZOO:NAME] [--png FILE]   each group's lr over a run

ZOO is a model zoo a backend builds from offline (see each backend's facts) or a Python module.
``tunespec COMMAND --help`` explains each command; ``python -m tunespec`` is the same program.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
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
from tunespec.planning.model_groups import groups
from tunespec import __version__


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


def _groups_command(args: argparse.Namespace) -> int:
    info = groups(build_model(args.model, args.input_size), backend=args.backend)
    if args.json:
        print(json.dumps(dataclasses.asdict(info), indent=2))
    else:
        print(info)
    return 0


def _plan_command(args: argparse.Namespace) -> int:
    model = build_model(args.model, args.input_size)
    p = plan(model, args.recipe, backend=args.backend, strict=False if args.no_strict else None)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    elif args.summary:
        print(p.summary_table(lr=args.lr, weight_decay=args.weight_decay))
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
    if args.png:
        check_png_path(args.png)  # before anything is computed or written
    recipe = load_recipe(args.recipe)
    trainable = None
    if args.model:
        trainable = stage_trainables(build_model(args.model, args.input_size), recipe, args.steps_per_epoch)
    timeline = lr_timeline(recipe, args.epochs, args.steps_per_epoch, trainable, lr=args.lr)
    if not args.model:
        timeline.notes.append(BASE_LR_NOTE)
    print(timeline.table(args.every))
    if args.png:
        title = f"{Path(args.recipe).name}: lr over {args.epochs} epochs"
        write_png(timeline, args.png, log=args.log, title=title,
                  ylabel="effective lr" if args.model else "lr (base lr x schedule; lr_mult not applied)")
        print(f"wrote {args.png}")
    return 0


# Without a model there are no tensors to apply lr_mult/layer_decay to: say what the numbers are.
BASE_LR_NOTE = ("without --model each stage is one group at the base lr times the schedule and stage "
                "factors; lr_mult and layer_decay are not applied: pass --model ZOO:NAME for each "
                "group's effective lr")


def check_png_path(path: str) -> None:
    """SpecError unless matplotlib can write ``path``: a file name (not a directory) whose
    extension is a format matplotlib writes, in a folder that exists."""
    import matplotlib  # only lr-plot --png needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    formats = plt.FigureCanvasBase.get_supported_filetypes()
    if target.is_dir() or path.endswith(("/", "\\")):
        raise SpecError(f"--png {path!r}: is a directory; give a file name such as {str(target / 'lr.png')!r}")
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise SpecError(f"--png {path!r}: matplotlib cannot write {('.' + suffix) if suffix else 'a file without an extension'}; "
                        f"end the name with .png (or one of {', '.join('.' + f for f in sorted(formats))})")
    if not target.parent.is_dir():
        raise SpecError(f"--png {path!r}: the folder {str(target.parent)!r} does not exist")


def stage_trainables(model: Any, recipe: Any, steps_per_epoch: int) -> list[dict[str, float]]:
    """Per stage, the trainable parameters' names and lr multipliers its plan gives ``model``."""
    runner = StageRunner(recipe, steps_per_epoch)
    return [{d.name: d.lr_mult for d in plan(model, stage.spec, strict=False).trainable}
            for stage in runner.stages]


def write_png(timeline: Any, path: str, log: bool = False, title: str = "learning rate per group",
              ylabel: str = "effective lr") -> None:
    """The timeline as a line plot over epochs, each stage's start marked and named above the
    plot (so no label is clipped), the legend outside the axes (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    k = timeline.steps_per_epoch
    steps = timeline.points()  # at most MAX_POINTS per group, every stage change included
    epochs = [t / k for t in steps] + [timeline.steps / k]  # the last lr holds to the end
    for label, values in timeline.series.items():
        ys = [float("nan") if values[t] is None else values[t] for t in steps]
        ax.plot(epochs, ys + ys[-1:], label=label, drawstyle="steps-post")
    ax.set_xlim(0, timeline.steps / k)
    for start, name in timeline.starts:
        if start:
            ax.axvline(start / k, color="grey", linestyle=":")
        ax.annotate(f"{name}", (start / k, 1.0), xycoords=("data", "axes fraction"), xytext=(2, 4),
                    textcoords="offset points", va="bottom", ha="left", fontsize=8, color="dimgrey",
                    annotation_clip=False)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(f"epoch ({k} optimizer step{'s' if k != 1 else ''} per epoch)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=18)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise SpecError(f"--png {path!r}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; wider option column, so help lines stay readable."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _command(sub: Any, name: str, summary: str, example: str, func: Any) -> argparse.ArgumentParser:
    zoo_names = " or ".join(zoos()) or "no zoo is registered"
    parser = sub.add_parser(name, help=summary, description=f"{summary}.\n\nexample:\n  {example}\n"
                            f"(ZOO: {zoo_names})", formatter_class=_Formatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``tunespec --help``), every argument with its help text."""
    parser = argparse.ArgumentParser(prog="tunespec", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"tunespec {__version__}",
                        help="print tunespec's version and exit")
    model_help = " or ".join([*(f"{z}:NAME" for z in zoos()), "module.path:factory"])
    size_help = "input size in pixels, where a zoo infers shapes by one forward pass (Gluon)"
    recipe_help = "recipe file (.yaml, .json or .toml)"
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    groups_p = _command(sub, "groups", "list a model's groups, presets and layer kinds, with what each selects",
                        "tunespec groups --model ZOO:resnet18", _groups_command)
    groups_p.add_argument("--model", required=True, metavar="ZOO:NAME", help=f"the model: {model_help}")
    groups_p.add_argument("--backend", choices=list(registered()),
                        help="fail unless the model is of this framework")
    groups_p.add_argument("--json", action="store_true", help="print the listing as JSON")
    groups_p.add_argument("--input-size", type=int, metavar="PIXELS", help=size_help)

    plan_p = _command(sub, "plan", "print the plan a recipe makes for a model",
                      "tunespec plan examples/resnet_finetune.yaml --model ZOO:resnet18 --summary --lr 0.01",
                      _plan_command)
    plan_p.add_argument("recipe", help=recipe_help)
    plan_p.add_argument("--model", required=True, metavar="ZOO:NAME", help=f"the model: {model_help}")
    plan_p.add_argument("--backend", choices=list(registered()),
                        help="fail unless the model is of this framework")
    plan_p.add_argument("--full", action="store_true", help="one row per tensor (default: rows collapsed by module)")
    plan_p.add_argument("--summary", action="store_true",
                        help="one row per optimizer group: tensors, parameters, lr, wd")
    plan_p.add_argument("--lr", type=float, help="with --summary: the base lr, to show each group's own")
    plan_p.add_argument("--weight-decay", type=float, help="with --summary: the base weight decay")
    plan_p.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan_p.add_argument("--no-strict", action="store_true", help="rules matching nothing only warn")
    plan_p.add_argument("--input-size", type=int, metavar="PIXELS", help=size_help)

    diff_p = _command(sub, "diff", "show where one recipe's plans for two models differ",
                      "tunespec diff recipe.yaml --a ZOO:resnet18 --b OTHER_ZOO:resnet18_v1b", _diff_command)
    diff_p.add_argument("recipe", help=recipe_help)
    diff_p.add_argument("--a", required=True, metavar="ZOO:NAME", help=f"first model: {model_help}")
    diff_p.add_argument("--b", required=True, metavar="ZOO:NAME", help="second model, e.g. the same network from another zoo")
    diff_p.add_argument("--input-size", type=int, metavar="PIXELS", help=size_help)

    port_p = _command(sub, "port", "convert weights between frameworks (one zoo's model to its twin in another)",
                      "tunespec port r18.pt r18.params --from ZOO:resnet18 --to OTHER_ZOO:resnet18_v1b",
                      _port_command)
    port_p.add_argument("src", help="weights of --from, in its framework's own format")
    port_p.add_argument("dst", help="where to write the weights of --to")
    port_p.add_argument("--from", dest="from_model", required=True, metavar="ZOO:NAME", help="the model SRC belongs to")
    port_p.add_argument("--to", dest="to_model", required=True, metavar="ZOO:NAME", help="the model DST is written for")
    port_p.add_argument("--no-strict", action="store_true", help="copy what matches, report the rest")
    port_p.add_argument("--allow-pickle", action="store_true",
                        help="read a SRC that needs pickle (runs code from the file: trusted files only)")
    port_p.add_argument("--input-size", type=int, metavar="PIXELS", help=size_help)

    convert_p = _command(sub, "convert", "write a peer's fine-tuning config as a tunespec recipe",
                         "tunespec convert --from mmengine config.json --out recipe.yaml", _convert_command)
    convert_p.add_argument("config", help="MMEngine config (.json, .yaml; .py with --exec-config)")
    convert_p.add_argument("--from", dest="source", required=True, choices=["mmengine"],
                           help="whose config it is")
    convert_p.add_argument("--out", help="recipe file to write (default: print it)")
    convert_p.add_argument("--exec-config", action="store_true",
                           help="read a .py config with mmengine's Config (runs its code: trusted files only)")

    lr_p = _command(sub, "lr-plot", "print (and plot) each group's lr over a run, with the stage changes",
                    "tunespec lr-plot examples/two_phase.yaml --epochs 6 --model ZOO:resnet18 --png lr.png",
                    _lr_plot_command)
    lr_p.add_argument("recipe", help=recipe_help)
    lr_p.add_argument("--epochs", type=int, required=True, metavar="N", help="how many epochs to show")
    lr_p.add_argument("--steps-per-epoch", type=int, default=1, metavar="N",
                      help="optimizer steps per epoch (default 1)")
    lr_p.add_argument("--model", metavar="ZOO:NAME", help=f"group by the model's tensors, with their lr_mult ({model_help}); "
                                      f"default: one group per stage at the base lr")
    lr_p.add_argument("--lr", type=float, help="base lr (default: the recipe's optimizer lr)")
    lr_p.add_argument("--every", type=int, metavar="N", help="a row every N steps (default: every epoch)")
    lr_p.add_argument("--png", metavar="FILE", help="also write the plot to this image file (.png, .svg, .pdf, ...)")
    lr_p.add_argument("--log", action="store_true", help="log-scale lr axis in the image")
    lr_p.add_argument("--input-size", type=int, metavar="PIXELS", help=size_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a SpecError, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"tunespec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
