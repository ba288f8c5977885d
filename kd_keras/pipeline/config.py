"""The pipeline's YAML file: read with `yaml.safe_load`, checked against a
schema before anything trains, with errors that name the bad key.

Example `pipeline.yaml` with every key (values shown are the defaults where
a key is optional; `#` comments say when a key applies):

```yaml
task: image              # `task: text` files: kd_keras.pipeline.text_config
run_dir: runs/pipeline
seed: 0
data:
  name: digits           # digits | fashion_mnist | npz | tfds | image_folder
  path: null             # npz: the .npz file; image_folder: the folder;
                         # fashion_mnist: folder of the IDX files (optional)
  test_fraction: 0.25    # digits / image_folder without train/ and test/
  max_train: null        # keep only the first N training / test samples
  max_test: null
  tfds_name: null        # tfds: e.g. fashion_mnist
  data_dir: null         # tfds: TFDS data folder (prepared datasets)
  manual_dir: null       # tfds: source files to build from (never downloaded)
  train_split: train     # tfds
  test_split: test       # tfds
  image_size: null       # image_folder: [height, width] to resize to
  color_mode: grayscale  # image_folder: grayscale | rgb | rgba
teacher:                 # exactly one of path / builder / preset
  path: null             # a .keras file
  builder: null          # cnn_teacher | cnn_student
  preset: null           # keras-hub preset name or local preset folder
  kwargs: {}             # builder arguments
  epochs: 10             # training of a built teacher, fine-tuning of a preset
  batch_size: 64
  learning_rate: 0.001
student: {builder: cnn_student, kwargs: {}}   # path / builder, as the teacher
distill:
  epochs: 10
  temperature: 2.0       # of every term that takes one and does not set its own
  alpha: 0.5
  batch_size: 64
  learning_rate: 0.001
  losses: [soft_target]  # distillation terms (kd_keras.losses.get), e.g.
                         # [soft_target, {dkd: {beta: 2}},
                         #  {hint: {teacher_layer: conv2, student_layer: conv2}}]
prune:
  enabled: true
  final_sparsity: 0.5    # unstructured magnitude pruning, or
  m_by_n: null           # "2:4": structured, exclusive with final_sparsity
  filters: null          # 0.5: remove half the filters (a smaller, faster model), exclusive
  distill: false         # fine-tune from the teacher
  temperature: null      # with distill: soft-target T (default: distill.temperature)
  alpha: null            # with distill: label weight (default: distill.alpha)
  epochs: 2
  batch_size: 64
  learning_rate: 0.001
  ramp: 0.5              # the sparsity rises over this fraction of the steps, then holds
  lr_schedule: hold-cosine   # rate held during the ramp, then cosine to 1 % | constant
quantize:
  method: ptq            # ptq: post-training, at export | qat: quantization-aware training
  modes: [int8]          # ptq: any of dynamic / int8 / float16; qat: [int8]
  calibration_samples: 256   # ptq int8
  epochs: 2              # qat
  batch_size: 64         # qat
  learning_rate: 0.0001  # qat
  distill: false         # qat inside the Distiller with the teacher
  temperature: 1.0       # with distill (tuned for the short QAT fine-tune)
  alpha: 0.2             # with distill: label weight, 1 - alpha weights the teacher
export:
  formats: [tflite]      # tflite / onnx
  batch_size: 1          # optional: a fixed batch in the .tflite files (static shapes)
  strip_strings: false   # drop tensor names and signatures from the .tflite files
bench: {threads: [1, 2], xnnpack: [true], runs: 50, warmup: 5}
```
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from kd_keras.defaults import (
    DEFAULT_ALPHA,
    DEFAULT_QAT_ALPHA,
    DEFAULT_QAT_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    PTQ_MODES,
)
from kd_keras.losses import get_terms
from kd_keras.pipeline.checks import (
    int_at_least,
    is_bool,
    is_mapping,
    list_of,
    non_empty_str,
    number_in,
    one_of,
)
from kd_keras.pipeline.data_sources import DATASETS
from kd_keras.pipeline.model_files import BUILDERS
from kd_keras.pipeline.prune_step import parse_m_by_n

# section -> key -> (check, description, default). A default of REQUIRED
# must be given; None means optional.
REQUIRED = object()


def _m_by_n(value) -> bool:
    try:
        parse_m_by_n(value)
    except ValueError:
        return False
    return True


def _term_list(v) -> bool:
    def term(t):
        return isinstance(t, str) or (
            isinstance(t, dict) and len(t) == 1 and isinstance(next(iter(t.values())), dict | None)
        )

    return isinstance(v, list) and len(v) > 0 and all(term(t) for t in v)


def _size(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(int_at_least(1)(x) for x in v)


MODEL_KEYS = {
    "path": (non_empty_str, "a .keras file", None),
    "builder": (one_of(BUILDERS), f"one of {list(BUILDERS)}", None),
    "kwargs": (is_mapping, "a mapping of builder arguments", {}),
    "epochs": (int_at_least(0), "an integer >= 0 (training epochs of a built model)", 10),
    "batch_size": (int_at_least(1), "an integer >= 1", 64),
    "learning_rate": (number_in(0, open_low=True), "a number > 0", 1e-3),
}
TEACHER_KEYS = {
    **MODEL_KEYS,
    "preset": (non_empty_str, "a keras-hub preset name or a local preset folder", None),
}
# data keys that only one source reads: key -> the data.name it belongs to.
SOURCE_KEYS = {
    "tfds_name": "tfds",
    "data_dir": "tfds",
    "manual_dir": "tfds",
    "train_split": "tfds",
    "test_split": "tfds",
    "image_size": "image_folder",
    "color_mode": "image_folder",
}

SCHEMA: dict[str, Any] = {
    "task": (
        one_of(("image",)),
        "image (task: text files are read by kd_keras.pipeline.load_text_config)",
        "image",
    ),
    "run_dir": (non_empty_str, "a folder path", "runs/pipeline"),
    "seed": (int_at_least(0), "an integer >= 0", 0),
    "data": {
        "name": (one_of(DATASETS), f"one of {list(DATASETS)}", REQUIRED),
        "path": (non_empty_str, "a file or folder path", None),
        "test_fraction": (
            lambda v: number_in(0, 1, open_low=True)(v) and v < 1,
            "a number in (0, 1)",
            0.25,
        ),
        "max_train": (int_at_least(1), "an integer >= 1", None),
        "max_test": (int_at_least(1), "an integer >= 1", None),
        "tfds_name": (non_empty_str, "a TensorFlow Datasets name, e.g. fashion_mnist", None),
        "data_dir": (non_empty_str, "a folder path (TFDS's data_dir)", None),
        "manual_dir": (non_empty_str, "a folder of the dataset's source files", None),
        "train_split": (non_empty_str, "a TFDS split, e.g. train or train[:90%]", None),
        "test_split": (non_empty_str, "a TFDS split, e.g. test", None),
        "image_size": (_size, "[height, width], two integers >= 1", None),
        "color_mode": (
            one_of(("grayscale", "rgb", "rgba")),
            "one of grayscale / rgb / rgba",
            None,
        ),
    },
    "teacher": TEACHER_KEYS,
    "student": MODEL_KEYS,
    "distill": {
        "epochs": (int_at_least(1), "an integer >= 1", 10),
        "temperature": (number_in(0, open_low=True), "a number > 0", DEFAULT_TEMPERATURE),
        "alpha": (number_in(0, 1), "a number in [0, 1]", DEFAULT_ALPHA),
        "batch_size": (int_at_least(1), "an integer >= 1", 64),
        "learning_rate": (number_in(0, open_low=True), "a number > 0", 1e-3),
        "losses": (
            _term_list,
            "a non-empty list of distillation terms, each a name (soft_target, dkd, ...) "
            "or a one-entry mapping of a name to its arguments, e.g. {dkd: {beta: 2}}",
            ["soft_target"],
        ),
    },
    "prune": {
        "enabled": (is_bool, "true or false", True),
        "final_sparsity": (
            lambda v: number_in(0, 1)(v) and v < 1,
            "a number in [0, 1) (0.5 when m_by_n is not set)",
            None,
        ),
        "m_by_n": (_m_by_n, "'M:N' with 1 <= M < N, e.g. '2:4'", None),
        "filters": (
            lambda v: number_in(0, 1)(v) and v < 1,
            "a number in [0, 1) (the share of filters removed)",
            None,
        ),
        "distill": (is_bool, "true or false", False),
        "temperature": (
            number_in(0, open_low=True),
            "a number > 0 (default: distill.temperature)",
            None,
        ),
        "alpha": (number_in(0, 1), "a number in [0, 1] (default: distill.alpha)", None),
        "epochs": (int_at_least(1), "an integer >= 1", 2),
        "batch_size": (int_at_least(1), "an integer >= 1", 64),
        "learning_rate": (number_in(0, open_low=True), "a number > 0", 1e-3),
        "ramp": (
            number_in(0, 1, open_low=True),
            "a number in (0, 1] (fraction of the steps that raise the sparsity)",
            0.5,
        ),
        "lr_schedule": (
            one_of(("hold-cosine", "constant")),
            "'hold-cosine' (held during the ramp, then cosine to 1 %) or 'constant'",
            "hold-cosine",
        ),
    },
    "quantize": {
        "method": (one_of(("ptq", "qat")), "ptq or qat", "ptq"),
        "modes": (
            list_of(one_of(PTQ_MODES)),
            "a list of dynamic / int8 / float16",
            ["int8"],
        ),
        "calibration_samples": (int_at_least(1), "an integer >= 1", 256),
        "epochs": (int_at_least(1), "an integer >= 1", 2),
        "batch_size": (int_at_least(1), "an integer >= 1", 64),
        "learning_rate": (number_in(0, open_low=True), "a number > 0", 1e-4),
        "distill": (is_bool, "true or false", False),
        "temperature": (number_in(0, open_low=True), "a number > 0", DEFAULT_QAT_TEMPERATURE),
        "alpha": (number_in(0, 1), "a number in [0, 1]", DEFAULT_QAT_ALPHA),
    },
    "export": {
        "formats": (list_of(one_of(("tflite", "onnx"))), "a list of tflite / onnx", ["tflite"]),
        "batch_size": (int_at_least(1), "an integer >= 1 (leave it out for a free batch)", None),
        "strip_strings": (is_bool, "true or false", False),
    },
    "bench": {
        "threads": (list_of(int_at_least(1)), "a list of integers >= 1", [1, 2]),
        "xnnpack": (list_of(is_bool), "a list of true / false", [True]),
        "runs": (int_at_least(1), "an integer >= 1", 50),
        "warmup": (int_at_least(0), "an integer >= 0", 5),
    },
}
OPTIONAL_SECTIONS = ("prune", "quantize", "export", "bench", "distill")


class ConfigError(ValueError):
    """A pipeline file that cannot run; the message names the key."""


def read_yaml(path: str | os.PathLike) -> Any:
    """The YAML file's content, read with `yaml.safe_load` (no validation)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a pipeline YAML file; returns it with defaults.

    Example:

    ```python
    from pathlib import Path

    Path("digits.yaml").write_text('''
    data: {name: digits}
    teacher: {builder: cnn_teacher}
    student: {builder: cnn_student}
    distill: {epochs: 3}
    ''')
    config = load_config("digits.yaml")
    config["distill"]["epochs"]  # 3; keys left out hold their defaults
    ```
    """
    return validate_config(read_yaml(path), source=str(path))


def validate_config(raw: Any, source: str = "config") -> dict[str, Any]:
    """Checks `raw` against `SCHEMA` and fills in defaults.

    Raises:
        ConfigError: naming the first unknown, missing or ill-typed key, with
            a close match for misspellings.

    Example:

    ```python
    raw = {
        "data": {"name": "digits"},
        "teacher": {"builder": "cnn_teacher"},
        "student": {"builder": "cnn_student"},
    }
    config = validate_config(raw)
    config["distill"]["temperature"]  # the default, filled in
    try:
        validate_config({**raw, "distil": {"epochs": 3}})
    except ConfigError as error:
        print(error)  # names 'distil' and suggests 'distill'
    ```
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    config = validate_section(raw, SCHEMA, prefix="", source=source)
    _check_soft_targets(raw, config, source)
    _check_terms(config["distill"], source)
    _check_models(config, source)
    _check_data(config["data"], source)
    check_prune(config["prune"], source)
    if config["quantize"]["method"] == "qat" and config["quantize"]["modes"] != ["int8"]:
        raise ConfigError(
            f"{source}: 'quantize.modes' is {config['quantize']['modes']}, but "
            "quantize.method qat trains int8 ranges and exports int8 only: use "
            "modes: [int8], or method: ptq for dynamic / float16."
        )
    if config["quantize"]["method"] == "qat" and "tflite" not in config["export"]["formats"]:
        raise ConfigError(
            f"{source}: quantize.method is qat, whose int8 model is a .tflite: add tflite "
            "to 'export.formats'."
        )
    return config


