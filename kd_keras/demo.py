"""`kd-keras demo`: teacher vs. student from scratch vs. distilled student.

On scikit-learn's 1,797 8x8 digits (embedded, no download) it trains

1. a CNN teacher (`kd_keras.models.cnn_teacher`, ~53 k parameters here),
2. a small CNN student (`kd_keras.models.cnn_student`, ~2 k parameters) on
   the labels alone, and
3. the same student, from the same initial weights, distilled from the
   teacher with `kd_keras.Distiller` and soft targets (Hinton et al., 2015)
   read from teacher logits cached once before training,

and prints held-out accuracy, parameters and train time of each. The
building blocks (`train_supervised`, `train_distilled`, `compare`,
`print_table`, `write_outputs`) are reused by `examples/fashion_mnist.py`.

Example:

```python
from kd_keras import demo

results = demo.run_demo(epochs=30)
demo.print_table(results)
```
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

import kd_keras
from kd_keras.bench import evaluate_accuracy, plot_history, render
from kd_keras.data import load_digits
from kd_keras.defaults import DEMO_ALPHA, DEMO_TEMPERATURE
from kd_keras.io import write_json
from kd_keras.models import cnn_student, cnn_teacher
from kd_keras.pipeline import training

# Defaults of `kd-keras demo`. They were chosen on a validation split carved
# out of the digits *training* set (see README, "Demo"), never on the test set.
EPOCHS = 30
TEACHER_EPOCHS = 30
SEED = 0
TEMPERATURE = DEMO_TEMPERATURE
ALPHA = DEMO_ALPHA
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
DIGITS_SHAPE = (8, 8, 1)
TEACHER_DENSE_UNITS = 128

JSON_NAME = "demo.json"
PNG_NAME = "demo_curves.png"
#: The panels of `demo_curves.png`: every model's accuracy, then the
#: distilled student's two loss terms.
CURVES = ("accuracy", "student_loss", "soft_target_loss")

Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Result:
    """One trained model: what the table shows, plus its per-epoch history.

    `train_seconds` of a distilled student includes computing the cached
    teacher logits (`cache_seconds`), not the teacher's own training.
    """

    name: str
    test_accuracy: float
    params: int
    train_seconds: float
    history: dict[str, list[float]]
    cache_seconds: float = 0.0


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model`'s outputs (logits or probabilities) on `(x, y)`:
    `kd_keras.bench.evaluate_accuracy`, the pipeline's one accuracy function."""
    return evaluate_accuracy(model, x, np.asarray(y).reshape(-1), batch_size=batch_size)


