"""The `kd-keras` command line: argument wiring only, the work lives elsewhere.

Each sub-command sets `func` (called with the parsed `argparse.Namespace`,
returning an exit code or `None`) through `set_defaults`. Sub-commands of
later pipeline stages are added by `kd_keras.pipeline.cli_commands.register
(subparsers)` when that module exists.

Example:

```
kd-keras demo                      # digits: teacher / scratch / distilled table
kd-keras demo --epochs 40 --out runs/demo
kd-keras --version
```
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import kd_keras
from kd_keras import demo

# Optional module of another stage; absent until that stage lands.
PIPELINE_COMMANDS = "kd_keras.pipeline.cli_commands"


def _number(text: str, kind: type, ok: Callable[[float], bool], requirement: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def _unit_float(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="distill a CNN teacher into a small student on scikit-learn digits",
        description=(
            "Trains a CNN teacher, a student from scratch and a distilled student "
            "(soft targets from cached teacher logits) on scikit-learn's 8x8 digits, "
            "then prints held-out accuracy, parameters and train time of each."
        ),
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=demo.EPOCHS,
        help="epochs of each student (scratch and distilled) (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-epochs", type=_positive_int, default=demo.TEACHER_EPOCHS,
        help="epochs of the teacher (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=demo.SEED,
        help="seed of the split, the initial weights and shuffling (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature", type=_positive_float, default=demo.TEMPERATURE,
        help="soft-target temperature T (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha", type=_unit_float, default=demo.ALPHA,
        help="weight of the label cross-entropy; 1 - alpha weights distillation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=demo.BATCH_SIZE,
        help="batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR",
        help="folder for demo.json (figures, config, versions) and demo_curves.png",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace demo.json / demo_curves.png if they already exist in --out",
    )
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    demo.main(args)
    return 0


def _register_pipeline_commands(subparsers) -> None:
    try:
        module = importlib.import_module(PIPELINE_COMMANDS)
    except ModuleNotFoundError as err:
        # Only "the module is not there" is expected; a missing dependency
        # *inside* it is a real error and propagates.
        if err.name is not None and PIPELINE_COMMANDS.startswith(err.name):
            return
        raise
    register = getattr(module, "register", None)
    if register is not None:
        register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The full `kd-keras` parser, with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="kd-keras",
        description="Keras 3 model compression: distill, prune, quantize, export, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {kd_keras.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _register_pipeline_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kd-keras` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code = func(args)
    return 0 if code is None else int(code)


if __name__ == "__main__":
    sys.exit(main())
