"""Pruning masks, apart from any layer: plain `keras.ops` functions of a weight
tensor, traceable inside `jit` on every backend (no data-dependent shapes:
the threshold is gathered from a full sort instead of a dynamic `top_k`).

- `magnitude_mask`: TFMOT's unstructured rule. Keep the `k = max(round(n * (1 - s)), 1)`
  largest magnitudes: mask = |w| >= (k-th largest |w|). Ties at the threshold
  are all kept, as in TFMOT (its extra one-hot term is always covered by `>=`).
- `block_mask`: the same rule on blocks of a 2-D view of the weights, each
  block scored by the average (over rows, then columns, as TFMOT) or max
  magnitude of its entries.
- `m_by_n_mask`: in every group of `n` consecutive weights along the reduced
  (input) axis, zero the `m` smallest magnitudes (TFMOT's `sparsity_m_by_n`,
  e.g. (2, 4) = 2:4 structured sparsity). Ties go to the lower index, as
  `tf.math.top_k`; a length that is not a multiple of `n` is zero-padded.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from keras import ops


def magnitude_mask(weights, sparsity, round_to: int = 1):
    """Unstructured magnitude mask of `weights` at `sparsity`.

    Args:
        weights: a tensor of any shape.
        sparsity: scalar fraction of entries to zero, in [0, 1).
        round_to: the kept count `k` is rounded up to a multiple of this
            (at most the size): whole channels kept in multiples of 4 or 8
            suit SIMD kernels once filters are removed.

    Returns:
        `(mask, threshold)`: a mask shaped and typed like `weights` (1 = keep)
        and the magnitude threshold (the k-th largest |w|).

    Example:

    ```python
    mask, threshold = magnitude_mask(keras.ops.array([[0.1, -2.0], [0.5, 1.0]]), 0.5)
    # mask == [[0, 1], [0, 1]], threshold == 1.0
    ```
    """
    abs_weights = ops.abs(weights)
    size = math.prod(abs_weights.shape)
    sparsity = ops.cast(sparsity, "float32")
    # TFMOT: k = max(round(float32(size) * (1 - sparsity)), 1), round half to even.
    k = ops.maximum(ops.round(ops.convert_to_tensor(size, "float32") * (1.0 - sparsity)), 1.0)
    if round_to > 1:
        k = ops.minimum(ops.ceil(k / round_to) * round_to, float(size))
    k = ops.cast(k, "int32")
    ascending = ops.sort(ops.reshape(abs_weights, (-1,)))
    threshold = ops.take(ascending, size - k)
    mask = ops.cast(ops.greater_equal(abs_weights, threshold), weights.dtype)
    return mask, ops.cast(threshold, weights.dtype)


def as_matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The 2-D view used for block sparsity: all leading axes flattened."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"block_size needs a weight of rank >= 2, got shape {shape}. "
            "Use block_size=(1, 1) for this layer."
        )
    return math.prod(shape[:-1]), shape[-1]


def block_mask(weights, sparsity, block_size: Sequence[int], pooling: str = "AVG"):
    """Block-sparse magnitude mask: whole `block_size` blocks kept or zeroed.

    Blocks tile the 2-D view `(prod(shape[:-1]), shape[-1])` from the top-left
    corner; partial blocks at the edges are scored on their real entries only
    (TFMOT pools with 'SAME' padding; it agrees when the padding is < 2 per
    axis, e.g. when the dims are multiples of the block size).

    Args:
        weights: a tensor of rank >= 2.
        sparsity: scalar fraction of blocks to zero, in [0, 1).
        block_size: `(block_height, block_width)`.
        pooling: "AVG" or "MAX": how a block's magnitude is scored.

    Returns:
        `(mask, threshold)` as in `magnitude_mask`, the threshold on block scores.

    Example:

    ```python
    mask, _ = block_mask(keras.random.normal((8, 4)), 0.5, block_size=(2, 2))
    ```
    """
    rows, cols = as_matrix_shape(weights.shape)
    bh, bw = int(block_size[0]), int(block_size[1])
    grid_h, grid_w = -(-rows // bh), -(-cols // bw)
    pad = [[0, grid_h * bh - rows], [0, grid_w * bw - cols]]
    abs_weights = ops.pad(ops.abs(ops.reshape(weights, (rows, cols))), pad)
    blocks = ops.reshape(abs_weights, (grid_h, bh, grid_w, bw))
    if pooling == "MAX":
        scores = ops.max(blocks, axis=(1, 3))
    elif pooling == "AVG":
        # As TFMOT's factorized pooling, so near-ties round the same way: the
        # mean over each block's rows, then over its columns, each over the
        # real entries only (average pooling with 'SAME' padding).
        row_counts = np.pad(np.ones(rows, "float32"), pad[0]).reshape(grid_h, bh).sum(axis=1)
        col_counts = np.pad(np.ones(cols, "float32"), pad[1]).reshape(grid_w, bw).sum(axis=1)
        row_means = ops.sum(blocks, axis=1) / ops.convert_to_tensor(
            row_counts[:, None, None], blocks.dtype
        )
        scores = ops.sum(row_means, axis=2) / ops.convert_to_tensor(
            col_counts[None, :], blocks.dtype
        )
    else:
        raise ValueError(f"block_pooling_type must be 'AVG' or 'MAX', got {pooling!r}.")
    block_keep, threshold = magnitude_mask(scores, sparsity)
    mask = ops.repeat(ops.repeat(block_keep, bh, axis=0), bw, axis=1)[:rows, :cols]
    return ops.reshape(mask, weights.shape), threshold


def m_by_n_mask(weights, m_by_n: Sequence[int], axis: int):
    """Zero the `m` smallest magnitudes in every `n` consecutive weights along `axis`.

    Args:
        weights: a tensor; along `axis` a length that is not a multiple of
            `n` is zero-padded to one, as in TFMOT.
        m_by_n: `(m, n)`, m zeros per group of n (TFMOT's convention; (2, 4) is 2:4).
        axis: the reduced (input) axis of the layer, along which groups run.

    Returns:
        The mask, shaped and typed like `weights`.

    Example:

    ```python
    mask = m_by_n_mask(keras.random.normal((16, 8)), (2, 4), axis=0)  # Dense kernel
    ```
    """
    m, n = int(m_by_n[0]), int(m_by_n[1])
    moved = ops.moveaxis(ops.abs(weights), axis, -1)
    moved_shape = moved.shape
    # As TFMOT: a length that is not a multiple of n is zero-padded at the
    # end; the padding counts among the m smallest of the last group (a real
    # zero ties with it and wins, being earlier), so that group loses fewer.
    pad = -moved_shape[-1] % n
    if pad:
        moved = ops.pad(moved, [[0, 0]] * (len(moved_shape) - 1) + [[0, pad]])
    padded_shape = moved.shape
    groups = ops.reshape(moved, (-1, n))
    # rank[i] = how many entries of the group beat entry i (larger, or equal
    # with a lower index); keep the n - m best. O(n^2) per group, n is tiny.
    index = np.arange(n)
    earlier = ops.convert_to_tensor(index[None, :] < index[:, None])
    a, b = groups[:, :, None], groups[:, None, :]
    beats = ops.logical_or(ops.greater(b, a), ops.logical_and(ops.equal(b, a), earlier))
    rank = ops.sum(ops.cast(beats, "int32"), axis=-1)
    keep = ops.cast(ops.less(rank, n - m), weights.dtype)
    keep = ops.reshape(keep, padded_shape)[..., : moved_shape[-1]]
    return ops.moveaxis(keep, -1, axis)
