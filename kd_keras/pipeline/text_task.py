"""The text task (`task: text`, schema in `kd_keras.pipeline.text_config`):
TinyBERT's two-stage recipe on a keras-hub BERT teacher, run by the one
`kd_keras.pipeline.Pipeline` into a resumable run folder.

Stages, in order (each writes `run_dir/<stage>/` and, once finished, the
marker `run_dir/.stages/<stage>.json`; a re-run skips finished stages, and a
training stage killed mid-way resumes from its last finished epoch):

- `teacher`: load the preset (default MiniLM-L6, `kd_keras.text.minilm_path()`),
  fine-tune it on the labels, save it as a keras-hub preset;
- `general`: TinyBERT general distillation (embedding, hidden-state and
  attention-map terms, no labels) into a small BERT student; skipped with
  `general.epochs: 0`;
- `distill`: task distillation, soft targets at temperature `T` from the
  teacher's logits (cached once) plus `alpha` times the labels' loss;
- with `augment.copies > 0`, both distillation stages train on the training
  set plus that many TinyBERT-style augmented copies of each text (words
  replaced by their nearest words in the teacher's embedding table,
  `kd_keras.text.augment`), labelled by the teacher: on small datasets this is
  what lets the intermediate-layer student keep up (see benchmarks/RESULTS.md);
  set `distill.alpha: 0`, since a replaced word can flip a copy's label;
- `prune` (with a `prune` section) and `quantize`: the pipeline's
  compression stages, the same code as for images: the distilled student is
  magnitude-pruned while it fine-tunes on the labels (the layers
  `kd_keras.pruning` reaches in the keras-hub graph: its sparsity report
  names them), and `quantize.modes: [dynamic]` adds the dynamic-range int8
  file of the most compressed student;
- `export`: TFLite float and dynamic-range int8, and ONNX, of the teacher and
  the student(s), each parity-checked (TensorFlow backend);
- `bench`: accuracy (Keras and TFLite), parameters, sizes and p50 batch-1
  latency at the given sequence lengths, as ratios to the teacher, into
  `run_dir/report.md` and `run_dir/report.json`.

Example `bbc_news.yaml` (all sections but `task` and `data` are optional):

```yaml
task: text
run_dir: runs/bbc_news
data: {name: bbc}
teacher: {sequence_length: 128, epochs: 3}
student: {num_layers: 2, hidden_dim: 96, num_heads: 2}
general: {epochs: 10}
distill: {epochs: 10, temperature: 2.0, alpha: 0.5}
prune: {final_sparsity: 0.5, epochs: 2}      # optional
quantize: {modes: [dynamic]}                 # optional
export: {tflite: [float, dynamic], onnx: true}
bench: {sequence_lengths: [64, 128], threads: [1]}
```
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kd_keras.bench import evaluate_accuracy, measure_latency
from kd_keras.bench.render import render_ratio_report
from kd_keras.data.bbc_news import load_bbc_news
from kd_keras.data.vader_movies import load_vader_movies
from kd_keras.export import ParityError
from kd_keras.export.text import (
    TOKEN_INPUTS,
    export_text_onnx,
    export_text_tflite,
    fixed_length_model,
)
from kd_keras.export.tflite import convert_to_flatbuffer
from kd_keras.io import atomic_path, write_json, write_text
from kd_keras.losses import SoftTargetKD
from kd_keras.pipeline.config import ConfigError
from kd_keras.pipeline.data_sources import num_classes
from kd_keras.pipeline.model_files import save_model
from kd_keras.pipeline.runfolder import command_line
from kd_keras.pipeline.task import Task
from kd_keras.pipeline.text_config import (
    EXPORT_MODELS,
    TEXT_QUANTIZE_MODES,
    TEXT_STAGES,
    TEXT_TASK,
    TFLITE_MODES,
)
from kd_keras.pipeline.training import verbosity
from kd_keras.text import augment
from kd_keras.text.distiller import TextDistiller
from kd_keras.text.losses import tinybert_losses
from kd_keras.text.student import backbone_of, build_student, check_layer_map
from kd_keras.text.teacher import (
    fine_tune,
    load_teacher,
    minilm_path,
    predict_logits,
    tokenize,
    without_preprocessor,
)


def accuracy(model, tokens: dict, labels) -> float:
    """Top-1 accuracy of a keras-hub text classifier on tokenized inputs
    (`kd_keras.bench.evaluate_accuracy` on the model without its
    preprocessor, which the tokens have been through already)."""
    with without_preprocessor(model):
        return evaluate_accuracy(model, tokens, labels)


def load_text_data(spec: dict[str, Any], seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)` (strings, int32 labels) for a
    validated `data` section; `max_test` keeps test texts spread evenly over
    the split (it is in class order), `max_train` the first training texts
    (already shuffled)."""
    if spec["name"] == "bbc":
        (xt, yt), (xe, ye) = load_bbc_news(
            test_fraction=spec["test_fraction"], seed=seed, data_dir=spec.get("path")
        )
    else:
        (xt, yt), (xe, ye) = load_vader_movies(
            spec.get("path"), test_fraction=spec["test_fraction"], seed=seed
        )
    if spec.get("max_train"):
        xt, yt = xt[: spec["max_train"]], yt[: spec["max_train"]]
    if spec.get("max_test") and spec["max_test"] < len(ye):
        keep = np.unique(np.linspace(0, len(ye) - 1, spec["max_test"]).round().astype(int))
        xe, ye = xe[keep], ye[keep]
    return (xt, yt), (xe, ye)


