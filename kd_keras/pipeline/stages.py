"""The pipeline's stages and the run folder that makes them resumable.

Each stage writes into `run_dir/<stage>/` and, only when it has finished,
an atomic completion marker `run_dir/.stages/<stage>.json` listing its
outputs. A re-run skips every stage with a marker. Training stages also keep
`keras.callbacks.BackupAndRestore` state, so a run killed mid-epoch resumes
from the last finished epoch instead of starting the stage over.

A marker also records a fingerprint of the config sections its stage and
every earlier stage read. A re-run whose config changed under a finished
stage stops with a `ConfigError` that names the changed sections, instead of
silently reusing results made from the old config; `run(rerun_from=stage)`
(`kd-keras run --rerun-from STAGE`) redoes that stage and every later one,
after moving their old outputs to `run_dir/.replaced/<time>/`.

Stages: `teacher` -> `distill` -> `prune` -> `quantize` (QAT training, or
nothing for post-training quantization) -> `export` (float, quantized and
ONNX artifacts, each parity-checked) -> `bench` (report, table, plots). The
stage bodies are thin: the work is in `kd_keras.pipeline.steps`, which the
`kd-keras distill / prune / quantize` sub-commands call too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kd_keras.io import atomic_path, write_json
from kd_keras.pipeline import steps
from kd_keras.pipeline.steps import load_data

STAGES = ("teacher", "distill", "prune", "quantize", "export", "bench")
__all__ = ["STAGES", "Pipeline", "atomic_backup_and_restore", "load_data"]


class Pipeline:
    """Runs the stages of a validated config inside its run folder.

    Example:

    ```python
    from kd_keras.pipeline import Pipeline, load_config
    outputs = Pipeline(load_config("examples/digits.yaml")).run()
    ```
    """

    # Subclasses (the text pipeline) run their own list of `_stage_<name>` methods.
    stages = STAGES
    #: The config sections each stage reads, beyond those of earlier stages.
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
        self.config = config
        self.run_dir = Path(run_dir or config["run_dir"])
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._data = None

    # -- markers -----------------------------------------------------------

    def marker(self, stage: str) -> Path:
        return self.run_dir / ".stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The outputs recorded by `stage`'s marker, or `None` if it has not finished."""
        record = self._record(stage)
        return record["outputs"] if record else None

    def _record(self, stage: str) -> dict[str, Any] | None:
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def _sections(self, stage: str) -> dict[str, Any]:
        """The config sections `stage` reads, as they read back from JSON."""
        sections = {key: self.config.get(key) for key in self.stage_sections.get(stage, ())}
        return json.loads(json.dumps(sections, default=str))

    def fingerprints(self) -> dict[str, str]:
        """Per stage, a hash of the config sections read by it and by every
        stage before it: what its finished outputs were made from."""
        chain, prints = "", {}
        for stage in self.stages:
            text = json.dumps(self._sections(stage), sort_keys=True)
            chain = hashlib.sha256((chain + text).encode()).hexdigest()[:16]
            prints[stage] = chain
        return prints

    def _complete(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
        record = {
            "stage": stage,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "fingerprint": self.fingerprints()[stage],
            "sections": self._sections(stage),
        }
        write_json(self.marker(stage), record, overwrite=True)

    def _check_fingerprint(self, stage: str, record: dict[str, Any], expected: str) -> None:
        """Raise if `stage` finished under a config that differs from this one."""
        recorded = record.get("fingerprint")
        if recorded is None or recorded == expected:
            return  # markers written before fingerprints existed are trusted
        now = self._sections(stage)
        before = record.get("sections", {})
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        from kd_keras.pipeline.config import ConfigError

        raise ConfigError(
            f"{self.run_dir} holds stage '{stage}' finished with a different config "
            f"(changed since: {', '.join(changed) or 'an earlier stage'}). Re-run from there "
            f"with `kd-keras run CONFIG --rerun-from {stage}` (Pipeline.run("
            f"rerun_from='{stage}')), which moves the old outputs of '{stage}' and later "
            f"stages to {self.run_dir / '.replaced'}/, or give the new config another run_dir."
        )

    def _retire(self, first: str) -> None:
        """Move the markers and folders of `first` and every later stage to
        `run_dir/.replaced/<time>/`, so they run again and nothing is deleted."""
        from kd_keras.pipeline.config import ConfigError

        if first not in self.stages:
            raise ConfigError(f"rerun_from must be one of {list(self.stages)}, got {first!r}.")
        target = self.run_dir / ".replaced" / time.strftime("%Y%m%d-%H%M%S")
        for stage in self.stages[self.stages.index(first) :]:
            for path in (self.marker(stage), self.run_dir / stage):
                if path.exists():
                    destination = target / path.relative_to(self.run_dir)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), str(destination))
        if target.exists():
            self.log(f"[{first}] re-running; earlier outputs moved to {target}")

    # -- running -------------------------------------------------------------

    @property
    def data(self):
        if self._data is None:
            self._data = load_data(self.config["data"], seed=self.config["seed"])
        return self._data

    def run(self, rerun_from: str | None = None) -> dict[str, dict[str, Any]]:
        """Runs every unfinished stage in order; returns each stage's outputs.

        `rerun_from` runs that stage and every later one again (their old
        outputs are moved aside, see the module docstring)."""
        import keras

        if rerun_from is not None:
            self._retire(rerun_from)
        prints = self.fingerprints()
        for stage in self.stages:  # before any work: a stale run must not train
            record = self._record(stage)
            if record is not None:
                self._check_fingerprint(stage, record, prints[stage])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self.config, overwrite=True)
        keras.utils.set_random_seed(self.config["seed"])
        results = {}
        for stage in self.stages:
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

    def _backup(self, stage):
        return atomic_backup_and_restore(str(self.run_dir / stage / "backup"))

    def _save(self, model, relative: str) -> str:
        return steps.save_model(model, self.run_dir / relative, overwrite=True)

    def _save_history(self, history, stage):
        logs = {k: [float(v) for v in values] for k, values in history.history.items()}
        write_json(self.run_dir / stage / "history.json", logs, overwrite=True)


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
            with atomic_path(self._weights_path, overwrite=True) as tmp:
                # Keras insists on the .weights.h5 suffix.
                target = tmp.with_name(tmp.name.replace(".tmp.h5", ".tmp.weights.h5"))
                self.model.save_weights(str(target), overwrite=True)
                target.replace(tmp)
            metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            write_json(self._training_metadata_path, metadata, overwrite=True)

    return AtomicBackupAndRestore(backup_dir, double_checkpoint=False)


def command_line() -> str:
    # `python -m kd_keras.cli run x.yaml` and the console script both read
    # best as the console script.
    return " ".join(["kd-keras", *sys.argv[1:]])
