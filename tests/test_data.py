"""Offline dataset loaders and seeded splits (backend-independent NumPy)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from kd_keras.data import (
    few_labels_split,
    load_digits,
    load_fashion_mnist,
    read_idx,
    train_test_split,
)
from kd_keras.data.fashion_mnist import DEBIAN_DIR


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand from the format spec: 0, 0, type, rank,
    big-endian uint32 sizes, then the raw data."""
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def write(path: Path, content: bytes) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_uint8_images_from_known_bytes(tmp_path, suffix):
    # 2 images of 2x3 pixels; values chosen so any axis mix-up shows.
    payload = bytes([0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 255])
    path = write(tmp_path / f"images-idx3-ubyte{suffix}", idx_bytes(0x08, (2, 2, 3), payload))
    images = read_idx(path)
    expected = np.array(
        [[[0, 1, 2], [3, 4, 5]], [[10, 11, 12], [13, 14, 255]]], dtype=np.uint8
    )
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_labels_and_big_endian_types(tmp_path, suffix):
    content = idx_bytes(0x08, (4,), b"\x09\x00\x03\x07")
    labels = read_idx(write(tmp_path / f"l-idx1-ubyte{suffix}", content))
    np.testing.assert_array_equal(labels, [9, 0, 3, 7])

    int32 = struct.pack(">3i", -2, 70000, 1)
    values = read_idx(write(tmp_path / f"i-idx1{suffix}", idx_bytes(0x0C, (3,), int32)))
    np.testing.assert_array_equal(values, [-2, 70000, 1])

    floats = struct.pack(">2f", 0.5, -1.25)
    values = read_idx(write(tmp_path / f"f-idx1{suffix}", idx_bytes(0x0D, (2,), floats)))
    np.testing.assert_array_equal(values, np.array([0.5, -1.25], dtype=np.float32))


def test_read_idx_rejects_bad_magic_and_truncated_data(tmp_path):
    bad_magic = write(tmp_path / "bad", b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad_magic)
    truncated = write(tmp_path / "short", idx_bytes(0x08, (2, 3), bytes(5)))
    with pytest.raises(ValueError, match=r"header says \(2, 3\) but holds 5 values"):
        read_idx(truncated)


def write_fashion_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tiny, well-formed Fashion-MNIST folder (3 train / 2 test images)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 9, 0, 1, 2], dtype=np.uint8)
    for prefix, sl in (("train", slice(0, 3)), ("t10k", slice(3, 5))):
        img, lab = images[sl], labels[sl]
        write(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(0x08, img.shape, img.tobytes()))
        write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(0x08, lab.shape, lab.tobytes()))
    return images, labels


def test_load_fashion_mnist_from_folder_and_env(tmp_path, monkeypatch):
    images, labels = write_fashion_folder(tmp_path)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(tmp_path)
    assert x_train.shape == (3, 28, 28, 1) and x_test.shape == (2, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    np.testing.assert_allclose(x_train[..., 0], images[:3] / 255.0, atol=1e-7)
    np.testing.assert_allclose(x_test[..., 0], images[3:] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y_train, labels[:3])
    np.testing.assert_array_equal(y_test, labels[3:])

    monkeypatch.setenv("KD_KERAS_FASHION_MNIST", str(tmp_path))
    (x_env, _), _ = load_fashion_mnist()
    np.testing.assert_array_equal(x_env, x_train)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "KD_KERAS_FASHION_MNIST" in message


def test_train_test_split_is_stratified_seeded_and_disjoint():
    y = np.repeat(np.arange(4), [40, 20, 100, 8]).astype("int32")
    x = np.arange(len(y))  # ids: lets the test trace every sample
    (x_tr, y_tr), (x_te, y_te) = train_test_split(x, y, test_fraction=0.25, seed=3)

    # Disjoint and complete, labels travel with their samples.
    assert set(x_tr).isdisjoint(x_te)
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr, x_te])), x)
    np.testing.assert_array_equal(y_tr, y[x_tr])
    np.testing.assert_array_equal(y_te, y[x_te])
    # Stratified: round(count * fraction) of each class in the test split.
    np.testing.assert_array_equal(np.bincount(y_te, minlength=4), [10, 5, 25, 2])
    # Seeded: same seed, same split; another seed, another split.
    (x_tr2, _), (x_te2, _) = train_test_split(x, y, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(x_te, x_te2)
    np.testing.assert_array_equal(x_tr, x_tr2)
    (_, _), (x_te3, _) = train_test_split(x, y, test_fraction=0.25, seed=4)
    assert not np.array_equal(np.sort(x_te), np.sort(x_te3))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_train_test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction must be in"):
        train_test_split(np.zeros(10), np.zeros(10), test_fraction=fraction)


def test_few_labels_split_counts_balance_and_seed():
    y = np.repeat(np.arange(10), 60)
    mask = few_labels_split(y, labelled=65, seed=1)
    assert mask.dtype == bool and mask.shape == y.shape
    assert mask.sum() == 65
    per_class = np.bincount(y[mask], minlength=10)
    assert per_class.min() >= 6  # 65 // 10 per class, the rest anywhere
    np.testing.assert_array_equal(mask, few_labels_split(y, labelled=65, seed=1))
    assert not np.array_equal(mask, few_labels_split(y, labelled=65, seed=2))
    # The whole set can be labelled.
    assert few_labels_split(y, labelled=len(y)).all()


@pytest.mark.parametrize("labelled", [9, 601])
def test_few_labels_split_rejects_impossible_counts(labelled):
    with pytest.raises(ValueError, match=r"labelled must be between 10 \(one per class\) and 600"):
        few_labels_split(np.repeat(np.arange(10), 60), labelled=labelled)


def test_load_digits_shapes_range_and_split():
    (x_train, y_train), (x_test, y_test) = load_digits(seed=0)
    assert x_train.shape[1:] == (8, 8, 1) and x_test.shape[1:] == (8, 8, 1)
    assert len(x_train) + len(x_test) == 1797
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))
    (x_again, _), _ = load_digits(seed=0)
    np.testing.assert_array_equal(x_train, x_again)


@pytest.mark.slow
def test_real_fashion_mnist_from_debian_package():
    """The benchmark data: `apt-get install dataset-fashion-mnist` (CI does)."""
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(DEBIAN_DIR)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert 0.0 <= x_train.min() and x_train.max() == 1.0