def unused_in_general_distillation(student) -> list:
    """The layers of a keras-hub BERT classifier that TinyBERT's
    intermediate-layer terms never reach: the backbone's pooler
    (`pooled_dense`) and every task layer outside the backbone (dropout,
    the classification head). Trainable ones only.

    Example:

    ```python
    for layer in unused_in_general_distillation(student):
        layer.trainable = False
    ```
    """
    backbone = backbone_of(student)
    layers = [layer for layer in getattr(student, "layers", []) if layer is not backbone]
    pooler = [layer for layer in backbone.layers if layer.name == "pooled_dense"]
    return [
        layer
        for layer in layers + pooler
        if layer.trainable and layer.weights and not isinstance(layer, keras.layers.InputLayer)
    ]


class TextTask(Task):
    """Texts -> class logits with TinyBERT's recipe (see the module docstring)."""

    name = TEXT_TASK
    stages = TEXT_STAGES
    stage_sections = {
        "teacher": ("seed", "data", "teacher"),
        "general": ("student", "general", "augment"),
        "distill": ("distill",),
        "prune": ("prune",),
        "quantize": ("quantize",),
        "export": ("export",),
        "bench": ("bench",),
    }
    quantize_modes = TEXT_QUANTIZE_MODES

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self._teacher = None
        self._tokens = None
        self._transfer = None

    @property
    def run_dir(self) -> Path:
        return self.pipeline.run_dir

    def check(self) -> None:
        """Refuses before any training when the export stage still has to
        run on a backend that cannot convert to TFLite."""
        backend = keras.backend.backend()
        if (
            self.config["export"]["enabled"]
            and backend != "tensorflow"
            and self.pipeline.finished("export") is None
        ):
            raise ConfigError(
                f"'export.enabled' is true but this process runs KERAS_BACKEND={backend}: "
                "TFLite / ONNX export and TFLite latency need KERAS_BACKEND=tensorflow. "
                "Run it with KERAS_BACKEND=tensorflow, or set 'export.enabled: false' "
                "(the report then gives accuracy and parameters only)."
            )

    # -- shared state ------------------------------------------------------

    def load_data(self):
        return load_text_data(self.config["data"], seed=self.config["seed"])

    def inputs(self) -> dict[str, tuple[tuple, str]]:
        return dict.fromkeys(TOKEN_INPUTS, ((self.sequence_length,), "int32"))

    def training_set(self):
        # The labelled texts, not the augmented transfer set: a replaced word
        # can flip a copy's label, and compression fine-tunes on labels.
        return self.tokens[0], self.data[0][1]

    def evaluation_set(self):
        return self.tokens[1], self.data[1][1]

    def load_student(self, path: str):
        # compile=False: keras-hub models override compile() without
        # compile_from_config, so loading their compile config only warns.
        return keras.saving.load_model(path, compile=False)

    def load_teacher(self, results):
        return self.teacher

    def save_student(self, model, relative: str) -> str:
        return save_model(model, self.run_dir / relative, overwrite=True)

    def adopt(self, compressed, student):
        """The stripped weights back in the keras-hub classifier they came
        from (pruning rebuilds it as a plain Functional model, without the
        preprocessor that export saves beside the model)."""
        weights = compressed.get_weights()
        shapes = [w.shape for w in student.get_weights()]
        if [w.shape for w in weights] != shapes:
            raise ValueError(
                f"The compressed model's weights ({len(weights)}) do not match the "
                f"student's ({len(shapes)}); a text student is pruned in place, not resized."
            )
        student.set_weights(weights)
        return student

    def accuracy(self, model, x, y) -> float:
        return accuracy(model, x, y)

    @property
    def num_classes(self) -> int:
        (_, y_train), (_, y_test) = self.data
        return num_classes(y_train, y_test)

    @property
    def sequence_length(self) -> int:
        return self.config["teacher"]["sequence_length"]

    @property
    def teacher(self):
        """The fine-tuned teacher of the `teacher` stage (loaded once)."""
        if self._teacher is None:
            done = self.pipeline.finished("teacher")
            if done is None:
                raise RuntimeError("The teacher stage has not finished.")
            self._teacher = load_teacher(done["preset"], sequence_length=self.sequence_length)
        return self._teacher

    @property
    def tokens(self) -> tuple[dict, dict]:
        """Train and test texts tokenized once by the teacher's preprocessor."""
        if self._tokens is None:
            (x_train, _), (x_test, _) = self.data
            self._tokens = tokenize(self.teacher, x_train), tokenize(self.teacher, x_test)
        return self._tokens

    @property
    def transfer_set(self) -> tuple[dict, np.ndarray]:
        """What the distillation stages train on: the training tokens, plus
        `augment.copies` augmented copies of each (labels: their source's)."""
        if self._transfer is None:
            tokens, labels = self.tokens[0], self.data[0][1]
            spec = self.config["augment"]
            if spec["copies"]:
                vocabulary = self.teacher.preprocessor.tokenizer.get_vocabulary()
                table = augment.word_neighbours(
                    augment.token_embedding_matrix(self.teacher), vocabulary, spec["neighbours"]
                )
                tokens, labels = augment.with_augmented_copies(
                    tokens,
                    labels,
                    table,
                    augment.continuation_mask(vocabulary),
                    copies=spec["copies"],
                    rate=spec["rate"],
                    seed=self.config["seed"],
                )
            self._transfer = tokens, labels
        return self._transfer

    def _new_student(self, teacher):
        spec = self.config["student"]
        return build_student(
            teacher,
            num_layers=spec["num_layers"],
            hidden_dim=spec["hidden_dim"],
            num_heads=spec["num_heads"],
            intermediate_dim=spec["intermediate_dim"],
            init_from_teacher=spec["init_from_teacher"],
            layer_map=spec["layer_map"],
            dropout=spec["dropout"],
        )

    def _check_against_teacher(self, teacher) -> None:
        """Sizes that only the loaded teacher can check, before it trains."""
        backbone = backbone_of(teacher)
        limit = backbone.max_sequence_length
        lengths = {"teacher.sequence_length": [self.sequence_length]}
        if self.config["export"]["enabled"]:
            lengths["bench.sequence_lengths"] = self.config["bench"]["sequence_lengths"]
        for key, values in lengths.items():
            if max(values) > limit:
                raise ConfigError(
                    f"'{key}' {values} exceeds the teacher's maximum sequence length {limit}."
                )
        spec = self.config["student"]
        try:
            if spec["layer_map"] is not None:
                check_layer_map(
                    spec["layer_map"], len(backbone.transformer_layers), spec["num_layers"]
                )
            self._new_student(teacher)
        except ValueError as err:
            raise ConfigError(f"'student' does not fit the teacher: {err}") from err

    # -- stages ------------------------------------------------------------

    def stage_teacher(self, results):
        spec = self.config["teacher"]
        (_, y_train), (_, y_test) = self.data
        teacher = load_teacher(
            spec["preset"] or minilm_path(),
            num_classes=self.num_classes,
            sequence_length=self.sequence_length,
        )
        self._check_against_teacher(teacher)
        self._teacher, self._tokens = teacher, None
        tokens_train, tokens_test = self.tokens
        if spec["epochs"]:
            history = fine_tune(
                teacher,
                tokens_train,
                y_train,
                epochs=spec["epochs"],
                batch_size=spec["batch_size"],
                learning_rate=spec["learning_rate"],
                callbacks=[self.pipeline.backup("teacher")],
                verbose=verbosity(),
            )
            self.pipeline.save_history(history, "teacher")
            # keras-hub's default compile again: the preset's task weights
            # would otherwise carry AdamW's two moments of every weight.
            teacher.compile()
        preset = self.run_dir / "teacher" / "preset"
        with atomic_path(preset, overwrite=True, directory=True) as tmp:
            teacher.save_to_preset(str(tmp))
        return {
            "preset": str(preset),
            "accuracy": accuracy(teacher, tokens_test, y_test),
            "params": int(teacher.count_params()),
        }

    def stage_general(self, results):
        spec = self.config["general"]
        if not spec["epochs"]:
            return {"skipped": True}
        teacher, student = self.teacher, self._new_student(self.teacher)
        terms = tinybert_losses(
            teacher,
            student,
            layer_map=self.config["student"]["layer_map"],
            hidden=spec["hidden"],
            attention=spec["attention"],
            embedding=spec["embedding"],
            attention_mode=spec["attention_mode"],
        )
        # The terms read the transformer layers only: the pooler and the
        # classification head take no part in this stage, so they are left
        # out of the trained variables (Keras would warn that they get no
        # gradients) and keep their initial weights for the next stage.
        head = unused_in_general_distillation(student)
        for layer in head:
            layer.trainable = False
        try:
            distiller = TextDistiller(student, teacher, losses=terms, alpha=0.0)
            distiller.compile(optimizer=keras.optimizers.AdamW(spec["learning_rate"]))
            history = distiller.fit(
                self.transfer_set[0],
                epochs=spec["epochs"],
                batch_size=spec["batch_size"],
                callbacks=[self.pipeline.backup("general")],
                verbose=verbosity(),
            )
        finally:
            for layer in head:
                layer.trainable = True
            for term in terms:
                term.detach()  # the teacher goes back to the fused attention kernel
        self.pipeline.save_history(history, "general")
        return {
            "student": self.save_student(student, "general/student.keras"),
            "params": int(student.count_params()),
        }

    def stage_distill(self, results):
        spec = self.config["distill"]
        (_, y_test), tokens_test = self.data[1], self.tokens[1]
        tokens_train, y_train = self.transfer_set
        if results["general"].get("skipped"):
            student = self._new_student(self.teacher)
        else:
            student = self.load_student(results["general"]["student"])
        distiller = TextDistiller(
            student,
            teacher=None,
            losses=[SoftTargetKD(temperature=spec["temperature"])],
            alpha=spec["alpha"],
        )
        distiller.compile(
            optimizer=keras.optimizers.AdamW(spec["learning_rate"]), metrics=["accuracy"]
        )
        history = distiller.fit(
            tokens_train,
            {"labels": y_train, "teacher_logits": self._teacher_logits(tokens_train)},
            epochs=spec["epochs"],
            batch_size=spec["batch_size"],
            callbacks=[self.pipeline.backup("distill")],
            verbose=verbosity(),
        )
        self.pipeline.save_history(history, "distill")
        return {
            "student": self.save_student(student, "distill/student.keras"),
            "accuracy": accuracy(student, tokens_test, y_test),
            "params": int(student.count_params()),
        }

    def _teacher_logits(self, tokens_train) -> np.ndarray:
        """The teacher's logits on the transfer set, computed once (offline
        KD) and kept in `distill/teacher_logits.npy` for a resumed run."""
        path = self.run_dir / "distill" / "teacher_logits.npy"
        if path.exists():
            logits = np.load(path)
            if len(logits) == len(tokens_train["token_ids"]):
                return logits
        logits = predict_logits(self.teacher, tokens_train, batch_size=64)
        with atomic_path(path, overwrite=True) as tmp:
            np.save(tmp, logits)
        return logits

    def stage_export(self, results):
        spec = self.config["export"]
        if not spec["enabled"]:
            return {"skipped": True}
        sample = {k: v[: spec["parity_samples"]] for k, v in self.tokens[1].items()}
        names = self._model_names(spec["models"], results)
        artifacts = {}
        for name in names:
            model = self._model(name, results)
            folder = self.run_dir / "export" / name
            entry = {}
            modes = list(spec["tflite"])
            if name == names[-1] and name != "teacher":
                # The quantize section's modes: of the most compressed student.
                modes += [m for m in self.config["quantize"]["modes"] if m not in modes]
            for mode in modes:
                quantization = None if mode == "float" else mode
                path = folder / ("model.tflite" if quantization is None else f"model_{mode}.tflite")
                try:
                    report = export_text_tflite(
                        model,
                        folder,
                        sample,
                        quantization=quantization,
                        overwrite=True,
                        min_top1_agreement=spec["min_top1"] if quantization else None,
                    )
                except ParityError as err:
                    if quantization is None:
                        raise  # a float model that disagrees with Keras is a bug
                    # A quantized model that flips decisions is a finding for
                    # the report (its row says FAIL), not a reason to lose the run.
                    report, path = err.report, None
                entry[mode] = {"path": path and str(path), "parity": report.to_dict()}
            if spec["onnx"]:
                report = export_text_onnx(model, folder, sample, overwrite=True)
                entry["onnx"] = {"path": str(folder / "model.onnx"), "parity": report.to_dict()}
            artifacts[name] = entry
        return {"artifacts": artifacts, "sequence_length": self.sequence_length}

    def stage_bench(self, results):
        spec = self.config["bench"]
        (_, _), (_, y_test) = self.data
        exported = results["export"].get("artifacts", {})
        rows = []
        for name in self._model_names(EXPORT_MODELS, results):
            model = self._model(name, results)
            row = {
                "model": name,
                "accuracy": accuracy(model, self.tokens[1], y_test),
                "params": int(model.count_params()),
            }
            for mode, artifact in exported.get(name, {}).items():
                row[mode] = self._bench_artifact(model, mode, artifact, spec, y_test)
            rows.append(row)
        report = {
            "command": command_line(),
            "backend": _backend(),
            "data": {
                "name": self.config["data"]["name"],
                "train": len(self.data[0][1]),
                "test": len(y_test),
                "classes": self.num_classes,
            },
            "sequence_length": self.sequence_length,
            "stage_seconds": {
                stage: self._seconds(stage) for stage in self.stages if stage != "bench"
            },
            "rows": rows,
            "config": self.config,
        }
        json_path = write_json(self.run_dir / "report.json", report, overwrite=True)
        markdown = render_ratio_report(report, modes=(*TFLITE_MODES, "onnx"))
        md_path = write_text(self.run_dir / "report.md", markdown, overwrite=True)
        print(md_path.read_text(), file=sys.stderr)
        return {"markdown": str(md_path), "json": str(json_path)}

    def _bench_artifact(self, model, mode, artifact, spec, y_test) -> dict[str, Any]:
        """Size, parity, test accuracy and latency of one exported file."""
        figures: dict[str, Any] = {"parity": artifact["parity"], "path": artifact["path"]}
        path = artifact["path"]
        if path is None:
            return figures
        figures["size_mb"] = Path(path).stat().st_size / 1e6
        if mode == "onnx":
            return figures
        flatbuffer = Path(path).read_bytes()
        if spec["tflite_accuracy"]:
            figures["accuracy"] = evaluate_accuracy(flatbuffer, self.tokens[1], y_test)
        latency: dict[str, dict[str, float]] = {}
        for length in spec["sequence_lengths"]:
            if length != self.sequence_length:
                # The exported model has a fixed length; others are converted
                # here for timing only (same weights and quantization).
                quantization = None if mode == "float" else mode
                at_length = convert_to_flatbuffer(fixed_length_model(model, length), quantization)
            else:
                at_length = flatbuffer
            latency[str(length)] = {
                str(threads): tflite_latency_ms(
                    at_length, length, threads, warmup=spec["warmup"], runs=spec["runs"]
                )
                for threads in spec["threads"]
            }
        figures["p50_ms"] = latency
        return figures

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _model_names(names, results) -> list[str]:
        """`names`, plus the pruned student when the prune stage ran."""
        pruned = not results["prune"].get("skipped") and "student" in names
        return [*names, "student_pruned"] if pruned else list(names)

    def _model(self, name: str, results):
        if name == "teacher":
            return self.teacher
        # Exported and measured, never trained again.
        stage = "prune" if name == "student_pruned" else "distill"
        return self.load_student(results[stage]["student"])

    def _seconds(self, stage: str) -> float | None:
        path = self.pipeline.marker(stage)
        return json.loads(path.read_text()).get("seconds") if path.exists() else None


def tflite_latency_ms(
    flatbuffer: bytes | str | os.PathLike,
    sequence_length: int,
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
) -> float:
    """Median (p50) milliseconds of one batch-1 `invoke()` of a text TFLite
    model at `sequence_length`, on `num_threads` CPU threads, measured by
    `kd_keras.bench.measure_latency` (inputs: a full-length sequence of
    token id 1, set once before the timed runs)."""
    if not isinstance(flatbuffer, bytes):
        flatbuffer = Path(flatbuffer).read_bytes()
    feed = {n: np.ones((1, int(sequence_length)), np.int32) for n in TOKEN_INPUTS}
    feed["segment_ids"][:] = 0
    result = measure_latency(
        flatbuffer, threads=num_threads, runs=runs, warmup=warmup, inputs=feed, name="text"
    )
    return float(result.p50_ms)


def _backend() -> str:
    return keras.backend.backend()
