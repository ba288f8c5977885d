"""How much each output channel (filter) of a Conv/Dense matters.

- `"l1"` / `"l2"`: the L1 / L2 norm of the filter (its kernel slice over
  every axis but the output one), as in Li et al. 2017 and torch-pruning.
- `"bn_gamma"`: |gamma| of the BatchNormalization that scales the channel
  (network slimming, Liu et al. 2017); a group with no BatchNormalization
  falls back to `"l1"`.
- `"taylor"`: first-order Taylor, |sum over positions of activation x
  gradient of the loss| per batch, summed over a few batches (Molchanov et
  al. 2017). For a linear layer `a = W x + b` that sum equals
  `sum_w w * dL/dw + b * dL/db` over the filter's weights exactly, so it is
  computed from weight gradients: no activation hooks, the same code on
  TensorFlow, JAX and torch.

Scores are indexed by channel id of a `ChannelGraph`; a coupled channel's
importance is the sum over the members of its group.
"""

from __future__ import annotations

import keras
import numpy as np

from kd_keras.pruning.dependency import ChannelGraph, FilterPruningError

IMPORTANCES = ("l1", "l2", "bn_gamma", "taylor")


def filter_norms(kernel: np.ndarray, order: int = 1) -> np.ndarray:
    """L1 (`order=1`) or L2 norm of each output channel (last axis) of a kernel.

    Example:

    ```python
    filter_norms(np.ones((3, 3, 4, 8)), order=1)  # 8 values of 36.0
    ```
    """
    flat = np.reshape(np.asarray(kernel, np.float64), (-1, kernel.shape[-1]))
    if order == 1:
        return np.abs(flat).sum(axis=0)
    return np.sqrt((flat**2).sum(axis=0))


def channel_scores(
    model,
    graph: ChannelGraph,
    importance: str = "l1",
    data=None,
    loss=None,
    batches: int = 4,
) -> np.ndarray:
    """Score of every channel id of `graph` (0 for ids that are not scored).

    Args:
        model: the Functional model the graph was built from.
        graph: its `ChannelGraph`.
        importance: one of `IMPORTANCES`.
        data: for `"taylor"`: `(x, y)` arrays, or an iterable / `tf.data.Dataset`
            of `(x, y)` batches.
        loss: for `"taylor"`: a Keras loss; default sparse categorical
            cross-entropy (from logits unless the model ends in a softmax).
        batches: for `"taylor"`: how many batches to sum over.

    Returns:
        A float64 array indexed by channel id.

    Example:

    ```python
    graph = ChannelGraph(student)
    scores = channel_scores(student, graph, "l2")
    ```
    """
    if importance not in IMPORTANCES:
        raise FilterPruningError(f"importance must be one of {IMPORTANCES}, got {importance!r}.")
    scores = np.zeros(graph.num_ids, np.float64)
    if importance in ("l1", "l2", "bn_gamma"):
        order = 2 if importance == "l2" else 1
        for name, ids in graph.producer_ids.items():
            kernel = keras.ops.convert_to_numpy(graph.layers[name].kernel)
            scores[ids] += filter_norms(kernel, order)
        if importance == "bn_gamma":
            scores = _bn_gamma_scores(graph, scores)
        return scores
    if data is None:
        raise FilterPruningError(
            'importance="taylor" needs data: pass data=(x, y) (a few batches of '
            "training images and labels) or a dataset of (x, y) batches."
        )
    for x, y in _batches(data, batches):
        grads = _gradients(model, graph, x, y, _default_loss(model) if loss is None else loss)
        for name, ids in graph.producer_ids.items():
            layer = graph.layers[name]
            g_kernel, g_bias = grads[name]
            w = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
            total = (w * g_kernel).reshape(-1, w.shape[-1]).sum(axis=0)
            if g_bias is not None:
                total += keras.ops.convert_to_numpy(layer.bias).astype(np.float64) * g_bias
            scores[ids] += np.abs(total)
    return scores


def _bn_gamma_scores(graph: ChannelGraph, l1: np.ndarray) -> np.ndarray:
    """|gamma| summed into each channel id; groups with no BN keep their L1 norms."""
    gamma = np.zeros_like(l1)
    has_bn = np.zeros(len(l1), bool)
    for name, ids in graph.follower_ids.items():
        layer = graph.layers[name]
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            np.add.at(gamma, ids, np.abs(keras.ops.convert_to_numpy(layer.gamma)))
            has_bn[ids] = True
    roots = graph.roots(np.arange(len(l1)))
    bn_roots = set(roots[has_bn].tolist())
    out = np.zeros_like(l1)
    for group in graph.groups():
        group_ids = np.concatenate([graph.producer_ids[p] for p in group.producers])
        all_ids = np.flatnonzero(np.isin(roots, group.classes))
        if any(r in bn_roots for r in group.classes):
            out[all_ids] = gamma[all_ids]
        else:
            out[group_ids] = l1[group_ids]
    return out


def _default_loss(model):
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    from_logits = not (activation == "softmax" or isinstance(last, keras.layers.Softmax))
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _batches(data, count: int):
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = data
        size = max(1, -(-len(x) // count))
        for i in range(count):
            if i * size >= len(x):
                return
            yield np.asarray(x[i * size : (i + 1) * size]), np.asarray(y[i * size : (i + 1) * size])
        return
    for i, batch in enumerate(data):
        if i >= count:
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise FilterPruningError(
                f'importance="taylor" needs (x, y) batches; the data gave {type(batch).__name__}.'
            )
        yield keras.ops.convert_to_numpy(batch[0]), keras.ops.convert_to_numpy(batch[1])


def _gradients(model, graph: ChannelGraph, x, y, loss_fn) -> dict:
    """d loss / d (kernel, bias) of every producer, inference mode, as NumPy."""
    wanted = []
    for name in graph.producer_ids:
        layer = graph.layers[name]
        wanted.append(layer.kernel)
        wanted.append(layer.bias if getattr(layer, "use_bias", False) else None)
    variables = [v for v in wanted if v is not None]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([v.value for v in variables])
            value = loss_fn(y, model(x, training=False))
        grads = tape.gradient(value, [v.value for v in variables])
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        position = {id(v): i for i, v in enumerate(model.trainable_variables)}

        def compute(values):
            out, _ = model.stateless_call(values, non_trainable, x, training=False)
            return loss_fn(y, out)

        all_grads = jax.grad(compute)(trainable)
        grads = [all_grads[position[id(v)]] for v in variables]
    elif backend == "torch":
        for v in variables:
            v.value.grad = None
        value = loss_fn(keras.ops.convert_to_tensor(y), model(x, training=False))
        value.backward()
        grads = [v.value.grad for v in variables]
    else:
        raise FilterPruningError(f'importance="taylor" is not implemented on {backend}.')
    grads = iter(np.asarray(keras.ops.convert_to_numpy(g), np.float64) for g in grads)
    out = {}
    for name in graph.producer_ids:
        layer = graph.layers[name]
        g_kernel = next(grads)
        g_bias = next(grads) if getattr(layer, "use_bias", False) else None
        out[name] = (g_kernel, g_bias)
    return out
