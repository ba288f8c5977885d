"""The pipeline's YAML file: read with `yaml.safe_load`, checked against a
schema before anything trains, with errors that name the bad key.

Example `pipeline.yaml`:

```yaml
run_dir: runs/digits
seed: 0
data: {name: digits}
teacher: {builder: cnn_teacher, epochs: 10}
student: {builder: cnn_student, kwargs: {filters: [8, 16]}}
distill: {epochs: 20, temperature: 4.0, alpha: 0.1}
prune: {final_sparsity: 0.5, epochs: 3}
quantize: {modes: [int8]}
export: {formats: [tflite, onnx]}
bench: {threads: [1, 2], runs: 100}
```
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

BUILDERS = ("cnn_teacher", "cnn_student")
DATASETS = ("digits", "fashion_mnist", "npz")

# section -> key -> (check, description, default). A default of REQUIRED
# must be given; None means optional.
REQUIRED = object()


def _int(minimum):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(low, high=None, open_low=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        above = v > low if open_low else v >= low
        return above and (high is None or v <= high)

    return check


def _choice(options):
    return lambda v: v in options


def _list_of(check):
    return lambda v: isinstance(v, list) and len(v) > 0 and all(check(x) for x in v)


_str = lambda v: isinstance(v, str) and v != ""  # noqa: E731
_dict = lambda v: isinstance(v, dict)  # noqa: E731
_bool = lambda v: isinstance(v, bool)  # noqa: E731

MODEL_KEYS = {
    "path": (_str, "a .keras file", None),
    "builder": (_choice(BUILDERS), f"one of {list(BUILDERS)}", None),
    "kwargs": (_dict, "a mapping of builder arguments", {}),
    "epochs": (_int(0), "an integer >= 0 (training epochs of a built model)", 10),
    "batch_size": (_int(1), "an integer >= 1", 64),
    "learning_rate": (_number(0, open_low=True), "a number > 0", 1e-3),
}

SCHEMA: dict[str, Any] = {
    "run_dir": (_str, "a folder path", "runs/pipeline"),
    "seed": (_int(0), "an integer >= 0", 0),
    "data": {
        "name": (_choice(DATASETS), f"one of {list(DATASETS)}", REQUIRED),
        "path": (_str, "a file or folder path", None),
        "test_fraction": (_number(0, 1, open_low=True), "a number in (0, 1]", 0.25),
        "max_train": (_int(1), "an integer >= 1", None),
        "max_test": (_int(1), "an integer >= 1", None),
    },
    "teacher": MODEL_KEYS,
    "student": MODEL_KEYS,
    "distill": {
        "epochs": (_int(1), "an integer >= 1", 10),
        "temperature": (_number(0, open_low=True), "a number > 0", 4.0),
        "alpha": (_number(0, 1), "a number in [0, 1]", 0.1),
        "batch_size": (_int(1), "an integer >= 1", 64),
        "learning_rate": (_number(0, open_low=True), "a number > 0", 1e-3),
    },
    "prune": {
        "enabled": (_bool, "true or false", True),
        "final_sparsity": (_number(0, 1), "a number in [0, 1)", 0.5),
        "epochs": (_int(1), "an integer >= 1", 2),
        "batch_size": (_int(1), "an integer >= 1", 64),
        "learning_rate": (_number(0, open_low=True), "a number > 0", 5e-4),
    },
    "quantize": {
        "modes": (
            _list_of(_choice(("dynamic", "int8", "float16"))),
            "a list of dynamic / int8 / float16",
            ["int8"],
        ),
        "calibration_samples": (_int(1), "an integer >= 1", 256),
    },
    "export": {
        "formats": (_list_of(_choice(("tflite", "onnx"))), "a list of tflite / onnx", ["tflite"]),
    },
    "bench": {
        "threads": (_list_of(_int(1)), "a list of integers >= 1", [1, 2]),
        "xnnpack": (_list_of(_bool), "a list of true / false", [True]),
        "runs": (_int(1), "an integer >= 1", 50),
        "warmup": (_int(0), "an integer >= 0", 5),
    },
}
OPTIONAL_SECTIONS = ("prune", "quantize", "export", "bench", "distill")


class ConfigError(ValueError):
    """A pipeline file that cannot run; the message names the key."""


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a pipeline YAML file; returns it with defaults.

    Example:

    ```python
    config = load_config("examples/digits.yaml")
    config["distill"]["epochs"]
    ```
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    return validate_config(raw, source=str(path))


def validate_config(raw: Any, source: str = "config") -> dict[str, Any]:
    """Checks `raw` against `SCHEMA` and fills in defaults.

    Raises:
        ConfigError: naming the first unknown, missing or ill-typed key, with
            a close match for misspellings.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    config = _validate_section(raw, SCHEMA, prefix="", source=source)
    for section in ("teacher", "student"):
        spec = config[section]
        if (spec.get("path") is None) == (spec.get("builder") is None):
            raise ConfigError(
                f"{source}: {section} needs exactly one of '{section}.path' (a .keras "
                f"file) or '{section}.builder' ({' / '.join(BUILDERS)})."
            )
    if config["data"]["name"] == "npz" and not config["data"].get("path"):
        raise ConfigError(
            f"{source}: data.name is npz, so 'data.path' must name a .npz file with "
            "x_train, y_train, x_test, y_test."
        )
    return config


def _validate_section(raw: dict, schema: dict, prefix: str, source: str) -> dict:
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
            out[key] = _validate_section(value, rule, f"{name}.", source)
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
