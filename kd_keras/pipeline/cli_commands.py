"""`kd-keras run / distill / prune / quantize / export / bench`: argument
wiring for `kd_keras.cli`, which calls `register(subparsers)`. The work is in
`kd_keras.pipeline.steps`, shared with the pipeline's stages.

Example:

```
kd-keras run examples/digits.yaml
kd-keras distill --teacher t.keras --student-builder cnn_student --data digits \
    --epochs 10 --temperature 2 --alpha 0.5 --out student.keras
kd-keras prune student.keras --data digits --m-by-n 2:4 --teacher t.keras --out pruned.keras
kd-keras quantize pruned.keras --data digits --method qat --teacher t.keras \
    --out student_int8.tflite
kd-keras export runs/digits/distill/student.keras --format tflite --out student.tflite
kd-keras bench student.tflite student.onnx --data digits --threads 1 2
```
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from kd_keras.cli import _number, _positive_float, _positive_int, _unit_float
from kd_keras.pipeline import steps

TEXT_PIPELINE = "kd_keras.text.pipeline"
DATA_HELP = (
    "digits, fashion_mnist, a .npz with x_train, y_train, x_test, y_test, or an image "
    "folder (<class>/<images>, optionally under train/ and test/)"
)


class UsageError(ValueError):
    """A bad argument found before any work: printed, exit code 2."""


def _sparsity(text: str) -> float:
    return _number(text, float, lambda v: 0.0 <= v < 1.0, "a fraction of zeros in [0, 1)")


def _ramp(text: str) -> float:
    return _number(text, float, lambda v: 0.0 < v <= 1.0, "a fraction of the steps in (0, 1]")


def _m_by_n(text: str) -> tuple[int, int]:
    try:
        return steps.parse_m_by_n(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _input_file(path: str, flag: str) -> str:
    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file.")
    if not path.endswith(".keras"):
        raise UsageError(f"{flag} {path}: expected a .keras model file.")
    return path


def _output_file(path: str, suffix: str, overwrite: bool) -> Path:
    out = Path(path)
    if out.suffix != suffix:
        raise UsageError(f"--out {path}: the output must be a {suffix} file.")
    if out.exists() and not overwrite:
        raise UsageError(f"--out {path} exists; pass --overwrite to replace it.")
    if not out.parent.exists():
        raise UsageError(f"--out {path}: folder {out.parent} does not exist.")
    return out


def _add_training_args(
    parser,
    epochs: int,
    learning_rate: float,
    what: str,
    temperature: float = steps.DEFAULT_TEMPERATURE,
    alpha: float = steps.DEFAULT_ALPHA,
) -> None:
    parser.add_argument("--data", required=True, help=f"training and evaluation data: {DATA_HELP}")
    parser.add_argument(
        "--epochs", type=_positive_int, default=epochs, help=f"{what} (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=learning_rate,
        help="Adam learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=_positive_float,
        default=temperature,
        help="soft-target temperature when distilling (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=_unit_float,
        default=alpha,
        help="label weight when distilling; 1 - alpha weights the teacher (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split and weight seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _add_step_commands(subparsers) -> None:
    distill = subparsers.add_parser(
        "distill",
        help="distill a .keras teacher into a student (.keras or a builder)",
        description="Trains the student with soft targets from the frozen teacher "
        "(kd_keras.Distiller) and writes it as .keras.",
    )
    distill.add_argument("--teacher", required=True, help="teacher .keras file")
    student = distill.add_mutually_exclusive_group(required=True)
    student.add_argument("--student", help="student .keras file to start from")
    student.add_argument(
        "--student-builder", choices=steps.BUILDERS, help="build a fresh reference student"
    )
    distill.add_argument("--out", required=True, help="student .keras file to write")
    _add_training_args(distill, 10, 1e-3, "distillation epochs")
    distill.set_defaults(func=_step(_distill))

    prune = subparsers.add_parser(
        "prune",
        help="magnitude-prune a .keras model while fine-tuning (optionally distilling)",
        description="Prunes to --sparsity (polynomial schedule) or to an M:N pattern, "
        "fine-tuning on labels or from --teacher, and writes the stripped .keras model.",
    )
    prune.add_argument("model", help=".keras model to prune")
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("--sparsity", type=_sparsity, help="final fraction of zeros, e.g. 0.8")
    target.add_argument("--m-by-n", type=_m_by_n, help="structured M zeros in N weights, e.g. 2:4")
    target.add_argument(
        "--filters", type=_sparsity, help="share of filters removed (smaller, faster), e.g. 0.5"
    )
    prune.add_argument("--teacher", help="teacher .keras file: distill while pruning")
    prune.add_argument("--out", required=True, help="pruned .keras file to write")
    prune.add_argument(
        "--ramp",
        type=_ramp,
        default=0.5,
        help="fraction of the steps that raise the sparsity; the rest recover (default: 0.5)",
    )
    prune.add_argument(
        "--lr-schedule",
        choices=steps.LR_SCHEDULES,
        default="hold-cosine",
        help="hold the rate during the ramp, then cosine-decay it (default: %(default)s)",
    )
    _add_training_args(prune, 2, 1e-3, "pruning epochs")
    prune.set_defaults(func=_step(_prune))

    quantize = subparsers.add_parser(
        "quantize",
        help="quantize a .keras model into a parity-checked .tflite (PTQ or QAT)",
        description="ptq: post-training quantization (dynamic / int8 calibrated on "
        "--data / float16). qat: quantization-aware training (optionally distilled from "
        "--teacher), converted to a fully int8 .tflite (int8 input and output).",
    )
    quantize.add_argument("model", help=".keras model to quantize")
    quantize.add_argument("--method", choices=("ptq", "qat"), default="ptq")
    quantize.add_argument(
        "--mode", choices=steps.PTQ_MODES, default="int8", help="(default: %(default)s)"
    )
    quantize.add_argument("--teacher", help="teacher .keras file: QAT with distillation")
    quantize.add_argument(
        "--calibration-samples",
        type=_positive_int,
        default=256,
        help="training inputs that calibrate PTQ int8 (default: %(default)s)",
    )
    quantize.add_argument("--out", required=True, help=".tflite file to write")
    _add_layout_args(quantize)
    _add_training_args(
        quantize,
        2,
        1e-4,
        "QAT epochs",
        temperature=steps.DEFAULT_QAT_TEMPERATURE,
        alpha=steps.DEFAULT_QAT_ALPHA,
    )
    quantize.set_defaults(func=_step(_quantize))


def _add_layout_args(parser) -> None:
    """The .tflite layout options of `kd_keras.quantization.convert`."""
    parser.add_argument(
        "--tflite-batch",
        type=_positive_int,
        metavar="N",
        help="fix the .tflite's batch size (static shapes; 1 is what a phone app runs)",
    )
    parser.add_argument(
        "--strip-strings",
        action="store_true",
        help="drop tensor names and signatures from the .tflite (smaller file)",
    )


def _layout(args) -> dict:
    return {"batch_size": args.tflite_batch, "strip_strings": args.strip_strings}


def _step(command):
    """Runs `command(args)`, turning a `UsageError` into a message and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except UsageError as err:
            print(f"kd-keras {args.command}: {err}", file=sys.stderr)
            return 2

    return run


