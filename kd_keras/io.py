"""Atomic writes: a reader never sees half a file, a crash leaves no debris.

Every artifact kd_keras writes goes through `atomic_path`: the content is
written to a temporary name in the destination folder (same filesystem, so
the final `os.replace` is a rename, atomic on POSIX and Windows) and only
moved into place once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def parity_report_path(artifact: str | os.PathLike) -> Path:
    """Where the parity figures of `artifact` are written: `<artifact>.parity.json`.

    Export writes this file and the benchmark reads it, so the name lives on
    the ground floor that both import.

    Example:

    ```python
    parity_report_path("out/student.tflite")  # Path("out/student.tflite.parity.json")
    ```
    """
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".parity.json")


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuses an existing `path` unless `overwrite`; creates the parent folder.

    Example:

    ```python
    path = check_output_path("runs/student.tflite", overwrite=False)
    ```
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists. Pass overwrite=True to replace it, or choose another path."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, overwrite: bool = False, directory: bool = False
) -> Iterator[Path]:
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    On any exception the temporary file (or folder, with `directory=True`)
    is removed and `path` is left as it was.

    Example:

    ```python
    flatbuffer = b"..."  # the bytes to publish
    with atomic_path("model.tflite") as tmp:
        tmp.write_bytes(flatbuffer)
    ```
    """
    path = check_output_path(path, overwrite)
    # The temp name keeps the real suffix so that tools which dispatch on it
    # (onnxruntime, the runners) can read the unpublished file.
    prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
        # Writers such as SavedModel export want to create the folder themselves.
        tmp.rmdir()
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            _replace_directory(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Atomically writes `data` to `path` (refusing an existing one unless `overwrite`)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Atomically writes UTF-8 `text` to `path`."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: str | os.PathLike, obj, overwrite: bool = False) -> Path:
    """Atomically writes `obj` as indented JSON to `path`."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", overwrite)


def _replace_directory(tmp: Path, path: Path) -> None:
    # os.replace cannot move a folder onto a non-empty one: move the old one
    # aside first, so there is never a moment without a complete folder on disk
    # other than the two renames themselves.
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
