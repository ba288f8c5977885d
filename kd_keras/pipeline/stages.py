"""The image pipeline's stages: `teacher` -> `distill` -> `prune` ->
`quantize` (QAT training, or nothing for post-training quantization) ->
`export` (float, quantized and ONNX artifacts, each parity-checked) -> `bench`
(report, table, plots).

The stage bodies are thin: the work is in `kd_keras.pipeline.steps`, which
the `kd-keras distill / prune / quantize` sub-commands call too. Markers,
fingerprints, re-runs and the crash-safe backup of a training stage are the
run folder's (`kd_keras.pipeline.runfolder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from kd_keras.io import write_json
from kd_keras.pipeline import steps
from kd_keras.pipeline.runfolder import RunFolder, atomic_backup_and_restore, command_line
from kd_keras.pipeline.steps import load_data

STAGES = ("teacher", "distill", "prune", "quantize", "export", "bench")
__all__ = ["STAGES", "Pipeline", "atomic_backup_and_restore", "command_line", "load_data"]


class Pipeline(RunFolder):
    """Runs the stages of a validated config inside its run folder.

    Example:

    ```python
    # Not run: trains a teacher and a student on digits (minutes).
    from kd_keras.pipeline import Pipeline, load_config
    outputs = Pipeline(load_config("examples/digits.yaml")).run()
    ```
    """

    # Subclasses (the text pipeline) run their own list of `_stage_<name>` methods.
    stages = STAGES
    stage_sections = {
        "teacher": ("seed", "data", "teacher"),
        "distill": ("student", "distill"),
        "prune": ("prune",),
        "quantize": ("quantize",),
        "export": ("export",),
        "bench": ("bench",),
    }

    def __init__(
        self, config: dict[str, Any], run_dir=None, log: Callable[[str], None] | None = None
    ):
        super().__init__(config, run_dir=run_dir, log=log)
        self._data = None

    # -- data ----------------------------------------------------------------

    @property
    def data(self):
        if self._data is None:
            self._data = load_data(self.config["data"], seed=self.config["seed"])
        return self._data

    # -- stages ----------------------------------------------------------------

    def _stage_teacher(self, results):
        spec = self.config["teacher"]
        if spec.get("path"):
            return {"model": str(Path(spec["path"]).resolve())}
        (xt, yt), (xe, ye) = self.data
        classes = steps.num_classes(yt, ye)
        if spec.get("preset"):
            if spec["epochs"] == 0 and steps.preset_num_classes(spec["preset"]) != classes:
                raise ValueError(
                    f"teacher.preset {spec['preset']} gets a new {classes}-class head for "
                    "this data, which needs training: set teacher.epochs > 0 to fine-tune it."
                )
            model = steps.load_preset(spec["preset"], classes)
        else:
            model = steps.build_model(spec["builder"], xt.shape[1:], classes, **spec["kwargs"])
        if spec["epochs"] > 0:
            self._train(model, spec, "teacher")
        return {"model": self._save(model, "teacher/teacher.keras")}

    def _stage_distill(self, results):
        (xt, yt), _ = self.data
        spec, student_spec = self.config["distill"], self.config["student"]
        teacher = steps.load_model(results["teacher"]["model"])
        if student_spec.get("path"):
            student = steps.load_model(student_spec["path"])
        else:
            student = steps.build_model(
                student_spec["builder"],
                xt.shape[1:],
                int(teacher.outputs[0].shape[-1]),
                **student_spec["kwargs"],
            )
        self._train(student, spec, "distill", teacher=teacher, losses=spec["losses"])
        return {"student": self._save(student, "distill/student.keras")}

    def _stage_prune(self, results):
        spec = self.config["prune"]
        if not spec["enabled"]:
            return {"student": results["distill"]["student"], "skipped": True}
        from kd_keras.pruning import sparsity_report

        student = steps.load_model(results["distill"]["student"])
        (xt, yt), _ = self.data
        pruned, stripped, history = steps.prune_student(
            student,
            xt,
            yt,
            final_sparsity=spec["final_sparsity"],
            m_by_n=spec["m_by_n"],
            filters=spec["filters"],
            ramp=spec["ramp"],
            lr_schedule=spec["lr_schedule"],
            callbacks=[self._backup("prune")],
            log=self.log,
            **self._fit_args(spec, teacher=self._teacher_if(spec["distill"], results)),
        )
        self._save_history(history, "prune")
        report = sparsity_report(pruned)
        self.log(str(report))
        write_json(
            self.run_dir / "prune" / "sparsity.json", report.as_dict(), overwrite=True
        )
        return {
            "student": self._save(stripped, "prune/student_pruned.keras"),
            "sparsity": report.pruned_sparsity,
        }

    def _stage_quantize(self, results):
        spec = self.config["quantize"]
        if spec["method"] == "ptq":
            # Post-training quantization needs no training: export applies it.
            return {"method": "ptq", "modes": spec["modes"]}
        (xt, yt), _ = self.data
        student = steps.load_model(results["prune"]["student"])
        qat, history = steps.quantize_aware_train(
            student,
            xt,
            yt,
            callbacks=[self._backup("quantize")],
            **self._fit_args(spec, teacher=self._teacher_if(spec["distill"], results)),
        )
        self._save_history(history, "quantize")
        return {"method": "qat", "student": self._save(qat, "quantize/student_qat.keras")}

    def _stage_export(self, results):
        from kd_keras.export import to_onnx

        (xt, _), (xe, _) = self.data
        folder = self.run_dir / "export"
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
            steps.export_tflite(
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
            model = steps.load_model(path)
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
                model = steps.load_model(path)
                label = "qat_int8" if mode == "qat" else mode
                artifacts[f"{base} {label}"] = tflite(model, f"{base}_{label}", mode)
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
            command=command_line(),
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

    def _teacher_if(self, wanted: bool, results):
        return steps.load_model(results["teacher"]["model"]) if wanted else None

    def _fit_args(self, spec, teacher=None):
        """Training arguments of `spec`; distillation settings from `distill`."""
        args = {
            "epochs": spec["epochs"],
            "batch_size": spec["batch_size"],
            "learning_rate": spec["learning_rate"],
            "teacher": teacher,
        }
        if teacher is not None:
            # A stage's own settings, else the distill section's.
            for key in ("temperature", "alpha"):
                value = spec.get(key)
                args[key] = self.config["distill"][key] if value is None else value
        return args

    def _train(self, model, spec, stage, teacher=None, **train_kwargs):
        (xt, yt), _ = self.data
        history = steps.train(
            model,
            xt,
            yt,
            callbacks=[self._backup(stage)],
            **self._fit_args(spec, teacher),
            **train_kwargs,
        )
        self._save_history(history, stage)

    def _save(self, model, relative: str) -> str:
        return steps.save_model(model, self.run_dir / relative, overwrite=True)


