"""Argument types, defaults and checks of the `kd-keras` command line.

Nothing here imports Keras, TensorFlow or the rest of kd_keras but
`kd_keras.defaults` (which imports nothing): the parser is built from this
module alone, so `kd-keras --help` answers at once. The soft-target defaults
are the library's own; the other defaults mirror the library's (`kd_keras.demo`,
`kd_keras.pipeline.steps`), and tests/test_cli.py holds them equal, so the two
cannot drift apart.

Example:

```python
from kd_keras.cli import args

args.positive_int("3")  # 3
args.check_output_file("student.tflite", ".tflite", overwrite=False)
```
"""

from __future__ import annotations

import argparse
import math
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

# Soft-target defaults, the library's own (a module that imports nothing); the
# parser reads them as `args.DEFAULT_TEMPERATURE` and so on.
from kd_keras.defaults import (  # noqa: F401
    DEFAULT_ALPHA,
    DEFAULT_QAT_ALPHA,
    DEFAULT_QAT_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    DEMO_ALPHA,
    DEMO_TEMPERATURE,
    PTQ_MODES,
)

# Soft-target defaults, shared with the library (a module with no imports).

# `kd-keras demo`: kd_keras.demo.EPOCHS, TEACHER_EPOCHS, SEED, BATCH_SIZE and
# its two output names (TEMPERATURE and ALPHA: DEMO_* above).
DEMO_EPOCHS = 30
DEMO_TEACHER_EPOCHS = 30
DEMO_SEED = 0
DEMO_BATCH_SIZE = 32
DEMO_OUTPUTS = ("demo.json", "demo_curves.png")

# `distill / prune / quantize`: kd_keras.pipeline.steps's names and defaults.
BUILDERS = ("cnn_teacher", "cnn_student")
LR_SCHEDULES = ("hold-cosine", "constant")

# `export`: kd_keras.export.onnx.DEFAULT_OPSET; 9 is onnxruntime's oldest.
DEFAULT_OPSET = 17
MIN_OPSET = 9

# `bench --out`: what `BenchmarkReport.save` writes into the folder.
BENCH_OUTPUTS = ("report.md", "report.json", "frontier.png")
ARTIFACT_SUFFIXES = (".tflite", ".onnx", ".keras")

DATA_HELP = (
    "digits, fashion_mnist, a .npz with x_train, y_train, x_test, y_test, or an image "
    "folder (<class>/<images>, optionally under train/ and test/)"
)


class UsageError(ValueError):
    """A user's mistake found by the command line: printed as one line, exit code 2."""


def number(text: str, kind: type, ok: Callable[[float], bool], requirement: str):
    """`text` as `kind` if `ok(value)`, else an `ArgumentTypeError` naming `requirement`."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and math.isnan(value)) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def positive_int(text: str) -> int:
    return number(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return number(text, float, lambda v: v > 0, "a number > 0")


def unit_float(text: str) -> float:
    return number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def sparsity(text: str) -> float:
    return number(text, float, lambda v: 0.0 <= v < 1.0, "a fraction of zeros in [0, 1)")


def ramp(text: str) -> float:
    return number(text, float, lambda v: 0.0 < v <= 1.0, "a fraction of the steps in (0, 1]")


def opset(text: str) -> int:
    return number(
        text, int, lambda v: v >= MIN_OPSET, f"an ONNX opset >= {MIN_OPSET} (onnxruntime's oldest)"
    )


def m_by_n(text: str) -> tuple[int, int]:
    """`"2:4"` -> `(2, 4)`; the same rule as `kd_keras.pipeline.steps.parse_m_by_n`."""
    m, sep, n = text.partition(":")
    try:
        pair = (int(m), int(n)) if sep else None
    except ValueError:
        pair = None
    if pair is None or not 1 <= pair[0] < pair[1]:
        raise argparse.ArgumentTypeError(
            f"m_by_n must be 'M:N' with 1 <= M < N (e.g. 2:4), got {text!r}"
        )
    return pair


def check_input_file(path: str, flag: str, suffixes: Iterable[str] = (".keras",)) -> Path:
    """Refuses a missing `path`, a wrong suffix, and a `.keras` file that is
    not a Keras archive (Keras itself would say "File not found")."""
    file = Path(path)
    suffixes = tuple(suffixes)
    if not file.is_file():
        what = "a folder" if file.is_dir() else "no such file"
        raise UsageError(f"{flag} {path}: {what}; give an existing {' / '.join(suffixes)} file.")
    if file.suffix not in suffixes:
        raise UsageError(f"{flag} {path}: expected a {' / '.join(suffixes)} file.")
    if file.suffix == ".keras" and not _is_keras_archive(file):
        raise UsageError(
            f"{flag} {path}: not a Keras archive (a .keras file is a zip holding config.json, "
            "written by model.save('name.keras')); the file may be truncated or in another "
            "format: re-save the model."
        )
    return file


def _is_keras_archive(file: Path) -> bool:
    if not zipfile.is_zipfile(file):
        return False
    try:
        with zipfile.ZipFile(file) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def check_output_file(path: str, suffix: str | None, overwrite: bool) -> Path:
    """Refuses `--out path` with another suffix, an existing path (unless
    `overwrite`) and a missing parent folder, before any work."""
    out = Path(path)
    if suffix is not None and out.suffix != suffix:
        raise UsageError(f"--out {path}: the output must be a {suffix} file.")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {path} exists; pass --overwrite to replace it.")
    if not out.parent.is_dir():
        raise UsageError(f"--out {path}: folder {out.parent} does not exist; create it first.")
    return out


def check_output_folder(path: str, names: Iterable[str], overwrite: bool) -> Path:
    """Refuses `--out DIR` when it is a file, or (unless `overwrite`) when any
    of the files the command writes there already exists: nothing is run, so
    the folder never ends up with old and new files mixed."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {path} is a file; give a folder (it is created if missing).")
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise UsageError(
            f"--out {path} already holds {', '.join(existing)}; pass --overwrite to replace "
            "them, or choose another folder."
        )
    return folder


