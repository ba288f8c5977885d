"""Model size on disk: raw bytes and gzip-compressed bytes.

The gzip figure is what a download or an APK costs, and the one that shows
pruning: a pruned float model is as large as a dense one on disk, but its
runs of zeros compress away.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import tarfile
from pathlib import Path


@dataclasses.dataclass
class SizeResult:
    """Size of one artifact in bytes."""

    path: str
    raw_bytes: int
    gzip_bytes: int

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / max(1, self.gzip_bytes)


def file_size(path: str | os.PathLike, level: int = 9) -> SizeResult:
    """Raw and gzip size (compression `level`) of a file, or of a folder
    (a SavedModel): the sum of its files, and the gzip of their tar.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student.tflite")
    size = file_size("student.tflite")
    print(size.raw_bytes, size.gzip_bytes)
    ```
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.is_dir():
        raw = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(path, arcname=path.name)
        payload = buffer.getvalue()
    else:
        payload = path.read_bytes()
        raw = len(payload)
    # mtime=0: the same bytes always give the same size.
    return SizeResult(str(path), raw, len(gzip.compress(payload, compresslevel=level, mtime=0)))
