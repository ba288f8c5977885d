"""The pipeline's stages and the run folder that makes them resumable.

Each stage writes into `run_dir/<stage>/` and, only when it has finished,
an atomic completion marker `run_dir/.stages/<stage>.json` listing its
outputs. A re-run skips every stage with a marker. Training stages also keep
`keras.callbacks.BackupAndRestore` state, so a run killed mid-epoch resumes
from the last finished epoch instead of starting the stage over.

Stages: `teacher` -> `distill` -> `prune` -> `export` (float, quantized and
ONNX artifacts, each parity-checked) -> `bench` (report, table, plots).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kd_keras.export import atomic

STAGES = ("teacher", "distill", "prune", "export", "bench")


def load_data(spec: dict[str, Any], seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)` for the `data` section."""
    from kd_keras import data

    name = spec["name"]
    if name == "digits":
        (xt, yt), (xe, ye) = data.load_digits(test_fraction=spec["test_fraction"], seed=seed)
    elif name == "fashion_mnist":
        (xt, yt), (xe, ye) = data.load_fashion_mnist(spec.get("path"))
    else:
        path = Path(spec["path"])
        if not path.is_file():
            raise FileNotFoundError(f"data.path {path} does not exist.")
        arrays = np.load(path)
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)} (data.name: npz).")
        xt, yt, xe, ye = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if spec.get("max_train"):
        xt, yt = xt[: spec["max_train"]], yt[: spec["max_train"]]
    if spec.get("max_test"):
        xe, ye = xe[: spec["max_test"]], ye[: spec["max_test"]]
    return (xt.astype("float32"), yt), (xe.astype("float32"), ye)


