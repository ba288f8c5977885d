"""`prune_filters`: remove whole filters (output channels) and every weight that
reads them, returning a physically smaller Functional model.

Unlike magnitude pruning, whose zeros are still multiplied by every runtime,
the result has fewer channels: fewer MACs, fewer parameters, lower latency
on any runtime, with plain dense kernels.

How: a `ChannelGraph` assigns ids to channels and couples them (residual
adds, concatenations, depthwise convolutions, Flatten row blocks); per
group, the lowest-importance coupled channels are chosen (`importance`);
the model is cloned with smaller `filters` / `units`, and each kernel,
bias, BatchNormalization and depthwise weight is sliced with the kept ids.
Removing a channel that is exactly zero at every position changes nothing,
which is what the tests check: zero the chosen channels in the original,
prune, and the outputs agree to float rounding.
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np
from keras import layers

from kd_keras.pruning.dependency import ChannelGraph, ChannelGroup, FilterPruningError
from kd_keras.pruning.importance import channel_scores


def as_functional(model):
    """A Functional view of a built Sequential model; other models as they are."""
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise FilterPruningError(
                f"Sequential model '{model.name}' has no input shape yet; start it with "
                "keras.Input(shape) or call build() before pruning filters."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def check_round_to(round_to) -> None:
    """`round_to` must be a positive integer (kept channels, a multiple of it)."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise FilterPruningError(f"round_to must be a positive integer, got {round_to!r}.")


def _check_fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise FilterPruningError(f"{where} must be a number in [0, 1), got {value!r}.")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise FilterPruningError(
            f"{where} must be in [0, 1) (the share of filters removed; 1 would remove "
            f"every filter), got {value}."
        )
    return value


def _group_fractions(groups: list[ChannelGroup], fraction, graph: ChannelGraph) -> list[float]:
    if isinstance(fraction, Mapping):
        for name, value in fraction.items():
            _check_fraction(value, f"fraction[{name!r}]")
            if name not in graph.producer_ids:
                raise FilterPruningError(
                    f"fraction names '{name}', which is not a Conv/Dense layer of the model "
                    f"(those whose filters can be removed: {sorted(graph.producer_ids)})."
                )
        # A group shares one decision: the largest fraction asked of any member.
        return [max(float(fraction.get(p, 0.0)) for p in g.producers) for g in groups]
    value = _check_fraction(fraction, "fraction")
    return [value] * len(groups)


