"""Gradual filter pruning in one `fit`: `prune_filters_low_magnitude` masks
whole channel groups by a pruning schedule while the model trains (or
distils); `strip_filters` then removes the masked channels for real, with
the same surgery as `prune_filters`.

Each member of a channel group (its Conv/Dense producers, and the
BatchNormalization / depthwise layers that carry the channel) is wrapped in
`FilterPruneLowMagnitude`; the members compute the same mask from the same
kernels at the same step, so a residual stage loses the same channels in
every block. A layer carrying channels of several groups (a
BatchNormalization after a `Concatenate`, a residual Add over a
concatenation) is not followed gradually (use the one-shot `prune_filters`)
and is refused with the layer named; a Conv/Dense reading a concatenation
is fine (its kernel is sliced when the model is stripped).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from kd_keras.pruning.dependency import ChannelGraph, FilterPruningError
from kd_keras.pruning.filter_wrapper import FilterPruneLowMagnitude, check_gradual_importance
from kd_keras.pruning.filters import as_functional, check_round_to, rebuild
from kd_keras.pruning.schedules import PruningSchedule


def _plan(graph: ChannelGraph, importance: str) -> dict[str, tuple[list[str], list[int]]]:
    """Layer name -> (score peers, fixed channel indices) for every layer to wrap.

    The peers are the group's producers (their kernels score the channels),
    or for "bn_gamma" its BatchNormalization layers, when it has any."""
    members: dict[tuple[int, ...], list[str]] = {}
    groups: dict[tuple[int, ...], tuple[list[str], list[int]]] = {}
    for group in graph.groups():
        if all(group.fixed):
            continue
        fixed = [i for i, f in enumerate(group.fixed) if f]
        for name in group.producers:
            if graph.roots(graph.producer_ids[name]).tolist() != group.classes:
                raise FilterPruningError(
                    f"Gradual filter pruning follows channel groups whose layers carry the "
                    f"same channels in the same order; '{name}' carries only part of its "
                    "group (a Concatenate joins it). Use the one-shot "
                    "kd_keras.pruning.prune_filters for this model, or add the layer to `skip`."
                )
        key = tuple(group.classes)
        groups[key] = (list(group.producers), fixed)
        members[key] = list(group.producers)
    fixed_roots = graph.fixed_roots()
    for name, ids in graph.follower_ids.items():
        roots = tuple(graph.roots(ids).tolist())
        if roots in groups:
            members[roots].append(name)
        elif not all(r in fixed_roots for r in roots):
            raise FilterPruningError(
                f"Gradual filter pruning cannot follow '{name}': its channels come from "
                "several channel groups (after a Concatenate). Use the one-shot "
                "kd_keras.pruning.prune_filters for this model."
            )
    plan: dict[str, tuple[list[str], list[int]]] = {}
    for key, names in members.items():
        peers, fixed = groups[key]
        if importance == "bn_gamma":
            gammas = [n for n in names if _has_gamma(graph.layers[n])]
            peers = gammas or peers
        for name in names:
            plan[name] = (peers, fixed)
    return plan


def _has_gamma(layer) -> bool:
    return isinstance(layer, layers.BatchNormalization) and layer.scale


def _score_variable(layer):
    """What a peer contributes to its group's scores: a gamma or a kernel."""
    return layer.gamma if _has_gamma(layer) else layer.kernel


def link_filter_peers(model) -> None:
    """Point every `FilterPruneLowMagnitude` of `model` at its peers' kernels
    (done by `prune_filters_low_magnitude`; needed again after loading)."""
    wrappers = [layer for layer in model.layers if isinstance(layer, FilterPruneLowMagnitude)]
    inner = {w.layer.name: w.layer for w in wrappers}
    for wrapper in wrappers:
        missing = [p for p in wrapper.peers if p not in inner]
        if missing:
            raise FilterPruningError(
                f"'{wrapper.name}' scores its filters with layers {missing}, which are not "
                "wrapped in this model."
            )
        wrapper.link(lambda names=tuple(wrapper.peers): [_score_variable(inner[n]) for n in names])


