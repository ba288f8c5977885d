"""The VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014): 10,605
sentences rated from -4 to 4 by 10 to 15 people, shipped inside the
`vaderSentiment==3.3.2` source archive
(`additional_resources/hutto_ICWSM_2014.tar.gz`). Binary sentiment:
label 1 when the mean rating is > 0, 0 when < 0; neutral (0) sentences are
dropped."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from kd_keras.data.splits import train_test_split

SDIST = "vaderSentiment-3.3.2.tar.gz"
INNER = "hutto_ICWSM_2014.tar.gz"
MOVIES = "movieReviewSnippets_GroundTruth.txt"
ENV = "KD_KERAS_VADER"
_HOW = (
    f"Download the source archive (no install needed): pip download --no-deps "
    f"--no-binary :all: vaderSentiment==3.3.2 -d <folder>, then pass "
    f"path='<folder>/{SDIST}' or set {ENV} to it."
)


def _member(archive: tarfile.TarFile, suffix: str) -> bytes | None:
    for name in archive.getnames():
        if name.endswith(suffix):
            handle = archive.extractfile(name)
            if handle is not None:
                return handle.read()
    return None


def _ground_truth_bytes(path: Path) -> bytes:
    """The movie ground-truth file from the sdist, the inner archive, the
    extracted text file, or a folder holding any of them."""
    if path.is_dir():
        for name in (
            MOVIES,
            f"hutto_ICWSM_2014/{MOVIES}",
            INNER,
            f"additional_resources/{INNER}",
            SDIST,
        ):
            if (path / name).exists():
                return _ground_truth_bytes(path / name)
        raise FileNotFoundError(f"No {SDIST}, {INNER} or {MOVIES} in {path}. {_HOW}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. {_HOW}")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as archive:
            data = _member(archive, MOVIES)
            if data is None:
                inner = _member(archive, INNER)
                if inner is not None:
                    with tarfile.open(fileobj=io.BytesIO(inner)) as nested:
                        data = _member(nested, MOVIES)
        if data is None:
            raise FileNotFoundError(f"{path} holds no {MOVIES}. {_HOW}")
        return data
    return path.read_bytes()


def _default_path() -> Path:
    for candidate in (os.environ.get(ENV), SDIST, f"downloads/{SDIST}"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError(f"The VADER movie-review snippets were not found. {_HOW}")


def read_vader_movies(path: str | os.PathLike | None = None):
    """All rated sentences: `(texts, mean_ratings)`, in file order."""
    raw = _ground_truth_bytes(Path(path) if path is not None else _default_path())
    texts, ratings = [], []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(
                f"Unexpected line in {MOVIES}: {line[:80]!r} (want id<TAB>rating<TAB>text)."
            )
        ratings.append(float(fields[1]))
        texts.append(fields[2].strip())
    return np.array(texts, dtype=object), np.array(ratings, dtype="float32")


def load_vader_movies(
    path: str | os.PathLike | None = None, test_fraction: float = 0.2, seed: int = 0
):
    r"""`(x_train, y_train), (x_test, y_test)`: sentences and int32 labels
    (1 = positive mean rating, 0 = negative; neutral ones dropped), a
    stratified split fixed by `seed`.

    Example:

    ```python
    # The loader takes the `vaderSentiment-3.3.2.tar.gz` source archive, the
    # inner archive or the ground-truth file itself: `id<TAB>rating<TAB>text`.
    rows = [(0.5 + i / 10, f"a fine film {i}") for i in range(5)]
    rows += [(-1.5 - i / 10, f"a dull film {i}") for i in range(5)]
    rows += [(0.0, "a film")]  # neutral: dropped
    with open("movieReviewSnippets_GroundTruth.txt", "w") as f:
        for i, (rating, text) in enumerate(rows):
            f.write(f"{i}_1\t{rating}\t{text}\n")

    (x_train, y_train), (x_test, y_test) = load_vader_movies(
        "movieReviewSnippets_GroundTruth.txt", test_fraction=0.2
    )
    assert len(x_train) + len(x_test) == 10 and set(y_test) == {0, 1}
    ```
    """
    texts, ratings = read_vader_movies(path)
    keep = ratings != 0
    labels = (ratings[keep] > 0).astype("int32")
    return train_test_split(texts[keep], labels, test_fraction=test_fraction, seed=seed)
