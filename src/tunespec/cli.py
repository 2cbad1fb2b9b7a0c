"""``tunespec plan RECIPE --model ZOO:NAME``: print what a recipe does to a model."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence

from .dispatch import load_backend
from .errors import SpecError

# Model zoos the command line can build offline, and the backend that builds them.
ZOOS = {"torchvision": "torch", "gluoncv": "mxnet"}


def build_model(source: str, input_size: int | None = None) -> Any:
    """``torchvision:resnet18``, ``gluoncv:ssd_300_mobilenet0.25_voc`` or ``module.path:factory``."""
    zoo, sep, name = source.partition(":")
    if not sep or not name:
        raise SpecError(f"--model {source!r}: write ZOO:NAME, e.g. torchvision:resnet18, "
                        f"gluoncv:resnet18_v1b or my.module:make_model")
    if zoo in ZOOS:
        load_backend(ZOOS[zoo])  # a clear error when the framework is missing
        module = importlib.import_module(f"tunespec.backends.{ZOOS[zoo]}")
        if zoo == "gluoncv":
            return module.build_model(zoo, name, input_size)
        return module.build_model(zoo, name)
    try:
        factory = getattr(importlib.import_module(zoo), name)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"--model {source!r}: cannot load {name!r} from {zoo!r} ({exc})") from None
    return factory()


def _plan_command(args: argparse.Namespace) -> int:
    from .api import plan

    model = build_model(args.model, args.input_size)
    p = plan(model, args.recipe, backend=args.backend, strict=False if args.no_strict else None)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print(p.table(full=args.full))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunespec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plan_p = sub.add_parser("plan", help="print the plan a recipe makes for a model")
    plan_p.add_argument("recipe", help="recipe file (.yaml, .json, .toml)")
    plan_p.add_argument("--model", required=True,
                        help="torchvision:NAME, gluoncv:NAME or module.path:factory")
    plan_p.add_argument("--backend", choices=["torch", "mxnet"], help="check the model's framework")
    plan_p.add_argument("--full", action="store_true", help="one row per tensor (default: by module)")
    plan_p.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan_p.add_argument("--no-strict", action="store_true", help="rules matching nothing only warn")
    plan_p.add_argument("--input-size", type=int, help="GluonCV: input size for shape inference")
    plan_p.set_defaults(func=_plan_command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"tunespec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
