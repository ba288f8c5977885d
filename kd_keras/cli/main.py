"""The `kd-keras` parser and entry point.

Building the parser and answering `--help` import nothing but the standard
library and `kd_keras.cli.args`; Keras (and with it TensorFlow, JAX or torch)
loads only once a sub-command runs, with TensorFlow's C++ start-up lines
silenced unless `--verbose`. A user's mistake is one line on stderr and exit
code 2, found before any model is loaded.

Example:

```
kd-keras demo                      # digits: teacher / scratch / distilled table
kd-keras run examples/digits.yaml
kd-keras distill --teacher t.keras --student-builder cnn_student --data digits \
    --epochs 10 --temperature 2 --alpha 0.5 --out student.keras
kd-keras prune student.keras --data digits --m-by-n 2:4 --teacher t.keras --out pruned.keras
kd-keras quantize pruned.keras --data digits --method qat --teacher t.keras \
    --out student_int8.tflite
kd-keras export runs/digits/distill/student.keras --format tflite --out student.tflite
kd-keras bench student.tflite student.onnx --data digits --threads 1 2
kd-keras --version
```
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import kd_keras
from kd_keras.cli import args as cli_args
from kd_keras.cli.args import UsageError
from kd_keras.native_logs import filtered_native_logs


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as one line (what is wrong, where to look)
    instead of argparse's usage block; exit code 2 as before."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full `kd-keras` parser, with every sub-command."""
    parser = _Parser(
        prog="kd-keras",
        description="Keras 3 model compression: distill, prune, quantize, export, benchmark.",
        epilog="`kd-keras COMMAND --help` describes each command's options.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {kd_keras.__version__}",
        help="print the kd_keras version and exit",
    )
    _add_verbose(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_demo(subparsers)
    _add_run(subparsers)
    _add_distill(subparsers)
    _add_prune(subparsers)
    _add_quantize(subparsers)
    _add_export(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kd-keras` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        cli_args.check_files(args)
        with _native_logs(args.verbose):
            from kd_keras.cli import commands  # Keras and its backend load here

            code = commands.COMMANDS[args.command](args)
    except UsageError as err:
        print(f"kd-keras {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kd-keras {args.command}: interrupted.", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


@contextlib.contextmanager
def _native_logs(verbose: bool) -> Iterator[None]:
    """TensorFlow's C++ log lines shown with `verbose`, else filtered out
    (`kd_keras.native_logs`): the command's own messages and any error still
    reach the terminal as they are written."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    if verbose:
        yield
        return
    with filtered_native_logs():
        yield


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show TensorFlow's C++ log lines (hidden by default)",
    )


def _command(subparsers, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=summary, description=description)
    # SUPPRESS: `kd-keras -v CMD` must not be reset by the sub-command's default.
    _add_verbose(parser, default=argparse.SUPPRESS)
    return parser


def _overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def _add_demo(subparsers) -> None:
    parser = _command(
        subparsers,
        "demo",
        "distill a CNN teacher into a small student on scikit-learn digits",
        "Trains a CNN teacher, a student from scratch and a distilled student "
        "(soft targets from cached teacher logits) on scikit-learn's 8x8 digits, "
        "then prints held-out accuracy, parameters and train time of each.",
    )
    parser.add_argument(
        "--epochs",
        type=cli_args.positive_int,
        default=cli_args.DEMO_EPOCHS,
        help="epochs of each student (scratch and distilled) (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-epochs",
        type=cli_args.positive_int,
        default=cli_args.DEMO_TEACHER_EPOCHS,
        help="epochs of the teacher (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=cli_args.DEMO_SEED,
        help="seed of the split, the initial weights and shuffling (default: %(default)s)",
    )
    _add_soft_target_args(parser, cli_args.DEMO_TEMPERATURE, cli_args.DEMO_ALPHA)
    parser.add_argument(
        "--batch-size",
        type=cli_args.positive_int,
        default=cli_args.DEMO_BATCH_SIZE,
        help="batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for demo.json (figures, config, versions) and demo_curves.png",
    )
    _overwrite(parser, "demo.json / demo_curves.png in --out")


def _add_run(subparsers) -> None:
    parser = _command(
        subparsers,
        "run",
        "distill -> prune -> quantize -> export -> benchmark from one YAML file",
        "Runs every unfinished stage of a pipeline YAML file into its run folder; "
        "a re-run after a kill resumes where it stopped.",
    )
    parser.add_argument("config", help="pipeline YAML file (see examples/*.yaml)")
    parser.add_argument("--run-dir", help="override the file's run_dir")
    parser.add_argument(
        "--rerun-from",
        metavar="STAGE",
        help="run this stage and every later one again (after a config change); their "
        "old outputs are moved to RUN_DIR/.replaced/<time>/",
    )


def _add_soft_target_args(
    parser: argparse.ArgumentParser, temperature: float, alpha: float, when: str = ""
) -> None:
    """`--temperature` and `--alpha` of soft-target distillation."""
    parser.add_argument(
        "--temperature",
        type=cli_args.positive_float,
        default=temperature,
        help=f"soft-target temperature T{when} (default: %(default)s)",
    )
    parser.add_argument(
        "--alpha",
        type=cli_args.unit_float,
        default=alpha,
        help=f"weight of the label loss{when}; 1 - alpha weights the teacher's soft "
        "targets (default: %(default)s)",
    )


def _add_training_args(
    parser: argparse.ArgumentParser,
    epochs: int,
    learning_rate: float,
    what: str,
    temperature: float = cli_args.DEFAULT_TEMPERATURE,
    alpha: float = cli_args.DEFAULT_ALPHA,
) -> None:
    parser.add_argument(
        "--data", required=True, help=f"training and evaluation data: {cli_args.DATA_HELP}"
    )
    parser.add_argument(
        "--epochs",
        type=cli_args.positive_int,
        default=epochs,
        help=f"{what} (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=cli_args.positive_int,
        default=64,
        help="training batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=cli_args.positive_float,
        default=learning_rate,
        help="Adam learning rate (default: %(default)s)",
    )
    _add_soft_target_args(parser, temperature, alpha, when=" when distilling")
    parser.add_argument(
        "--seed", type=int, default=0, help="split and weight seed (default: %(default)s)"
    )
    _overwrite(parser, "--out")


def _add_layout_args(parser: argparse.ArgumentParser) -> None:
    """The .tflite layout options of `kd_keras.quantization.convert`."""
    parser.add_argument(
        "--tflite-batch",
        type=cli_args.positive_int,
        metavar="N",
        help="fix the .tflite's batch size (static shapes; 1 is what a phone app runs)",
    )
    parser.add_argument(
        "--strip-strings",
        action="store_true",
        help="drop tensor names and signatures from the .tflite (smaller file)",
    )


def _add_distill(subparsers) -> None:
    parser = _command(
        subparsers,
        "distill",
        "distill a .keras teacher into a student (.keras or a builder)",
        "Trains the student with soft targets from the frozen teacher "
        "(kd_keras.Distiller) and writes it as .keras.",
    )
    parser.add_argument("--teacher", required=True, help="teacher .keras file")
    student = parser.add_mutually_exclusive_group(required=True)
    student.add_argument("--student", help="student .keras file to start from")
    student.add_argument(
        "--student-builder", choices=cli_args.BUILDERS, help="build a fresh reference student"
    )
    parser.add_argument("--out", required=True, help="student .keras file to write")
    _add_training_args(parser, 10, 1e-3, "distillation epochs")


def _add_prune(subparsers) -> None:
    parser = _command(
        subparsers,
        "prune",
        "magnitude-prune a .keras model while fine-tuning (optionally distilling)",
        "Prunes to --sparsity (polynomial schedule), to an M:N pattern, or removes "
        "--filters (whole channels: a physically smaller model), fine-tuning on labels "
        "or from --teacher, and writes the stripped .keras model.",
    )
    parser.add_argument("model", help=".keras model to prune")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--sparsity", type=cli_args.sparsity, help="final fraction of zeros, e.g. 0.8"
    )
    target.add_argument(
        "--m-by-n", type=cli_args.m_by_n, help="structured M zeros in N weights, e.g. 2:4"
    )
    target.add_argument(
        "--filters",
        type=cli_args.sparsity,
        help="share of filters removed (a smaller, faster model), e.g. 0.5",
    )
    parser.add_argument("--teacher", help="teacher .keras file: distill while pruning")
    parser.add_argument("--out", required=True, help="pruned .keras file to write")
    parser.add_argument(
        "--ramp",
        type=cli_args.ramp,
        default=0.5,
        help="fraction of the steps that raise the sparsity; the rest recover (default: 0.5)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=cli_args.LR_SCHEDULES,
        default="hold-cosine",
        help="hold the rate during the ramp, then cosine-decay it (default: %(default)s)",
    )
    _add_training_args(parser, 2, 1e-3, "pruning epochs")


def _add_quantize(subparsers) -> None:
    parser = _command(
        subparsers,
        "quantize",
        "quantize a .keras model into a parity-checked .tflite (PTQ or QAT)",
        "ptq: post-training quantization (dynamic / int8 calibrated on --data / "
        "float16). qat: quantization-aware training (optionally distilled from "
        "--teacher), converted to a fully int8 .tflite (int8 input and output).",
    )
    parser.add_argument("model", help=".keras model to quantize")
    parser.add_argument(
        "--method",
        choices=("ptq", "qat"),
        default="ptq",
        help="ptq: convert the trained model; qat: fine-tune with fake quantization "
        "first (default: %(default)s)",
    )
    parser.add_argument(
        "--mode",
        choices=cli_args.PTQ_MODES,
        default="int8",
        help="post-training quantization: int8 weights and activations (calibrated), "
        "dynamic-range int8 weights, or float16 weights (default: %(default)s)",
    )
    parser.add_argument("--teacher", help="teacher .keras file: QAT with distillation")
    parser.add_argument(
        "--calibration-samples",
        type=cli_args.positive_int,
        default=256,
        help="training inputs that calibrate PTQ int8 (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help=".tflite file to write")
    _add_layout_args(parser)
    _add_training_args(
        parser,
        2,
        1e-4,
        "QAT epochs",
        temperature=cli_args.DEFAULT_QAT_TEMPERATURE,
        alpha=cli_args.DEFAULT_QAT_ALPHA,
    )


def _add_export(subparsers) -> None:
    parser = _command(
        subparsers,
        "export",
        "export a .keras model to TFLite / ONNX / SavedModel with a parity check",
        "Converts the model, runs the file on sample inputs and compares it with "
        "Keras (max |difference| for float files, top-1 agreement for quantized "
        "ones); the file is written only if they agree, with the figures in "
        "OUT.parity.json.",
    )
    parser.add_argument("model", help=".keras model to export")
    parser.add_argument(
        "--format",
        choices=("tflite", "onnx", "saved_model"),
        default="tflite",
        help="output format (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="file to write (.tflite, .onnx), or folder for saved_model",
    )
    parser.add_argument(
        "--quantization",
        choices=cli_args.PTQ_MODES,
        help="TFLite post-training quantization (default: none, float32)",
    )
    parser.add_argument(
        "--data",
        help="calibration and parity inputs: digits, fashion_mnist or a .npz with "
        "x_train, x_test (default: random inputs for parity)",
    )
    parser.add_argument(
        "--opset",
        type=cli_args.opset,
        help=f"ONNX opset (default: {cli_args.DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--atol", type=cli_args.positive_float, help="float parity bound (default: 1e-4)"
    )
    parser.add_argument(
        "--min-top1",
        type=cli_args.unit_float,
        help="quantized parity bound, top-1 agreement in [0, 1] (default: 0.99)",
    )
    parser.add_argument(
        "--no-strict", action="store_true", help="write the file even when parity fails"
    )
    _overwrite(parser, "--out")
    _add_layout_args(parser)


def _add_bench(subparsers) -> None:
    parser = _command(
        subparsers,
        "bench",
        "latency, size, MACs and accuracy of exported models, side by side",
        "Times each .tflite / .onnx / .keras file (invoke only, after warm-up; "
        "p50 / p90 / p99 per thread count), reads its size and MACs, and, with "
        "--data, its test accuracy; prints one table and optionally writes "
        "report.md, report.json and frontier.png.",
    )
    parser.add_argument("artifacts", nargs="+", help=".tflite / .onnx / .keras files")
    parser.add_argument(
        "--data", help="evaluation set for accuracy: digits, fashion_mnist or a .npz"
    )
    parser.add_argument(
        "--threads",
        type=cli_args.positive_int,
        nargs="+",
        default=[1, 2, 4],
        metavar="N",
        help="CPU thread counts to time each file with (default: 1 2 4)",
    )
    parser.add_argument(
        "--no-xnnpack", action="store_true", help="also measure LiteRT without XNNPACK"
    )
    parser.add_argument(
        "--runs",
        type=cli_args.positive_int,
        default=100,
        help="timed runs per configuration (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=cli_args.non_negative_int,
        default=10,
        help="untimed runs before timing (default: %(default)s)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write report.md, report.json and frontier.png here"
    )
    _overwrite(parser, "the report files in --out")
