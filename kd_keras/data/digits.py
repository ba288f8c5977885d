"""scikit-learn's 1,797 8x8 digits: the embedded default (ships inside sklearn)."""

from __future__ import annotations

from kd_keras.data.splits import train_test_split


def load_digits(test_fraction: float = 0.25, seed: int = 0):
    """`(x_train, y_train), (x_test, y_test)`; images `(n, 8, 8, 1)` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:
        raise ImportError(
            "The digits dataset ships with scikit-learn: pip install scikit-learn"
        ) from err
    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype("float32")[..., None]
    y = bunch.target.astype("int32")
    return train_test_split(x, y, test_fraction=test_fraction, seed=seed)
