"""`PrunableLayer`: how a custom layer says which of its weights to prune (TFMOT's API)."""

from __future__ import annotations

import abc


class PrunableLayer(abc.ABC):
    """Mixin for a custom Keras layer that `prune_low_magnitude` may prune.

    Implement `get_prunable_weights()` to return the variables to prune
    (kernels, not biases). A layer of a built-in prunable type that you
    subclass must implement it too: a subclass may use its weights
    differently, so kd_keras (like TFMOT) does not guess. Any layer with a
    `get_prunable_weights()` method is accepted, with or without this base.

    For m-by-n sparsity set `pruning_reduced_axis`, the axis of the weights
    summed against the input (default 0, a Dense-like `(in, out)` kernel).

    Example:

    ```python
    class ScaledDense(keras.layers.Dense, kd_keras.pruning.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel]

    pruned = kd_keras.pruning.prune_low_magnitude(ScaledDense(8))
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self) -> list:
        """The variables to prune (each gets a mask of its shape)."""
        raise NotImplementedError("Subclasses of PrunableLayer return their prunable weights.")