def check_files(args: argparse.Namespace) -> None:
    """The checks of `args.command` that need no model, data or framework:
    input files exist, outputs are new (or `--overwrite`), options agree.
    Run before anything is imported or trained, so a mistake costs nothing."""
    command = args.command
    if command == "demo" and args.out is not None:
        check_output_folder(args.out, DEMO_OUTPUTS, args.overwrite)
    elif command == "distill":
        check_output_file(args.out, ".keras", args.overwrite)
        check_input_file(args.teacher, "--teacher")
        if args.student:
            check_input_file(args.student, "--student")
    elif command == "prune":
        check_output_file(args.out, ".keras", args.overwrite)
        check_input_file(args.model, "model")
        if args.teacher:
            check_input_file(args.teacher, "--teacher")
    elif command == "quantize":
        _check_quantize(args)
    elif command == "export":
        _check_export(args)
    elif command == "bench":
        for artifact in args.artifacts:
            check_input_file(artifact, "artifact", ARTIFACT_SUFFIXES)
        if args.out is not None:
            check_output_folder(args.out, BENCH_OUTPUTS, args.overwrite)


def _check_quantize(args: argparse.Namespace) -> None:
    check_output_file(args.out, ".tflite", args.overwrite)
    check_input_file(args.model, "model")
    if args.method == "qat" and args.mode != "int8":
        raise UsageError(
            f"--method qat trains int8 ranges and writes an int8 model; --mode {args.mode} "
            f"is a post-training mode: use --method ptq --mode {args.mode}."
        )
    if args.teacher:
        if args.method != "qat":
            raise UsageError(
                "--teacher distills during QAT training; --method ptq does not train. "
                "Add --method qat, or drop --teacher."
            )
        check_input_file(args.teacher, "--teacher")


def _check_export(args: argparse.Namespace) -> None:
    suffix = {"tflite": ".tflite", "onnx": ".onnx", "saved_model": None}[args.format]
    check_output_file(args.out, suffix, args.overwrite)
    check_input_file(args.model, "model")
    tflite_only = {
        "--quantization": args.quantization,
        "--tflite-batch": args.tflite_batch,
        "--min-top1": args.min_top1,
        "--strip-strings": args.strip_strings or None,
    }
    given = [flag for flag, value in tflite_only.items() if value is not None]
    if args.format != "tflite" and given:
        raise UsageError(
            f"{', '.join(given)} only apply to --format tflite; drop them for --format "
            f"{args.format}."
        )
    if args.opset is not None and args.format != "onnx":
        raise UsageError(f"--opset applies to --format onnx only, not --format {args.format}.")
    if args.quantization == "int8" and args.data is None:
        raise UsageError(
            "--quantization int8 calibrates on sample inputs: add --data (e.g. --data digits)."
        )