class Pipeline:
    """Runs the stages of a validated config inside its run folder.

    Example:

    ```python
    from kd_keras.pipeline import Pipeline, load_config
    outputs = Pipeline(load_config("examples/digits.yaml")).run()
    ```
    """

    def __init__(
        self, config: dict[str, Any], run_dir=None, log: Callable[[str], None] | None = None
    ):
        self.config = config
        self.run_dir = Path(run_dir or config["run_dir"])
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._data = None

    # -- markers -----------------------------------------------------------

    def marker(self, stage: str) -> Path:
        return self.run_dir / ".stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The outputs recorded by `stage`'s marker, or `None` if it has not finished."""
        path = self.marker(stage)
        return json.loads(path.read_text())["outputs"] if path.exists() else None

    def _complete(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
        record = {"stage": stage, "outputs": outputs, "seconds": round(seconds, 3)}
        atomic.write_json(self.marker(stage), record, overwrite=True)

    # -- running -------------------------------------------------------------

    @property
    def data(self):
        if self._data is None:
            self._data = load_data(self.config["data"], seed=self.config["seed"])
        return self._data

    def run(self) -> dict[str, dict[str, Any]]:
        """Runs every unfinished stage in order; returns each stage's outputs."""
        import keras

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.run_dir / "config.json", self.config, overwrite=True)
        keras.utils.set_random_seed(self.config["seed"])
        results = {}
        for stage in STAGES:
            done = self.finished(stage)
            if done is not None:
                self.log(f"[{stage}] finished earlier, skipping ({self.marker(stage)})")
                results[stage] = done
                continue
            self.log(f"[{stage}] running")
            start = time.perf_counter()
            outputs = getattr(self, f"_stage_{stage}")(results)
            self._complete(stage, outputs, time.perf_counter() - start)
            results[stage] = outputs
            self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s")
        return results

    # -- stages ----------------------------------------------------------------

    def _stage_teacher(self, results):
        spec = self.config["teacher"]
        if spec.get("path"):
            return {"model": str(Path(spec["path"]).resolve())}
        (xt, yt), (xe, ye) = self.data
        model = self._build(spec, xt.shape[1:], int(np.max(yt)) + 1)
        self._fit_classifier(model, spec, "teacher")
        return {"model": self._save(model, "teacher/teacher.keras")}

    def _stage_distill(self, results):
        import keras

        from kd_keras import Distiller
        from kd_keras.losses import SoftTargetKD

        (xt, yt), _ = self.data
        spec, student_spec = self.config["distill"], self.config["student"]
        teacher = keras.saving.load_model(results["teacher"]["model"])
        if student_spec.get("path"):
            student = keras.saving.load_model(student_spec["path"])
        else:
            student = self._build(student_spec, xt.shape[1:], int(teacher.outputs[0].shape[-1]))
        distiller = Distiller(
            student=student,
            teacher=teacher,
            losses=[SoftTargetKD(temperature=spec["temperature"])],
            alpha=spec["alpha"],
        )
        distiller.compile(
            optimizer=keras.optimizers.Adam(spec["learning_rate"]), metrics=["accuracy"]
        )
        distiller.build((None, *xt.shape[1:]))
        history = distiller.fit(
            xt,
            yt,
            epochs=spec["epochs"],
            batch_size=spec["batch_size"],
            callbacks=[self._backup("distill")],
            verbose=_verbosity(),
        )
        self._save_history(history, "distill")
        return {"student": self._save(distiller.student, "distill/student.keras")}

    def _stage_prune(self, results):
        import keras

        spec = self.config["prune"]
        if not spec["enabled"]:
            return {"student": results["distill"]["student"], "skipped": True}
        from kd_keras import pruning

        (xt, yt), _ = self.data
        student = keras.saving.load_model(results["distill"]["student"])
        steps = spec["epochs"] * int(np.ceil(len(xt) / spec["batch_size"]))
        pruned = pruning.prune_low_magnitude(
            student,
            pruning_schedule=pruning.PolynomialDecay(
                0.0, spec["final_sparsity"], begin_step=0, end_step=max(1, steps - 1)
            ),
        )
        pruned.compile(
            optimizer=keras.optimizers.Adam(spec["learning_rate"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = pruned.fit(
            xt,
            yt,
            epochs=spec["epochs"],
            batch_size=spec["batch_size"],
            callbacks=[pruning.UpdatePruningStep(), self._backup("prune")],
            verbose=_verbosity(),
        )
        self._save_history(history, "prune")
        return {"student": self._save(pruning.strip_pruning(pruned), "prune/student_pruned.keras")}

    def _stage_export(self, results):
        import keras

        from kd_keras.export import to_onnx, to_tflite

        (xt, _), (xe, _) = self.data
        folder = self.run_dir / "export"
        models = {
            "teacher": results["teacher"]["model"],
            "student": results["distill"]["student"],
        }
        if not results["prune"].get("skipped"):
            models["student_pruned"] = results["prune"]["student"]
        formats = self.config["export"]["formats"]
        calibration = xt[: self.config["quantize"]["calibration_samples"]]
        artifacts = {}
        last = list(models)[-1]  # quantize the most compressed float student
        for name, path in models.items():
            model = keras.saving.load_model(path)
            artifacts[f"{name} (keras)"] = path
            if "tflite" in formats:
                target = folder / f"{name}.tflite"
                to_tflite(model, target, sample_inputs=xe, overwrite=True)
                artifacts[f"{name} float32"] = str(target)
                if name == last:
                    for mode in self.config["quantize"]["modes"]:
                        target = folder / f"{name}_{mode}.tflite"
                        to_tflite(
                            model,
                            target,
                            quantization=mode,
                            representative_data=calibration if mode == "int8" else None,
                            sample_inputs=xe,
                            overwrite=True,
                            # A quantized model that flips decisions is a
                            # finding for the report (its parity row says
                            # FAIL), not a reason to lose the run.
                            strict=False,
                        )
                        artifacts[f"{name} {mode}"] = str(target)
            if "onnx" in formats and name != "teacher":
                target = folder / f"{name}.onnx"
                to_onnx(model, target, sample_inputs=xe, overwrite=True)
                artifacts[f"{name} onnx"] = str(target)
        return {"artifacts": artifacts}

    def _stage_bench(self, results):
        from kd_keras.bench import benchmark

        _, (xe, ye) = self.data
        spec = self.config["bench"]
        report = benchmark(
            results["export"]["artifacts"],
            xe,
            ye,
            threads=spec["threads"],
            xnnpack=spec["xnnpack"],
            runs=spec["runs"],
            warmup=spec["warmup"],
            command=_command(),
        )
        report.print_table()
        paths = report.save(self.run_dir / "report", overwrite=True)
        history = self.run_dir / "distill" / "history.json"
        if history.exists():
            from kd_keras.bench import plot_history

            paths["curves"] = plot_history(
                json.loads(history.read_text()),
                self.run_dir / "report" / "curves.png",
                overwrite=True,
            )
        return {name: str(path) for name, path in paths.items()}

    # -- helpers ---------------------------------------------------------------

    def _build(self, spec, input_shape, num_classes):
        from kd_keras import models

        builder = getattr(models, spec["builder"])
        return builder(tuple(input_shape), num_classes=num_classes, **spec["kwargs"])

    def _fit_classifier(self, model, spec, stage):
        import keras

        (xt, yt), _ = self.data
        model.compile(
            optimizer=keras.optimizers.Adam(spec["learning_rate"]),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if spec["epochs"] > 0:
            history = model.fit(
                xt,
                yt,
                epochs=spec["epochs"],
                batch_size=spec["batch_size"],
                callbacks=[self._backup(stage)],
                verbose=_verbosity(),
            )
            self._save_history(history, stage)

    def _backup(self, stage):
        return atomic_backup_and_restore(str(self.run_dir / stage / "backup"))

    def _save(self, model, relative: str) -> str:
        path = self.run_dir / relative
        with atomic.atomic_path(path, overwrite=True) as tmp:
            model.save(tmp)
        return str(path)

    def _save_history(self, history, stage):
        logs = {k: [float(v) for v in values] for k, values in history.history.items()}
        atomic.write_json(self.run_dir / stage / "history.json", logs, overwrite=True)


def atomic_backup_and_restore(backup_dir: str):
    """`keras.callbacks.BackupAndRestore` whose checkpoint survives a kill.

    Keras writes `latest.weights.h5` in place, so a SIGKILL during the very
    first save leaves a truncated file that the next run cannot open. Here
    weights and metadata are each written to a temp file and renamed; a kill
    between the two renames costs at most one repeated epoch.
    """
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(self._weights_path, overwrite=True) as tmp:
                # Keras insists on the .weights.h5 suffix.
                target = tmp.with_name(tmp.name.replace(".tmp.h5", ".tmp.weights.h5"))
                self.model.save_weights(str(target), overwrite=True)
                target.replace(tmp)
            metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            atomic.write_json(self._training_metadata_path, metadata, overwrite=True)

    return AtomicBackupAndRestore(backup_dir, double_checkpoint=False)


def _command() -> str:
    # `python -m kd_keras.cli run x.yaml` and the console script both read
    # best as the console script.
    return " ".join(["kd-keras", *sys.argv[1:]])


def _verbosity() -> int:
    # Progress bars on a terminal, one line per epoch in logs.
    return 1 if sys.stderr.isatty() else 2