def select_channels(
    graph: ChannelGraph, scores: np.ndarray, fraction, round_to: int = 1
) -> set[int]:
    """The union-find roots (coupled channels) to remove.

    Per group of width `n` (coupled channels), `int(fraction * n)` channels go
    (the least important, summed over the group's members), fewer where the
    kept count is rounded up to a multiple of `round_to` or where a channel
    is fixed; each producer keeps at least one channel.

    Example:

    ```python
    graph = ChannelGraph(model)
    removed = select_channels(graph, channel_scores(model, graph), 0.5, round_to=4)
    ```
    """
    groups = graph.groups()
    fractions = _group_fractions(groups, fraction, graph)
    roots_of_id = graph.roots(np.arange(len(scores)))
    class_score: dict[int, float] = {}
    for i, r in enumerate(roots_of_id.tolist()):
        class_score[r] = class_score.get(r, 0.0) + float(scores[i])
    removed: set[int] = set()
    for group, frac in zip(groups, fractions):
        width = group.width
        keep = width - int(frac * width + 1e-9)
        keep = min(width, -(-keep // round_to) * round_to)
        candidates = [r for r, fixed in zip(group.classes, group.fixed) if not fixed]
        n_remove = min(width - keep, len(candidates))
        if n_remove <= 0:
            continue
        order = sorted(candidates, key=lambda r: class_score.get(r, 0.0))
        chosen = set(order[:n_remove])
        for name in group.producers:
            roots = graph.roots(graph.producer_ids[name])
            if all(r in chosen for r in roots.tolist()):
                # Never empty a layer: keep its most important channel.
                chosen.discard(max(roots.tolist(), key=lambda r: class_score.get(r, 0.0)))
        removed |= chosen
    return removed


def prune_filters(
    model,
    fraction,
    importance: str = "l1",
    skip=None,
    round_to: int = 1,
    data=None,
    loss=None,
    batches: int = 4,
):
    """Remove a fraction of the filters of every Conv/Dense, with the weights
    that read them, and return a smaller Functional model.

    Args:
        model: a Functional (or built Sequential) Keras 3 model.
        fraction: share of filters removed per channel group, in [0, 1): one
            number, or a dict `{layer_name: fraction}` (unnamed layers keep all
            their filters; coupled layers take the largest fraction named).
        importance: "l1", "l2" (filter norms), "bn_gamma" (|gamma| of the
            following BatchNormalization) or "taylor" (|activation x gradient|
            over `batches` batches of `data`).
        skip: layer names whose output channels are all kept (the model's
            output layer always is).
        round_to: kept channel counts are rounded up to a multiple of this
            (4 or 8 suit SIMD kernels).
        data: `(x, y)` or a dataset of `(x, y)` batches, for "taylor".
        loss: loss for "taylor"; default sparse categorical cross-entropy.
        batches: number of batches for "taylor".

    Returns:
        A new Functional model with the same layer names and fewer channels,
        its weights copied from `model` (which is left untouched). Fine-tune
        it, e.g. with `kd_keras.Distiller` and the original as the teacher.

    Example:

    ```python
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, size=32)
    student = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])

    small = kd_keras.pruning.prune_filters(student, 0.5, importance="l1", round_to=4)
    print(student.count_params(), "->", small.count_params())
    ```
    """
    check_round_to(round_to)
    if not isinstance(model, keras.Model):
        raise FilterPruningError(
            f"prune_filters takes a Keras 3 Functional model, got {type(model).__name__}."
        )
    if isinstance(skip, str):
        skip = [skip]
    model = as_functional(model)
    graph = ChannelGraph(model, skip=skip)
    if not isinstance(fraction, Mapping):
        _check_fraction(fraction, "fraction")
    scores = channel_scores(model, graph, importance, data=data, loss=loss, batches=batches)
    removed = select_channels(graph, scores, fraction, round_to)
    return rebuild(model, graph, removed)


def keep_mask(graph: ChannelGraph, ids: np.ndarray, removed: set[int]) -> np.ndarray:
    """True for each id whose coupled channel is kept."""
    return np.array([r not in removed for r in graph.roots(ids).tolist()], dtype=bool)


def rebuild(model, graph: ChannelGraph, removed: set[int]):
    """Clone `model` without the channels in `removed` (union-find roots of
    `graph`), slicing every weight that touches them."""
    out_keep = {n: keep_mask(graph, ids, removed) for n, ids in graph.producer_ids.items()}
    in_keep = {n: keep_mask(graph, ids, removed) for n, ids in graph.consumer_ids.items()}
    follow_keep = {n: keep_mask(graph, ids, removed) for n, ids in graph.follower_ids.items()}

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a raw keras.ops node: stateless, reused as is
        config = layer.get_config()
        if layer.name in out_keep:
            key = "units" if isinstance(layer, layers.Dense) else "filters"
            config[key] = int(out_keep[layer.name].sum())
        if layer.name in graph.reshape_ids:
            kept = int(keep_mask(graph, graph.reshape_ids[layer.name], removed).sum())
            config["target_shape"] = (*tuple(config["target_shape"])[:-1], kept)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights or isinstance(layer, layers.InputLayer):
            continue
        target = new.get_layer(layer.name)
        target.set_weights(_sliced_weights(layer, out_keep, in_keep, follow_keep))
    return new


def _sliced_weights(layer, out_keep, in_keep, follow_keep) -> list[np.ndarray]:
    values = [keras.ops.convert_to_numpy(w) for w in layer.weights]
    name = layer.name
    if name in out_keep:
        out, inp = out_keep[name], in_keep[name]
        kernel = values[0]
        kernel = np.take(kernel, np.flatnonzero(inp), axis=kernel.ndim - 2)
        values[0] = np.take(kernel, np.flatnonzero(out), axis=kernel.ndim - 1)
        if len(values) > 1:
            values[1] = values[1][out]
        return values
    if name in follow_keep:
        keep = follow_keep[name]
        if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
            kernel = values[0]
            values[0] = np.take(kernel, np.flatnonzero(keep), axis=kernel.ndim - 2)
            if len(values) > 1:
                values[1] = values[1][keep]
            return values
        # BatchNormalization: gamma, beta, moving mean and variance.
        return [v[keep] if v.ndim == 1 and v.shape[0] == keep.shape[0] else v for v in values]
    return values
