"""The bodies of the `kd-keras` sub-commands: `COMMANDS[name](args)`.

`kd_keras.cli.main` imports this module only once a command runs (it loads
Keras and its backend) and after `kd_keras.cli.args.check_files` has checked
the files in and out. The work itself is in `kd_keras.pipeline.steps`,
`kd_keras.export` and `kd_keras.bench`, shared with the pipeline's stages.

Example:

```python
from kd_keras.cli import build_parser, commands

args = build_parser().parse_args(["bench", "student.tflite", "--data", "digits"])
commands.COMMANDS[args.command](args)
```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras

# Any public name loads the whole API, which registers every kd_keras Keras
# class: the .keras files below may hold pruning, quantization or Distiller layers.
from kd_keras import Distiller, bench, demo, export  # noqa: F401
from kd_keras.cli.args import BENCH_OUTPUTS, UsageError
from kd_keras.pipeline import pipeline as one_pipeline
from kd_keras.pipeline import steps
from kd_keras.pipeline.config import ConfigError, load_config, read_yaml
from kd_keras.pipeline.pipeline import Pipeline
from kd_keras.pruning import sparsity_report


def run_demo(args: argparse.Namespace) -> int:
    demo.main(args)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        raw = read_yaml(args.config)
        if isinstance(raw, dict) and raw.get("task") == "text":
            return _run_text(args)
        config = load_config(args.config)
        results = Pipeline(config, run_dir=args.run_dir).run(args.rerun_from)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    print(f"report: {results['bench'].get('markdown')}", file=sys.stderr)
    return 0


def _run_text(args: argparse.Namespace) -> int:
    """`task: text` files are validated against the text schema."""
    results = one_pipeline.run_text_pipeline(args.config, args.run_dir, args.rerun_from)
    report = results.get("bench", {}).get("markdown") if isinstance(results, dict) else None
    if report:
        print(f"report: {report}", file=sys.stderr)
    return 0


def distill(args: argparse.Namespace) -> int:
    (xt, yt), (xe, ye) = _seeded_data(args)
    teacher = steps.load_model(args.teacher)
    if args.student:
        student = steps.load_model(args.student)
    else:
        student = steps.build_model(
            args.student_builder, xt.shape[1:], int(teacher.outputs[0].shape[-1])
        )
    fit = _fit_args(args, teacher)
    student, _ = steps.distill_student(student, fit.pop("teacher"), xt, yt, **fit)
    steps.save_model(student, args.out, overwrite=args.overwrite)
    _report_accuracy("teacher", teacher, xe, ye)
    _report_accuracy("student", student, xe, ye)
    print(f"wrote {args.out}")
    return 0


def prune(args: argparse.Namespace) -> int:
    (xt, yt), (xe, ye) = _seeded_data(args)
    pruned, stripped, _ = steps.prune_student(
        steps.load_model(args.model),
        xt,
        yt,
        final_sparsity=args.sparsity,
        m_by_n=args.m_by_n,
        filters=args.filters,
        ramp=args.ramp,
        lr_schedule=args.lr_schedule,
        log=lambda message: print(message, file=sys.stderr),
        **_fit_args(args, _teacher(args)),
    )
    print(sparsity_report(pruned))
    steps.save_model(stripped, args.out, overwrite=args.overwrite)
    _report_accuracy("pruned", stripped, xe, ye)
    print(f"wrote {args.out}")
    return 0


def quantize(args: argparse.Namespace) -> int:
    _require_tensorflow("TFLite conversion")
    out = Path(args.out)
    (xt, yt), (xe, ye) = _seeded_data(args)
    model = steps.load_model(args.model)
    if args.method == "qat":
        model, _ = steps.quantize_aware_train(model, xt, yt, **_fit_args(args, _teacher(args)))
        mode = "qat"
    else:
        mode = args.mode
    try:
        report = steps.export_tflite(
            model,
            out,
            mode,
            calibration=xt[: args.calibration_samples],
            sample_inputs=xe,
            overwrite=args.overwrite,
            **_layout(args),
        )
    except export.ParityError as err:
        print(
            f"kd-keras quantize: {err}\n{out} was not written (figures in {out}.parity.json).",
            file=sys.stderr,
        )
        return 1
    print(report.summary())
    _report_accuracy(f"{out.name}", str(out), xe, ye)
    print(f"wrote {out}")
    return 0


def export_model(args: argparse.Namespace) -> int:
    if args.format == "tflite":
        _require_tensorflow("TFLite conversion")
    elif args.format == "onnx" and not export.onnx_export_available():
        raise UsageError(
            f"ONNX export on the {keras.backend.backend()} backend needs its converter "
            "(pip install tf2onnx on TensorFlow); or run with KERAS_BACKEND=tensorflow."
        )
    data = _data(args.data)
    model = steps.load_model(args.model)
    x_train, x_test = (data[0][0], data[1][0]) if data else (None, None)
    common = {
        "sample_inputs": x_test,
        "overwrite": args.overwrite,
        "atol": args.atol,
        "strict": not args.no_strict,
    }
    try:
        if args.format == "tflite":
            report = export.to_tflite(
                model,
                args.out,
                quantization=args.quantization,
                # Calibration is for int8 only; the other modes refuse it.
                representative_data=x_train[:256] if args.quantization == "int8" else None,
                min_top1_agreement=args.min_top1,
                **common,
                **_layout(args),
            )
        elif args.format == "onnx":
            opset = {} if args.opset is None else {"opset": args.opset}
            report = export.to_onnx(model, args.out, **opset, **common)
        else:
            report = export.to_saved_model(model, args.out, **common)
    except export.ParityError as err:
        print(
            f"kd-keras export: {err}\n{args.out} was not written (the figures are in "
            f"{args.out}.parity.json); pass --no-strict to keep it anyway, or loosen "
            "--atol / --min-top1.",
            file=sys.stderr,
        )
        return 1
    print(report.summary())
    return 0 if report.passed else 1


def run_bench(args: argparse.Namespace) -> int:
    data = _data(args.data)
    x_test, y_test = data[1] if data else (None, None)
    report = bench.benchmark(
        {Path(a).name: a for a in args.artifacts},
        x_test,
        y_test,
        threads=args.threads,
        xnnpack=(True, False) if args.no_xnnpack else (True,),
        runs=args.runs,
        warmup=args.warmup,
        command=" ".join(["kd-keras", *sys.argv[1:]]),
    )
    report.print_table()
    if args.out:
        paths = report.save(args.out, overwrite=args.overwrite)
        # With --overwrite, a report file this run did not write (no frontier
        # without accuracy) would sit beside new ones as if it belonged to them.
        written = {Path(p).name for p in paths.values()}
        for name in BENCH_OUTPUTS:
            stale = Path(args.out, name)
            if name not in written and stale.exists():
                stale.unlink()
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


COMMANDS = {
    "demo": run_demo,
    "run": run,
    "distill": distill,
    "prune": prune,
    "quantize": quantize,
    "export": export_model,
    "bench": run_bench,
}


def _require_tensorflow(what: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise UsageError(
            f"{what} needs the TensorFlow backend, this process runs "
            f"KERAS_BACKEND={keras.backend.backend()}: run with KERAS_BACKEND=tensorflow."
        )


def _data(name: str | None, seed: int = 0):
    if name is None:
        return None
    try:
        spec = steps.data_spec(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return steps.load_data(spec, seed=seed)


def _seeded_data(args: argparse.Namespace):
    """The step's data, then the seed for its weights and shuffling."""
    data = _data(args.data, seed=args.seed)
    keras.utils.set_random_seed(args.seed)
    return data


def _fit_args(args: argparse.Namespace, teacher) -> dict:
    return {
        "teacher": teacher,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "alpha": args.alpha,
    }


def _teacher(args: argparse.Namespace):
    return steps.load_model(args.teacher) if args.teacher else None


def _layout(args: argparse.Namespace) -> dict:
    return {"batch_size": args.tflite_batch, "strip_strings": args.strip_strings}


def _report_accuracy(label: str, artifact, x, y) -> float:
    accuracy = bench.evaluate_accuracy(artifact, x, y)
    print(f"{label} test accuracy: {accuracy:.4f} ({len(y)} samples)")
    return accuracy