def _load_step_data(args):
    return _data(args.data, seed=args.seed)


def _fit_args(args, teacher):
    return {
        "teacher": teacher,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "alpha": args.alpha,
    }


def _checked_files(args, suffix: str, inputs: dict[str, str | None]) -> Path:
    """`--out` (new, with `suffix`) and each given input file (label -> path;
    `None` for an option not given), checked before any work."""
    out = _output_file(args.out, suffix, args.overwrite)
    for label, path in inputs.items():
        if path:
            _input_file(path, label)
    return out


def _seeded_data(args):
    """The step's data, then the seed for its weights and shuffling."""
    import keras

    data = _load_step_data(args)
    keras.utils.set_random_seed(args.seed)
    return data


def _teacher(args):
    return steps.load_model(args.teacher) if args.teacher else None


def _report_accuracy(label: str, artifact, x, y) -> float:
    from kd_keras.bench import evaluate_accuracy

    accuracy = evaluate_accuracy(artifact, x, y)
    print(f"{label} test accuracy: {accuracy:.4f} ({len(y)} samples)")
    return accuracy


def _distill(args: argparse.Namespace) -> int:
    out = _checked_files(args, ".keras", {"--teacher": args.teacher, "--student": args.student})
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
    steps.save_model(student, out, overwrite=args.overwrite)
    _report_accuracy("teacher", teacher, xe, ye)
    _report_accuracy("student", student, xe, ye)
    print(f"wrote {out}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from kd_keras.pruning import sparsity_report

    out = _checked_files(args, ".keras", {"model": args.model, "--teacher": args.teacher})
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
    steps.save_model(stripped, out, overwrite=args.overwrite)
    _report_accuracy("pruned", stripped, xe, ye)
    print(f"wrote {out}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    import keras

    out = _checked_files(args, ".tflite", {"model": args.model})
    if args.method == "qat" and args.mode != "int8":
        raise UsageError(
            f"--method qat trains int8 ranges and writes an int8 model; --mode {args.mode} "
            "is a post-training mode: use --method ptq --mode " + args.mode + "."
        )
    if args.teacher:
        if args.method != "qat":
            raise UsageError(
                "--teacher distills during QAT training; --method ptq does not train. "
                "Add --method qat, or drop --teacher."
            )
        _input_file(args.teacher, "--teacher")
    if keras.backend.backend() != "tensorflow":
        raise UsageError(
            "TFLite conversion needs the TensorFlow backend: run with KERAS_BACKEND=tensorflow."
        )
    from kd_keras.export import ParityError

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
    except ParityError as err:
        print(
            f"kd-keras quantize: {err}\n{out} was not written (figures in {out}.parity.json).",
            file=sys.stderr,
        )
        return 1
    print(report.summary())
    _report_accuracy(f"{out.name}", str(out), xe, ye)
    print(f"wrote {out}")
    return 0


def register(subparsers) -> None:
    """Adds the `run`, `distill`, `prune`, `quantize`, `export` and `bench` sub-commands."""
    run = subparsers.add_parser(
        "run",
        help="distill -> prune -> quantize -> export -> benchmark from one YAML file",
        description="Runs every unfinished stage of a pipeline YAML file into its run "
        "folder; a re-run after a kill resumes where it stopped.",
    )
    run.add_argument("config", help="pipeline YAML file")
    run.add_argument("--run-dir", help="override the file's run_dir")
    run.add_argument(
        "--rerun-from",
        metavar="STAGE",
        help="run this stage and every later one again (after a config change); their "
        "old outputs are moved to RUN_DIR/.replaced/<time>/",
    )
    run.set_defaults(func=_run)
    _add_step_commands(subparsers)

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
    _add_layout_args(export)
    export.set_defaults(func=_step(_export))

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
    bench.set_defaults(func=_step(_bench))


def _data(name: str | None, seed: int = 0):
    if name is None:
        return None
    try:
        spec = steps.data_spec(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return steps.load_data(spec, seed=seed)


def _run(args: argparse.Namespace) -> int:
    from kd_keras.pipeline.config import ConfigError, load_config, read_yaml
    from kd_keras.pipeline.stages import Pipeline

    try:
        raw = read_yaml(args.config)
        if isinstance(raw, dict) and raw.get("task") == "text":
            return _run_text(args)
        config = load_config(args.config)
    except ConfigError as err:
        print(f"kd-keras run: {err}", file=sys.stderr)
        return 2
    try:
        results = Pipeline(config, run_dir=args.run_dir).run(args.rerun_from)
    except ConfigError as err:
        print(f"kd-keras run: {err}", file=sys.stderr)
        return 2
    print(f"report: {results['bench'].get('markdown')}", file=sys.stderr)
    return 0


def _run_text(args: argparse.Namespace) -> int:
    """`task: text` files belong to the text pipeline, which validates them."""
    try:
        module = importlib.import_module(TEXT_PIPELINE)
    except ModuleNotFoundError as err:
        if err.name is None or not TEXT_PIPELINE.startswith(err.name):
            raise  # a dependency missing inside the module is a real error
        print(
            f"kd-keras run: {args.config} has 'task: text', which needs the text "
            f"pipeline module {TEXT_PIPELINE}; it is not part of this install. Update "
            "kd_keras, or run an image pipeline (no task key, or task: image).",
            file=sys.stderr,
        )
        return 2
    from kd_keras.pipeline.config import ConfigError

    try:
        results = module.run_text_pipeline(args.config, args.run_dir, args.rerun_from)
    except ConfigError as err:
        print(f"kd-keras run: {err}", file=sys.stderr)
        return 2
    report = results.get("bench", {}).get("markdown") if isinstance(results, dict) else None
    if report:
        print(f"report: {report}", file=sys.stderr)
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
                **_layout(args),
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
