"""The image task (`task: image`, the default): NumPy image arrays, a
reference CNN, a `.keras` file or a keras-hub preset as teacher, students
trained with `fit` through `kd_keras.pipeline.training`; float, quantized
and ONNX artifacts each parity-checked, measured by `kd_keras.bench`.

Example:

```python
from kd_keras.pipeline import Pipeline, load_config

outputs = Pipeline(load_config("examples/digits.yaml")).run()
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kd_keras.bench import benchmark, evaluate_accuracy, plot_history
from kd_keras.defaults import PTQ_MODES
from kd_keras.export import to_onnx
from kd_keras.pipeline.data_sources import load_data, num_classes
from kd_keras.pipeline.model_files import (
    build_model,
    load_model,
    load_preset,
    preset_num_classes,
    save_model,
)
from kd_keras.pipeline.quantize_step import export_tflite
from kd_keras.pipeline.runfolder import command_line
from kd_keras.pipeline.task import Task
from kd_keras.pipeline.training import train

#: The image pipeline's stages, in order.
STAGES = ("teacher", "distill", "prune", "quantize", "export", "bench")

__all__ = ["STAGES", "ImageTask"]


class ImageTask(Task):
    """Images -> class logits (see the module docstring)."""

    name = "image"
    stages = STAGES
    stage_sections = {
        "teacher": ("seed", "data", "teacher"),
        "distill": ("student", "distill"),
        "prune": ("prune",),
        "quantize": ("quantize",),
        "export": ("export",),
        "bench": ("bench",),
    }
    quantize_modes = PTQ_MODES

    # -- data ------------------------------------------------------------------

    def load_data(self):
        return load_data(self.config["data"], seed=self.config["seed"])

    def inputs(self) -> dict[str, tuple[tuple, str]]:
        (x, _), _ = self.data
        return {"image": (tuple(x.shape[1:]), str(x.dtype))}

    def training_set(self):
        return self.data[0]

    def evaluation_set(self):
        return self.data[1]

    # -- models ----------------------------------------------------------------

    def load_student(self, path: str):
        return load_model(path)

    def load_teacher(self, results):
        return load_model(results["teacher"]["model"])

    def save_student(self, model, relative: str) -> str:
        return save_model(model, self.pipeline.run_dir / relative, overwrite=True)

    def accuracy(self, model, x, y) -> float:
        return evaluate_accuracy(model, x, y)

    # -- stages ----------------------------------------------------------------

    def stage_teacher(self, results):
        spec = self.config["teacher"]
        if spec.get("path"):
            return {"model": str(Path(spec["path"]).resolve())}
        (xt, yt), (xe, ye) = self.data
        classes = num_classes(yt, ye)
        if spec.get("preset"):
            if spec["epochs"] == 0 and preset_num_classes(spec["preset"]) != classes:
                raise ValueError(
                    f"teacher.preset {spec['preset']} gets a new {classes}-class head for "
                    "this data, which needs training: set teacher.epochs > 0 to fine-tune it."
                )
            model = load_preset(spec["preset"], classes)
        else:
            model = build_model(spec["builder"], xt.shape[1:], classes, **spec["kwargs"])
        if spec["epochs"] > 0:
            self._train(model, spec, "teacher")
        return {"model": self.save_student(model, "teacher/teacher.keras")}

    def stage_distill(self, results):
        (xt, yt), _ = self.data
        spec, student_spec = self.config["distill"], self.config["student"]
        teacher = self.load_teacher(results)
        if student_spec.get("path"):
            student = load_model(student_spec["path"])
        else:
            student = build_model(
                student_spec["builder"],
                xt.shape[1:],
                int(teacher.outputs[0].shape[-1]),
                **student_spec["kwargs"],
            )
        self._train(student, spec, "distill", teacher=teacher, losses=spec["losses"])
        return {"student": self.save_student(student, "distill/student.keras")}

    def stage_export(self, results):
        (xt, _), (xe, _) = self.data
        folder = self.pipeline.run_dir / "export"
        models = {
            "teacher": results["teacher"]["model"],
            "student": results["distill"]["student"],
        }
        if not results["prune"].get("skipped"):
            models["student_pruned"] = results["prune"]["student"]
        formats = self.config["export"]["formats"]
        quantize = self.config["quantize"]
        # PTQ modes quantize the most compressed float student; QAT has
        # trained its own int8 copy of it.
        if quantize["method"] == "qat":
            quantized = {"qat": results["quantize"]["student"]}
        else:
            quantized = {mode: models[list(models)[-1]] for mode in quantize["modes"]}
        calibration = xt[: quantize["calibration_samples"]]
        export = self.config["export"]
        layout = {"batch_size": export.get("batch_size"), "strip_strings": export["strip_strings"]}
        artifacts = {}

        def tflite(model, name, mode):
            target = folder / f"{name}.tflite"
            export_tflite(
                model,
                target,
                mode,
                calibration=calibration,
                sample_inputs=xe,
                overwrite=True,
                # A quantized model that flips decisions is a finding for the
                # report (its parity row says FAIL), not a reason to lose the run.
                strict=mode is None,
                **layout,
            )
            return str(target)

        for name, path in models.items():
            model = load_model(path)
            artifacts[f"{name} (keras)"] = path
            if "tflite" in formats:
                artifacts[f"{name} float32"] = tflite(model, name, None)
            if "onnx" in formats and name != "teacher":
                target = folder / f"{name}.onnx"
                to_onnx(model, target, sample_inputs=xe, overwrite=True)
                artifacts[f"{name} onnx"] = str(target)
        if "tflite" in formats:
            base = list(models)[-1]
            for mode, path in quantized.items():
                model = load_model(path)
                label = "qat_int8" if mode == "qat" else mode
                artifacts[f"{base} {label}"] = tflite(model, f"{base}_{label}", mode)
        return {"artifacts": artifacts}

    def stage_bench(self, results):
        _, (xe, ye) = self.data
        spec = self.config["bench"]
        run_dir = self.pipeline.run_dir
        report = benchmark(
            results["export"]["artifacts"],
            xe,
            ye,
            threads=spec["threads"],
            xnnpack=spec["xnnpack"],
            runs=spec["runs"],
            warmup=spec["warmup"],
            command=command_line(),
        )
        report.print_table()
        paths = report.save(run_dir / "report", overwrite=True)
        history = run_dir / "distill" / "history.json"
        if history.exists():
            paths["curves"] = plot_history(
                json.loads(history.read_text()),
                run_dir / "report" / "curves.png",
                overwrite=True,
            )
        return {name: str(path) for name, path in paths.items()}

    # -- helpers ---------------------------------------------------------------

    def _train(self, model, spec, stage, teacher=None, **train_kwargs: Any):
        (xt, yt), _ = self.data
        history = train(
            model,
            xt,
            yt,
            callbacks=[self.pipeline.backup(stage)],
            **self.pipeline.fit_args(spec, teacher),
            **train_kwargs,
        )
        self.pipeline.save_history(history, stage)
