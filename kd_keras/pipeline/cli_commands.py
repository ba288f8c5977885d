"""`kd-keras export`, `kd-keras bench` and `kd-keras run`: argument wiring for
`kd_keras.cli`, which calls `register(subparsers)`.

Example:

```
kd-keras run examples/digits.yaml
kd-keras export runs/digits/distill/student.keras --format tflite --out student.tflite
kd-keras bench student.tflite student.onnx --data digits --threads 1 2
```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Adds the `export`, `bench` and `run` sub-commands."""
    run = subparsers.add_parser(
        "run",
        help="distill -> prune -> quantize -> export -> benchmark from one YAML file",
        description="Runs every unfinished stage of a pipeline YAML file into its run "
        "folder; a re-run after a kill resumes where it stopped.",
    )
    run.add_argument("config", help="pipeline YAML file")
    run.add_argument("--run-dir", help="override the file's run_dir")
    run.set_defaults(func=_run)

    export = subparsers.add_parser(
        "export",
        help="export a .keras model to TFLite / ONNX / SavedModel with a parity check",
    )
    export.add_argument("model", help=".keras file")
    export.add_argument("--format", choices=("tflite", "onnx", "saved_model"), default="tflite")
    export.add_argument("--out", required=True, help="output file (folder for saved_model)")
    export.add_argument(
        "--quantization", choices=("dynamic", "int8", "float16"), help="TFLite only"
    )
    export.add_argument(
        "--data",
        help="calibration / parity inputs: digits, fashion_mnist or a .npz with x_train, x_test",
    )
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    export.add_argument("--atol", type=float, help="float parity bound (default 1e-4)")
    export.add_argument(
        "--min-top1", type=float, help="quantized parity bound, top-1 agreement (default 0.99)"
    )
    export.add_argument(
        "--no-strict", action="store_true", help="write the file even when parity fails"
    )
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=_export)

    bench = subparsers.add_parser(
        "bench", help="latency, size, MACs and accuracy of exported models, side by side"
    )
    bench.add_argument("artifacts", nargs="+", help=".tflite / .onnx / .keras files")
    bench.add_argument("--data", help="evaluation set: digits, fashion_mnist or a .npz")
    bench.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    bench.add_argument(
        "--no-xnnpack", action="store_true", help="also measure LiteRT without XNNPACK"
    )
    bench.add_argument("--runs", type=int, default=100)
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--out", help="write report.md, report.json, frontier.png here")
    bench.add_argument("--overwrite", action="store_true")
    bench.set_defaults(func=_bench)


def _data(name: str | None):
    if name is None:
        return None
    from kd_keras.pipeline.stages import load_data

    if name.endswith(".npz"):
        return load_data({"name": "npz", "path": name})
    return load_data({"name": name, "test_fraction": 0.25})


def _run(args: argparse.Namespace) -> int:
    from kd_keras.pipeline.config import ConfigError, load_config
    from kd_keras.pipeline.stages import Pipeline

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"kd-keras run: {err}", file=sys.stderr)
        return 2
    results = Pipeline(config, run_dir=args.run_dir).run()
    print(f"report: {results['bench'].get('markdown')}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    import keras

    from kd_keras import export

    model = keras.saving.load_model(args.model)
    data = _data(args.data)
    x_train, x_test = (data[0][0], data[1][0]) if data else (None, None)
    if args.quantization == "int8" and x_train is None:
        print("kd-keras export: --quantization int8 needs --data for calibration.", file=sys.stderr)
        return 2
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
                representative_data=x_train[:256] if x_train is not None else None,
                min_top1_agreement=args.min_top1,
                **common,
            )
        elif args.format == "onnx":
            report = export.to_onnx(model, args.out, opset=args.opset, **common)
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
    except FileExistsError as err:
        print(f"kd-keras export: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.passed else 1


def _bench(args: argparse.Namespace) -> int:
    from kd_keras.bench import benchmark

    data = _data(args.data)
    x_test, y_test = data[1] if data else (None, None)
    report = benchmark(
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
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
