"""Seeded splits, so every accuracy figure is on a fixed held-out set."""

from __future__ import annotations

import numpy as np


def train_test_split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """Stratified, seeded split: `(x_train, y_train), (x_test, y_test)`."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.append(idx[: max(1, int(round(len(idx) * test_fraction)))])
    test_idx = np.sort(np.concatenate(test_idx))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def few_labels_split(y: np.ndarray, labelled: int, seed: int = 0) -> np.ndarray:
    """Boolean mask choosing `labelled` samples, class-balanced, seeded.

    The rest are the unlabeled transfer set of semi-supervised distillation.
    """
    classes = np.unique(y)
    if labelled < len(classes) or labelled > len(y):
        raise ValueError(
            f"labelled must be between {len(classes)} (one per class) and {len(y)}, got {labelled}."
        )
    rng = np.random.default_rng(seed)
    per_class = labelled // len(classes)
    chosen = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes]
    chosen = np.concatenate(chosen)
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    extra = rng.choice(rest, labelled - len(chosen), replace=False)
    mask = np.zeros(len(y), dtype=bool)
    mask[np.concatenate([chosen, extra])] = True
    return mask