def _check_models(config, source):
    hints = {"path": "a .keras file", "builder": " / ".join(BUILDERS), "preset": "keras-hub"}
    choices = {"teacher": ("path", "builder", "preset"), "student": ("path", "builder")}
    for section, keys in choices.items():
        given = [f"{section}.{k}" for k in keys if config[section].get(k) is not None]
        if len(given) != 1:
            options = " or ".join(f"'{section}.{k}' ({hints[k]})" for k in keys)
            raise ConfigError(
                f"{source}: {section} needs exactly one of {options}; got {given or 'none'}."
            )


def _check_data(spec, source):
    name = spec["name"]
    for key, owner in SOURCE_KEYS.items():
        if spec.get(key) is not None and owner != name:
            raise ConfigError(
                f"{source}: 'data.{key}' applies to data.name: {owner}, not {name}; "
                f"remove it or set data.name: {owner}."
            )
    needs = {
        "npz": [("path", "a .npz file with x_train, y_train, x_test, y_test")],
        "image_folder": [("path", "a folder of <class>/<images> (or train/ and test/)")],
        "tfds": [
            ("tfds_name", "the TensorFlow Datasets name, e.g. fashion_mnist"),
            ("data_dir", "TFDS's data folder (prepared data, or where to build it)"),
        ],
    }
    for key, what in needs.get(name, []):
        if not spec.get(key):
            raise ConfigError(f"{source}: data.name is {name}, so 'data.{key}' must name {what}.")
    if name == "tfds" and spec.get("path") is not None:
        raise ConfigError(
            f"{source}: 'data.path' is not read by data.name: tfds; use 'data.data_dir' "
            "(and 'data.manual_dir' for source files)."
        )


