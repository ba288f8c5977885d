"""Fashion-MNIST (60k/10k) from local IDX files: the benchmark dataset.

Debian's `dataset-fashion-mnist` installs them in
`/usr/share/datasets/fashion-mnist/`; any folder holding the four
`*-idx?-ubyte[.gz]` files works (`KD_KERAS_FASHION_MNIST` points to one).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a NumPy array.

    Format: two zero bytes, a type byte, a rank byte, `rank` big-endian int32
    sizes, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r}).")
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * rank)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values.")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}. Install it with "
        "`apt-get install dataset-fashion-mnist` (files land in "
        f"{DEBIAN_DIR}), or set KD_KERAS_FASHION_MNIST to a folder holding the "
        "four IDX files."
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None):
    """`(x_train, y_train), (x_test, y_test)`: `(n, 28, 28, 1)` float32 in [0, 1]."""
    folder = Path(data_dir or os.environ.get("KD_KERAS_FASHION_MNIST", DEBIAN_DIR))
    splits = []
    for split in ("train", "test"):
        images, labels = (read_idx(_find(folder, stem)) for stem in _FILES[split])
        splits.append(((images.astype("float32") / 255.0)[..., None], labels.astype("int32")))
    return tuple(splits)