def _history(history: keras.callbacks.History) -> dict[str, list[float]]:
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def train_supervised(
    model: keras.Model,
    data: Data,
    *,
    name: str,
    epochs: int,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    learning_rate: float = LEARNING_RATE,
    validate: bool = True,
    verbose: int = 0,
) -> Result:
    """Trains `model` (logits out) on the labels with cross-entropy, through
    the pipeline's `kd_keras.pipeline.training.train`.

    With `validate`, held-out accuracy is logged after every epoch (for the
    curves only: nothing is selected on it)."""
    (x_train, y_train), (x_test, y_test) = data
    if verbose:
        print(f"-- {name}")
    start = time.perf_counter()
    history = training.train(
        model,
        x_train,
        y_train,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_data=(x_test, y_test) if validate else None,
        seed=seed,  # same shuffling for every student
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    return Result(
        name=name,
        test_accuracy=accuracy(model, x_test, y_test),
        params=model.count_params(),
        train_seconds=seconds,
        history=_history(history),
    )


def train_distilled(
    student: keras.Model,
    teacher: keras.Model,
    data: Data,
    *,
    name: str = "distilled student",
    epochs: int,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    learning_rate: float = LEARNING_RATE,
    validate: bool = True,
    verbose: int = 0,
) -> Result:
    """Distils `teacher` into `student` with soft targets (T² scaled KL).

    The teacher's logits are computed once for the (fixed, in-memory)
    training set and travel with the labels, so each step runs the student
    only; `fit` shuffles images, labels and logits together (the pipeline's
    `kd_keras.pipeline.training.train` with `teacher_logits`). The time to
    cache the training logits counts as training time.
    """
    (x_train, y_train), (x_test, y_test) = data
    if verbose:
        print(f"-- {name}")
    cache = functools.partial(kd_keras.cache_teacher_outputs, teacher, verbose=0)
    start = time.perf_counter()
    train_logits = cache(x_train)
    cache_seconds = time.perf_counter() - start
    validation = None
    if validate:  # held-out curves only, like the other runs' validation
        validation = (x_test, {"labels": y_test, "teacher_logits": cache(x_test)})

    start = time.perf_counter()
    history = training.train(
        student,
        x_train,
        y_train,
        teacher=teacher,
        teacher_logits=train_logits,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        temperature=temperature,
        alpha=alpha,
        validation_data=validation,
        seed=seed,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    return Result(
        name=name,
        test_accuracy=accuracy(student, x_test, y_test),
        params=student.count_params(),
        train_seconds=cache_seconds + seconds,
        history=_history(history),
        cache_seconds=cache_seconds,
    )


def compare(
    data: Data,
    make_teacher: Callable[[], keras.Model],
    make_student: Callable[[], keras.Model],
    *,
    epochs: int,
    teacher_epochs: int,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    batch_size: int = BATCH_SIZE,
    seed: int = SEED,
    validate: bool = True,
    verbose: int = 0,
) -> list[Result]:
    """Teacher, student from scratch and distilled student on `data`.

    Both students start from the same initial weights and train with the
    same shuffling seed, so the difference between them is the teacher's
    soft targets. `validate=False` skips the
    per-epoch held-out evaluation (no curves, less time).
    """
    keras.utils.set_random_seed(seed)
    teacher = make_teacher()
    teacher_result = train_supervised(
        teacher, data, name="teacher", epochs=teacher_epochs, batch_size=batch_size,
        seed=seed, validate=validate, verbose=verbose,
    )
    keras.utils.set_random_seed(seed + 1)
    scratch = make_student()
    initial_weights = scratch.get_weights()
    scratch_result = train_supervised(
        scratch, data, name="student from scratch", epochs=epochs, batch_size=batch_size,
        seed=seed, validate=validate, verbose=verbose,
    )
    student = make_student()
    student.set_weights(initial_weights)
    distilled_result = train_distilled(
        student, teacher, data, epochs=epochs, temperature=temperature, alpha=alpha,
        batch_size=batch_size, seed=seed, validate=validate, verbose=verbose,
    )
    return [teacher_result, scratch_result, distilled_result]


def format_rows(results: Sequence[Result]) -> list[tuple[str, str, str, str]]:
    """`(model, test accuracy %, parameters, train time s)` as strings."""
    return [
        (r.name, f"{100 * r.test_accuracy:.2f}", f"{r.params:,}", f"{r.train_seconds:.1f}")
        for r in results
    ]


def print_table(results: Sequence[Result], title: str = "kd_keras demo") -> None:
    """Prints the comparison table through `kd_keras.bench.render.print_table`
    (with `rich` when it is installed)."""
    headers = ("model", "test accuracy (%)", "parameters", "train time (s)")
    rows = format_rows(results)
    by_name = {r.name: r for r in results}
    notes = []
    if "student from scratch" in by_name and "distilled student" in by_name:
        distilled, scratch = by_name["distilled student"], by_name["student from scratch"]
        gain = distilled.test_accuracy - scratch.test_accuracy
        notes.append(f"distilled - scratch: {100 * gain:+.2f} points of test accuracy")
        notes.append(
            f"distilled time includes caching teacher logits: {distilled.cache_seconds:.1f} s"
        )
    render.print_table(headers, rows, title=title, notes=notes)


def output_paths(out: str | os.PathLike, overwrite: bool = False) -> tuple[Path, Path]:
    """`(json_path, png_path)` in folder `out`; refuses to replace existing
    files unless `overwrite` (checked before any training)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder (it is created if missing).")
    paths = (out / JSON_NAME, out / PNG_NAME)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s). Pass --overwrite (overwrite=True) "
            "to replace them, or choose another --out folder."
        )
    return paths


def write_outputs(
    results: Sequence[Result],
    config: dict,
    out: str | os.PathLike,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Writes `demo.json` (config, versions, results with histories) and
    `demo_curves.png` (the `CURVES` of every run, by
    `kd_keras.bench.plot_history`) into folder `out`, atomically."""
    json_path, png_path = output_paths(out, overwrite=overwrite)
    payload = {
        "config": config,
        "backend": keras.backend.backend(),
        "versions": {
            "kd_keras": kd_keras.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "results": [dataclasses.asdict(r) for r in results],
    }

    # Atomic, as every file kd_keras writes: a crash never leaves half a file.
    write_json(json_path, payload, overwrite=True)
    histories = {r.name: r.history for r in results}
    logged = {k.removeprefix("val_") for h in histories.values() for k in h}
    plot_history(
        histories,
        png_path,
        overwrite=True,  # output_paths has checked
        title="Training (solid) and held-out (dashed) curves",
        metrics=[m for m in CURVES if m in logged],
    )
    return json_path, png_path


def run_demo(
    epochs: int = EPOCHS,
    teacher_epochs: int = TEACHER_EPOCHS,
    seed: int = SEED,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    batch_size: int = BATCH_SIZE,
    verbose: int = 0,
) -> list[Result]:
    """The demo's three runs on digits; see `compare`."""
    data = load_digits(seed=seed)
    return compare(
        data,
        lambda: cnn_teacher(DIGITS_SHAPE, dense_units=TEACHER_DENSE_UNITS),
        lambda: cnn_student(DIGITS_SHAPE),
        epochs=epochs,
        teacher_epochs=teacher_epochs,
        temperature=temperature,
        alpha=alpha,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )


def main(args) -> list[Result]:
    """`kd-keras demo` with parsed arguments (see `kd_keras.cli`)."""
    config = {
        "dataset": "sklearn digits (8x8), stratified 75/25 split",
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "seed": args.seed,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "batch_size": args.batch_size,
        "learning_rate": LEARNING_RATE,
    }
    if args.out is not None:
        output_paths(args.out, overwrite=args.overwrite)  # fail before training
    results = run_demo(
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        seed=args.seed,
        temperature=args.temperature,
        alpha=args.alpha,
        batch_size=args.batch_size,
    )
    print_table(
        results, title=f"kd_keras demo: digits, seed {args.seed}, {keras.backend.backend()}"
    )
    if args.out is not None:
        json_path, png_path = write_outputs(results, config, args.out, overwrite=args.overwrite)
        print(f"wrote {json_path} and {png_path}")
    return results