def _check_soft_targets(raw, config, source):
    """A temperature / alpha written for a stage that does not distill would be
    read by nothing: say so rather than train without it."""
    for stage in ("prune", "quantize"):
        given = [k for k in ("temperature", "alpha") if (raw.get(stage) or {}).get(k) is not None]
        if given and not config[stage]["distill"]:
            raise ConfigError(
                f"{source}: '{stage}.{given[0]}' applies when {stage}.distill is true; "
                f"set {stage}.distill: true, or remove it."
            )


def _check_terms(spec, source):
    """Builds each of `distill.losses` once, so an unknown name or argument is
    named (with a close match) before anything trains."""
    for i, term in enumerate(spec["losses"]):
        try:
            get_terms([term], temperature=spec["temperature"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: 'distill.losses[{i}]' ({term!r}): {err}") from None


def check_prune(spec, source):
    if spec["m_by_n"] is not None and spec["final_sparsity"] is not None:
        raise ConfigError(
            f"{source}: 'prune.m_by_n' and 'prune.final_sparsity' exclude each other: "
            "m_by_n fixes the sparsity at M/N; remove one of them."
        )
    if spec["filters"] is not None and (
        spec["m_by_n"] is not None or spec["final_sparsity"] is not None
    ):
        raise ConfigError(
            f"{source}: 'prune.filters' removes whole filters; it excludes "
            "'prune.final_sparsity' and 'prune.m_by_n'. Remove one of them."
        )
    if spec["m_by_n"] is None and spec["final_sparsity"] is None and spec["filters"] is None:
        spec["final_sparsity"] = 0.5


def validate_section(raw: dict, schema: dict, prefix: str, source: str) -> dict:
    for key in raw:
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'"
                + (f"; did you mean '{prefix}{hint[0]}'?" if hint else "")
                + f" Known keys here: {', '.join(schema)}."
            )
    out = {}
    for key, rule in schema.items():
        name = f"{prefix}{key}"
        if isinstance(rule, dict):
            value = raw.get(key)
            if value is None:
                if key not in OPTIONAL_SECTIONS:
                    raise ConfigError(f"{source}: missing section '{name}'.")
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{name}' must be a mapping, got {value!r}.")
            out[key] = validate_section(value, rule, f"{name}.", source)
            continue
        check, description, default = rule
        if key not in raw or raw[key] is None:
            if default is REQUIRED:
                raise ConfigError(f"{source}: missing key '{name}' ({description}).")
            out[key] = copy.deepcopy(default)
            continue
        if not check(raw[key]):
            raise ConfigError(f"{source}: '{name}' must be {description}, got {raw[key]!r}.")
        out[key] = raw[key]
    return out