def prune_filters_low_magnitude(
    model,
    pruning_schedule: PruningSchedule,
    skip=None,
    importance: str = "l1",
    round_to: int = 1,
):
    """Wrap a model for gradual filter pruning (whole channels, least important first).

    Args:
        model: a Functional (or built Sequential) Keras 3 model.
        pruning_schedule: `PolynomialDecay` / `ConstantSparsity`; the sparsity
            is the share of each channel group masked at that step.
        skip: layer names whose output channels are kept.
        importance: "l1" or "l2" (the filter norms of the group's Conv/Dense
            kernels) or "bn_gamma" (|gamma| of its BatchNormalization layers),
            the scores of the one-shot `prune_filters`, taken from the current
            weights each time the mask is updated. "taylor" needs per-channel
            gradients a layer cannot see while training: it is refused (use
            the one-shot `prune_filters` for it).
        round_to: each group keeps a multiple of this many channels (4 or 8
            suit SIMD kernels), at most all of them.

    Returns:
        A Functional model sharing `model`'s layers (as `prune_low_magnitude`),
        each channel-carrying layer wrapped in `FilterPruneLowMagnitude`. Train
        or distil it (no callback needed), then call `strip_filters`.

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

    from kd_keras import pruning
    schedule = pruning.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=1)
    masked = pruning.prune_filters_low_magnitude(student, schedule, importance="l2", round_to=4)
    masked.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masked.fit(x, y, epochs=2, callbacks=[pruning.UpdatePruningStep()], verbose=0)
    small = pruning.strip_filters(masked)
    ```
    """
    if not isinstance(pruning_schedule, PruningSchedule):
        raise FilterPruningError(
            "pruning_schedule must be a kd_keras.pruning.PruningSchedule "
            f"(PolynomialDecay, ConstantSparsity), got {type(pruning_schedule).__name__}."
        )
    check_gradual_importance(importance)
    check_round_to(round_to)
    if isinstance(skip, str):
        skip = [skip]
    model = as_functional(model)
    plan = _plan(ChannelGraph(model, skip=skip), importance)
    if not plan:
        raise FilterPruningError(
            f"No filter of '{model.name}' can be pruned: every channel reaches an output "
            "or a skipped layer."
        )

    def wrap(layer):
        if isinstance(layer, keras.layers.Layer) and layer.name in plan:
            peers, fixed = plan[layer.name]
            return FilterPruneLowMagnitude(
                layer,
                pruning_schedule,
                peers=peers,
                fixed=fixed,
                importance=importance,
                round_to=round_to,
            )
        return layer

    wrapped = keras.models.clone_model(model, clone_function=wrap)
    link_filter_peers(wrapped)
    return wrapped


def _baked(layer, mask: np.ndarray) -> list[np.ndarray]:
    """`layer`'s weights with the channel mask multiplied in (what the wrapper computes)."""
    values = []
    for weight in layer.weights:
        value = keras.ops.convert_to_numpy(weight)
        name = weight.name.split("/")[-1]
        if name == "kernel" and isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
            value = value * mask[:, None]
        elif name == "kernel":
            value = value * mask
        elif name in ("bias", "gamma", "beta"):
            value = value * mask
        values.append(value.astype(keras.ops.convert_to_numpy(weight).dtype))
    return values


def strip_filters(model):
    """Remove the masked channels of a `prune_filters_low_magnitude` model:
    a plain, physically smaller Functional model computing the same outputs.

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

    masked = kd_keras.pruning.prune_filters_low_magnitude(
        student, kd_keras.pruning.ConstantSparsity(0.5, begin_step=0))
    masked.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masked.fit(x, y, epochs=1, callbacks=[kd_keras.pruning.UpdatePruningStep()], verbose=0)
    small = kd_keras.pruning.strip_filters(masked)
    small.save("student_filters.keras")
    ```
    """
    wrappers = {
        layer.layer.name: layer
        for layer in getattr(model, "layers", [])
        if isinstance(layer, FilterPruneLowMagnitude)
    }
    if not wrappers:
        raise FilterPruningError(
            f"'{getattr(model, 'name', model)}' has no FilterPruneLowMagnitude layers; "
            "strip_filters takes the model returned by prune_filters_low_magnitude."
        )

    def unwrap(layer):
        if isinstance(layer, FilterPruneLowMagnitude):
            layer = layer.layer
        if not isinstance(layer, keras.layers.Layer):
            return layer
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=unwrap)
    masks = {
        name: keras.ops.convert_to_numpy(w.channel_mask).astype(bool)
        for name, w in wrappers.items()
    }
    for layer in model.layers:
        source = layer.layer if isinstance(layer, FilterPruneLowMagnitude) else layer
        if not source.weights or isinstance(source, layers.InputLayer):
            continue
        if source.name in masks:
            values = _baked(source, masks[source.name].astype("float32"))
        else:
            values = [keras.ops.convert_to_numpy(w) for w in source.weights]
        plain.get_layer(source.name).set_weights(values)
    graph = ChannelGraph(plain)
    removed: set[int] = set()
    for name, ids in graph.producer_ids.items():
        if name in masks:
            removed |= set(graph.roots(ids[~masks[name]]).tolist())
    return rebuild(plain, graph, removed)
