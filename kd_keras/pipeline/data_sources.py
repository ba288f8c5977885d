"""The pipeline's image data: a YAML `data:` section or a command-line
`--data` value -> `(x_train, y_train), (x_test, y_test)` NumPy arrays, so
both mean the same thing.

Example:

```python
from kd_keras.pipeline.data_sources import load_data

(x, y), (x_test, y_test) = load_data({"name": "digits"})
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kd_keras import data

DATASETS = ("digits", "fashion_mnist", "npz", "tfds", "image_folder")


def load_data(spec: dict[str, Any], seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)` for a pipeline `data` section.

    `spec["name"]` is one of `DATASETS`; see `kd_keras.pipeline.config` for
    the keys of each source. Images come back float32, labels int.
    """
    name = spec["name"]
    fraction = spec.get("test_fraction", 0.25)
    if name == "digits":
        (xt, yt), (xe, ye) = data.load_digits(test_fraction=fraction, seed=seed)
    elif name == "fashion_mnist":
        (xt, yt), (xe, ye) = data.load_fashion_mnist(spec.get("path"))
    elif name == "tfds":
        (xt, yt), (xe, ye) = data.load_tfds(
            spec["tfds_name"],
            spec["data_dir"],
            manual_dir=spec.get("manual_dir"),
            train_split=spec.get("train_split") or "train",
            test_split=spec.get("test_split") or "test",
        )
    elif name == "image_folder":
        (xt, yt), (xe, ye) = data.load_image_folder(
            spec["path"],
            image_size=spec.get("image_size"),
            color_mode=spec.get("color_mode") or "grayscale",
            test_fraction=fraction,
            seed=seed,
        )
    elif name == "npz":
        (xt, yt), (xe, ye) = _load_npz(Path(spec["path"]))
    else:
        raise ValueError(f"data.name must be one of {list(DATASETS)}, got {name!r}.")
    if spec.get("max_train"):
        xt, yt = xt[: spec["max_train"]], yt[: spec["max_train"]]
    if spec.get("max_test"):
        xe, ye = xe[: spec["max_test"]], ye[: spec["max_test"]]
    return (xt.astype("float32"), yt), (xe.astype("float32"), ye)


def _load_npz(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"data.path {path} does not exist.")
    arrays = np.load(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
    if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)} (data.name: npz).")
    return tuple((arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test"))


def data_spec(text: str) -> dict[str, Any]:
    """The `data` section meant by a command-line `--data` value: a built-in
    name, a `.npz` file or an image folder."""
    if text in ("digits", "fashion_mnist"):
        return {"name": text, "test_fraction": 0.25}
    if text.endswith(".npz"):
        if not Path(text).is_file():
            raise ValueError(f"--data {text}: no such .npz file.")
        return {"name": "npz", "path": text}
    if Path(text).is_dir():
        return {"name": "image_folder", "path": text, "test_fraction": 0.25}
    raise ValueError(
        f"--data {text!r} is not digits, fashion_mnist, an existing .npz file (x_train, "
        "y_train, x_test, y_test) or an image folder (<class>/<images>)."
    )


def num_classes(*labels: np.ndarray) -> int:
    return int(max(int(np.max(y)) for y in labels)) + 1


def sample_count(x) -> int:
    """Samples in `x`: one array, or named inputs `{name: array}` of one batch size."""
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    return len(x)
