"""Filter (channel) pruning: importance scores, dependency groups and surgery.

References: NumPy for the scores; for the surgery the *unmodified* Keras
model with the channels to be removed set to exactly zero (their kernels,
biases, BatchNormalization gamma/beta and depthwise biases): removing a
channel that is zero everywhere must not change the outputs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from kd_keras.bench.flops import count_macs
from kd_keras.models import cnn_student
from kd_keras.pruning import FilterPruningError, prune_filters
from kd_keras.pruning.dependency import ChannelGraph
from kd_keras.pruning.filters import keep_mask, select_channels
from kd_keras.pruning.importance import channel_scores

TOL = 1e-5


def _randomize(model, seed=0):
    """Random weights everywhere, BN statistics away from (0, 1), so a wrong
    slice cannot hide behind identical channels."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            v = keras.ops.convert_to_numpy(w)
            if "variance" in w.path:
                v = rng.uniform(0.5, 2.0, v.shape)
            else:
                v = rng.normal(0, 0.5, v.shape)
            values.append(v.astype(v.dtype))
        if values:
            layer.set_weights(values)
    return model


def _zero_removed(model, removed):
    """A copy of `model` (same graph) whose removed channels are exactly zero."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    graph = ChannelGraph(copy)
    for name, ids in graph.producer_ids.items():
        gone = ~keep_mask(graph, ids, removed)
        layer = copy.get_layer(name)
        values = layer.get_weights()
        values[0][..., gone] = 0.0
        if len(values) > 1:
            values[1][gone] = 0.0
        layer.set_weights(values)
    for name, ids in graph.follower_ids.items():
        gone = ~keep_mask(graph, ids, removed)
        layer = copy.get_layer(name)
        values = layer.get_weights()
        if isinstance(layer, layers.BatchNormalization):
            values[0][gone] = 0.0  # gamma
            values[1][gone] = 0.0  # beta
        elif len(values) > 1:
            values[1][gone] = 0.0  # depthwise bias
        layer.set_weights(values)
    return copy


def _input(model, n=3, seed=1):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0, 1, shape).astype("float32")


def _assert_exact(model, fraction=0.5, **kwargs):
    """Zero the channels prune_filters removes, then check the pruned model
    reproduces that model; returns the pruned model."""
    graph = ChannelGraph(model, skip=kwargs.get("skip"))
    scores = channel_scores(model, graph, kwargs.get("importance", "l1"))
    removed = select_channels(graph, scores, fraction, kwargs.get("round_to", 1))
    assert removed, "nothing selected: the test would prove nothing"
    zeroed = _zero_removed(model, removed)
    pruned = prune_filters(zeroed, fraction, **kwargs)
    x = _input(model)
    expected = keras.ops.convert_to_numpy(zeroed(x, training=False))
    got = keras.ops.convert_to_numpy(pruned(x, training=False))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert pruned.count_params() < model.count_params()
    # And the original (non-zero) model really is different: the test bites.
    original = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.max(np.abs(original - expected)) > 1e-3
    return pruned


def _residual_net():
    """Residual Add, Multiply of two tensors, Concatenate, depthwise, Flatten
    and GlobalAveragePooling -> Dense, all in one graph."""
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = layers.BatchNormalization(name="stem_bn")(a)
    a = layers.ReLU(name="stem_relu")(a)
    b = layers.Conv2D(8, 3, padding="same", name="res_conv")(a)
    b = layers.BatchNormalization(name="res_bn")(b)
    b = layers.DepthwiseConv2D(3, padding="same", name="res_dw")(b)
    s = layers.Add(name="res_add")([a, b])
    g = layers.Conv2D(8, 1, activation="sigmoid", name="gate")(s)
    s = layers.Multiply(name="gate_mul")([s, g])
    c = layers.Conv2D(6, 1, name="side")(inputs)
    x = layers.Concatenate(name="concat")([s, c])
    x = layers.Conv2D(12, 3, padding="same", name="mix")(x)
    x = layers.ReLU(name="mix_relu")(x)
    # A raw keras.ops node (one that keeps zero at zero: `x + 1.0` would turn a
    # removed channel into a constant, so the removal would not be exact).
    x = x * 2.0
    p = layers.MaxPooling2D(4, name="pool")(x)
    f = layers.Flatten(name="flat")(p)
    f = layers.Dense(6, name="fc_flat")(f)
    gap = layers.GlobalAveragePooling2D(name="gap")(x)
    gap = layers.Dense(6, activation="relu", name="fc_gap")(gap)
    out = layers.Dense(5, name="logits")(layers.Concatenate(name="heads")([f, gap]))
    return keras.Model(inputs, out, name="residual_net")


# --------------------------------------------------------------- importance
def test_l1_l2_scores_match_numpy():
    model = _randomize(cnn_student())
    graph = ChannelGraph(model)
    for importance, norm in (
        ("l1", lambda k: np.abs(k).sum(axis=(0, 1, 2))),
        ("l2", lambda k: np.sqrt((k**2).sum(axis=(0, 1, 2)))),
    ):
        scores = channel_scores(model, graph, importance)
        for name in ("conv1", "conv2"):
            kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
            np.testing.assert_allclose(scores[graph.producer_ids[name]], norm(kernel), rtol=1e-6)


def test_bn_gamma_scores_are_abs_gamma():
    model = _randomize(cnn_student())
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "bn_gamma")
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        gamma = keras.ops.convert_to_numpy(model.get_layer(bn).gamma)
        np.testing.assert_allclose(scores[graph.producer_ids[conv]], np.abs(gamma), rtol=1e-6)


def test_taylor_scores_match_numpy_backprop():
    inputs = keras.Input((5,))
    hidden = layers.Dense(4, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(hidden))
    _randomize(model)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, 16)
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "taylor", data=(x, y), batches=2)
    # NumPy: a = x W1 + b1; dL/da by hand; per batch |sum_n a * dL/da|.
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in model.get_weights())
    expected = np.zeros(4)
    for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):
        a = xb @ w1 + b1
        z = np.maximum(a, 0) @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - np.eye(3)[yb]) / len(xb)
        da = (dz @ w2.T) * (a > 0)
        expected += np.abs((a * da).sum(axis=0))
    np.testing.assert_allclose(scores[graph.producer_ids["hidden"]], expected, rtol=1e-4)


# ---------------------------------------------------------------- exactness
def test_cnn_student_exact_and_counts():
    model = _randomize(cnn_student())
    pruned = _assert_exact(model, 0.5)
    assert pruned.get_layer("conv1").filters == 4
    assert pruned.get_layer("conv2").filters == 8
    assert pruned.get_layer("logits").units == 10
    # Hand counts on 28x28x1: conv1 3*3*1*4, bn1 4*4, conv2 3*3*4*8, bn2 8*4,
    # logits (7*7*8)*10 + 10.
    assert pruned.count_params() == 36 + 16 + 288 + 32 + 3930
    assert count_macs(pruned) == 28 * 28 * 36 + 14 * 14 * 288 + 392 * 10


def test_residual_concat_flatten_gap_exact():
    model = _randomize(_residual_net())
    graph = ChannelGraph(model)
    coupled = [g for g in graph.groups() if len(g.producers) > 1]
    # stem + res_conv (Add) + gate (Multiply) share their channels.
    assert sorted(coupled[0].producers) == ["gate", "res_conv", "stem"]
    pruned = _assert_exact(model, 0.5)
    assert pruned.get_layer("stem").filters == 4
    assert pruned.get_layer("res_conv").filters == 4
    assert pruned.get_layer("gate").filters == 4
    assert pruned.get_layer("side").filters == 3
    assert pruned.get_layer("mix").kernel.shape == (3, 3, 7, 6)
    assert pruned.get_layer("fc_flat").kernel.shape == (4 * 6, 3)
    assert pruned.get_layer("logits").kernel.shape == (6, 5)
    # MACs by hand on the pruned widths (8x8 images, 'same' padding).
    expected = (
        64 * 27 * 4  # stem 3x3x3 -> 4
        + 64 * 36 * 4  # res_conv 3x3x4 -> 4
        + 64 * 9 * 4  # res_dw 3x3 on 4 channels
        + 64 * 4 * 4  # gate 1x1
        + 64 * 3 * 3  # side 1x1x3 -> 3
        + 64 * 9 * 7 * 6  # mix 3x3x7 -> 6
        + 24 * 3  # fc_flat
        + 6 * 3  # fc_gap
        + 6 * 5  # logits
    )
    assert count_macs(pruned) == expected


@pytest.mark.jax_heavy
def test_mobilenet_v2_exact():
    model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3))
    _randomize(model)
    pruned = _assert_exact(model, 0.5, round_to=4)
    for layer in pruned.layers:
        if isinstance(layer, layers.Conv2D) and layer.name != "Conv_1":
            original = model.get_layer(layer.name).filters
            assert layer.filters % 4 == 0 or layer.filters == original
    assert count_macs(pruned) < 0.5 * count_macs(model)


@pytest.mark.jax_heavy
def test_mobilenet_v3_small_ops_and_squeeze_excite_exact():
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3))
    _randomize(model)
    _assert_exact(model, 0.3, importance="l2")


def test_bn_gamma_selection_exact():
    _assert_exact(_randomize(_residual_net()), 0.5, importance="bn_gamma")


# ------------------------------------------------------- options and output
def test_round_to_and_per_layer_fraction():
    model = _randomize(cnn_student())
    rounded = prune_filters(model, 0.3, round_to=4)
    assert rounded.get_layer("conv1").filters == 8  # 8 - 2 = 6 -> 8
    assert rounded.get_layer("conv2").filters == 12  # 16 - 4 = 12
    only = prune_filters(model, {"conv2": 0.5})
    assert only.get_layer("conv1").filters == 8
    assert only.get_layer("conv2").filters == 8
    skipped = prune_filters(model, 0.5, skip=["conv1"])
    assert skipped.get_layer("conv1").filters == 8
    assert skipped.get_layer("conv2").filters == 8


def test_original_untouched_and_keras_round_trip(tmp_path):
    model = _randomize(cnn_student())
    before = [w.copy() for w in model.get_weights()]
    pruned = prune_filters(model, 0.5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _input(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(pruned(x)), atol=1e-6
    )


def test_pruned_model_trains():
    model = _randomize(cnn_student())
    pruned = prune_filters(model, 0.5)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _input(model, n=16)
    history = pruned.fit(x, np.arange(16) % 10, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# ----------------------------------------------------------------- refusals
@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, "half", True])
def test_bad_fraction_refused(fraction):
    with pytest.raises(FilterPruningError, match="fraction"):
        prune_filters(cnn_student(), fraction)


def test_bad_arguments_refused():
    model = cnn_student()
    with pytest.raises(FilterPruningError, match="not layers of"):
        prune_filters(model, 0.5, skip=["nope"])
    with pytest.raises(FilterPruningError, match="bn1"):
        prune_filters(model, {"bn1": 0.5})
    with pytest.raises(FilterPruningError, match="importance"):
        prune_filters(model, 0.5, importance="random")
    with pytest.raises(FilterPruningError, match="needs data"):
        prune_filters(model, 0.5, importance="taylor")
    with pytest.raises(FilterPruningError, match="round_to"):
        prune_filters(model, 0.5, round_to=0)


def test_unsupported_layers_named():
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, groups=2, name="grouped")(inputs)
    with pytest.raises(FilterPruningError, match="'grouped'.*groups=2"):
        prune_filters(keras.Model(inputs, layers.Flatten()(x)), 0.5)

    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, name="conv")(inputs)
    x = layers.Conv2DTranspose(4, 3, name="up")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(FilterPruningError, match="'up'.*skip"):
        prune_filters(model, 0.5)
    # The way out the message gives: skipping the layer keeps its channels whole.
    kept = prune_filters(model, 0.5, skip=["up"])
    assert kept.get_layer("conv").filters == 8

    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(FilterPruningError, match="Functional"):
        prune_filters(Custom(), 0.5)


# ------------------------------------------------------ gradual, in one fit
def _residual_no_concat():
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = layers.BatchNormalization(name="stem_bn")(a)
    a = layers.ReLU(name="stem_relu")(a)
    b = layers.Conv2D(8, 3, padding="same", name="res_conv")(a)
    b = layers.BatchNormalization(name="res_bn")(b)
    b = layers.DepthwiseConv2D(3, padding="same", name="res_dw")(b)
    x = layers.ReLU(name="out_relu")(layers.Add(name="res_add")([a, b]))
    x = layers.Conv2D(6, 1, name="head")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x), name="residual_no_concat")


def _polynomial_kept(channels, step, final, end_step, power=3):
    """NumPy: channels kept at `step` by PolynomialDecay(0, final, 0, end_step)."""
    progress = min(max(step / end_step, 0.0), 1.0)
    sparsity = final + (0.0 - final) * (1.0 - progress) ** power
    return max(int(np.round(channels * (1.0 - sparsity))), 1)


def test_gradual_masks_follow_schedule_and_strip_is_exact(tmp_path):
    from kd_keras.pruning import (
        FilterPruneLowMagnitude,
        PolynomialDecay,
        link_filter_peers,
        prune_filters_low_magnitude,
        strip_filters,
    )

    model = _randomize(_residual_no_concat())
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=4, frequency=1)
    masked = prune_filters_low_magnitude(model, schedule)
    wrapped = {w.layer.name: w for w in masked.layers if isinstance(w, FilterPruneLowMagnitude)}
    # Producers and the followers that carry their channels (the logits layer
    # feeds the output: kept).
    assert sorted(wrapped) == ["head", "res_bn", "res_conv", "res_dw", "stem", "stem_bn"]
    masked.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    x = _input(model, n=8)
    y = np.arange(8) % 5
    for step in range(1, 6):
        masked.fit(x, y, batch_size=8, epochs=1, verbose=0)  # one step per call
        masks = {n: keras.ops.convert_to_numpy(w.channel_mask) for n, w in wrapped.items()}
        residual = masks["stem"]
        for name in ("stem_bn", "res_conv", "res_bn", "res_dw"):
            np.testing.assert_array_equal(masks[name], residual)  # one group, one mask
        assert residual.sum() == _polynomial_kept(8, step, 0.75, 4)
        assert masks["head"].sum() == _polynomial_kept(6, step, 0.75, 4)
    stripped = strip_filters(masked)
    assert stripped.get_layer("stem").filters == 2
    assert stripped.get_layer("head").filters == _polynomial_kept(6, 4, 0.75, 4)
    assert not any(isinstance(layer, FilterPruneLowMagnitude) for layer in stripped.layers)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stripped(x, training=False)),
        keras.ops.convert_to_numpy(masked(x, training=False)),
        atol=TOL,
    )
    # The wrapped model saves and loads; peers are linked again after loading.
    path = tmp_path / "masked.keras"
    masked.save(path)
    loaded = keras.saving.load_model(path)
    link_filter_peers(loaded)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(masked(x)), atol=1e-6
    )


def _numpy_gradual_masks(model, importance, sparsity, round_to):
    """NumPy: the channel masks of `_residual_no_concat` at `sparsity`, written
    out by hand: the residual group (stem, res_conv; BNs stem_bn, res_bn) and
    the head group (no BN), each keeping max(round(n (1 - s)), 1) channels
    rounded up to a multiple of `round_to`, the highest scores."""
    kernel = {
        n: keras.ops.convert_to_numpy(model.get_layer(n).kernel)
        for n in ("stem", "res_conv", "head")
    }
    gamma = {n: keras.ops.convert_to_numpy(model.get_layer(n).gamma) for n in ("stem_bn", "res_bn")}

    def norm(name):
        flat = kernel[name].reshape(-1, kernel[name].shape[-1]).astype(np.float64)
        if importance == "l2":
            return np.sqrt((flat**2).sum(0))
        return np.abs(flat).sum(0)

    if importance == "bn_gamma":
        residual = np.abs(gamma["stem_bn"]) + np.abs(gamma["res_bn"])
    else:
        residual = norm("stem") + norm("res_conv")
    head = norm("head")  # no BatchNormalization: bn_gamma scores by L1
    masks = {}
    for name, score in (("residual", residual), ("head", head)):
        n = len(score)
        k = max(int(np.round(n * (1 - sparsity))), 1)
        k = min(n, -(-k // round_to) * round_to)
        mask = np.zeros(n)
        mask[np.argsort(-score)[:k]] = 1.0
        masks[name] = mask
    return masks


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_gamma"])
@pytest.mark.parametrize("sparsity, round_to", [(0.5, 1), (0.75, 1), (0.6, 3), (0.5, 4)])
def test_gradual_importance_and_round_to_match_numpy_and_one_shot(importance, sparsity, round_to):
    from kd_keras.pruning import (
        ConstantSparsity,
        FilterPruneLowMagnitude,
        prune_filters_low_magnitude,
        strip_filters,
    )

    model = _randomize(_residual_no_concat(), seed=3)
    expected = _numpy_gradual_masks(model, importance, sparsity, round_to)
    # The one-shot surgery, at the same weights and scores (before training).
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, importance)
    removed = select_channels(graph, scores, sparsity, round_to)
    one_shot = {n: keep_mask(graph, graph.producer_ids[n], removed) for n in ("stem", "head")}
    masked = prune_filters_low_magnitude(
        model, ConstantSparsity(sparsity, 0, frequency=1), importance=importance, round_to=round_to
    )
    masked.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    x = _input(model, n=8)
    # One step: the masks are computed in its forward pass, from the weights above.
    masked.fit(x, np.arange(8) % 5, batch_size=8, epochs=1, verbose=0)
    wrapped = {w.layer.name: w for w in masked.layers if isinstance(w, FilterPruneLowMagnitude)}
    masks = {n: keras.ops.convert_to_numpy(w.channel_mask) for n, w in wrapped.items()}
    for name in ("stem", "stem_bn", "res_conv", "res_bn", "res_dw"):
        np.testing.assert_array_equal(masks[name], expected["residual"], err_msg=name)
    np.testing.assert_array_equal(masks["head"], expected["head"])
    assert 0 < expected["residual"].sum() < 8 and 0 < expected["head"].sum() < 6
    # TFMOT's round(n (1 - s)) and prune_filters' n - floor(s n) agree at these
    # sparsities except 0.6 (8 channels: 3 vs 4 kept, before rounding to 3).
    if sparsity != 0.6:
        np.testing.assert_array_equal(masks["stem"].astype(bool), one_shot["stem"])
        np.testing.assert_array_equal(masks["head"].astype(bool), one_shot["head"])
    stripped = strip_filters(masked)
    assert stripped.get_layer("stem").filters == expected["residual"].sum()
    assert stripped.get_layer("head").filters == expected["head"].sum()
    assert wrapped["stem"].get_config()["importance"] == importance
    assert wrapped["stem"].get_config()["round_to"] == round_to


def test_gradual_importance_refusals():
    from kd_keras.pruning import (
        ConstantSparsity,
        FilterPruneLowMagnitude,
        prune_filters_low_magnitude,
    )

    model = _residual_no_concat()
    schedule = ConstantSparsity(0.5, 0)
    with pytest.raises(FilterPruningError, match="taylor.*gradient.*prune_filters"):
        prune_filters_low_magnitude(model, schedule, importance="taylor")
    with pytest.raises(FilterPruningError, match="importance must be one of"):
        prune_filters_low_magnitude(model, schedule, importance="l3")
    for bad in (0, 2.0, True):
        with pytest.raises(FilterPruningError, match="round_to must be a positive integer"):
            prune_filters_low_magnitude(model, schedule, round_to=bad)
    with pytest.raises(FilterPruningError, match="taylor"):
        FilterPruneLowMagnitude(layers.Dense(3), schedule, importance="taylor")


def test_gradual_concatenate():
    from kd_keras.pruning import PolynomialDecay, prune_filters_low_magnitude

    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4)
    # A Concatenate read by a Conv is followed (the consumer is sliced at strip time)...
    prune_filters_low_magnitude(_residual_net(), schedule)
    # ...a BatchNormalization after it (channels of two groups) is refused, named.
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    x = layers.BatchNormalization(name="joint_bn")(layers.Concatenate()([a, b]))
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    with pytest.raises(FilterPruningError, match="'joint_bn'.*Concatenate"):
        prune_filters_low_magnitude(model, schedule)


def test_gradual_filters_while_distilling():
    import kd_keras
    from kd_keras.pruning import PolynomialDecay, prune_filters_low_magnitude, strip_filters

    teacher = _randomize(cnn_student(filters=(16, 16), name="teacher"), seed=5)
    student = prune_filters_low_magnitude(
        _randomize(cnn_student()), PolynomialDecay(0.0, 0.5, 0, 4, frequency=1)
    )
    distiller = kd_keras.Distiller(
        student=student,
        teacher=teacher,
        losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
        alpha=0.1,
    )
    distiller.compile(optimizer="adam")
    x = _input(teacher, n=32)
    distiller.fit(x, np.arange(32) % 10, epochs=1, batch_size=8, verbose=0)  # 4 steps
    small = strip_filters(distiller.student)
    assert small.get_layer("conv1").filters == 4
    assert small.get_layer("conv2").filters == 8
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x, training=False)),
        keras.ops.convert_to_numpy(distiller.student(x, training=False)),
        atol=TOL,
        rtol=1e-6,  # logits of a few tens: float32 rounding
    )


# ------------------------------------------------------- pipeline and CLI
def test_config_prune_filters():
    from kd_keras.pipeline.config import ConfigError, validate_config

    base = {"data": {"name": "digits"}, "teacher": {"builder": "cnn_teacher"}}
    base["student"] = {"builder": "cnn_student"}
    config = validate_config(dict(base, prune={"filters": 0.5}))
    assert config["prune"]["filters"] == 0.5
    assert config["prune"]["final_sparsity"] is None
    with pytest.raises(ConfigError, match="'prune.filters' removes whole filters"):
        validate_config(dict(base, prune={"filters": 0.5, "final_sparsity": 0.8}))
    with pytest.raises(ConfigError, match="prune.filters"):
        validate_config(dict(base, prune={"filters": 1.0}))


def test_cli_prune_filters(tmp_path, capsys):
    from kd_keras import cli
    from kd_keras.pipeline import steps

    (xt, _), _ = steps.load_data({"name": "digits"})
    model = cnn_student(xt.shape[1:])
    model.save(tmp_path / "s.keras")
    out = tmp_path / "p.keras"
    argv = ["prune", str(tmp_path / "s.keras"), "--data", "digits", "--filters", "0.5"]
    assert cli.main([*argv, "--out", str(out), "--epochs", "1"]) == 0
    pruned = keras.saving.load_model(out)
    assert pruned.get_layer("conv1").filters == 4
    assert pruned.get_layer("conv2").filters == 8
    assert "pruned test accuracy" in capsys.readouterr().out


# ------------------------------------------- sparse weights in the .tflite
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite conversion")
def test_sparse_tflite_encoding(tmp_path):
    from kd_keras import pruning
    from kd_keras.export import to_tflite
    from kd_keras.quantization.convert import convert, tflite_ops
    from kd_keras.runtime import TFLiteRunner

    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.Conv2D(128, 1, activation="relu", name="pointwise")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(layers.Dense(256)(x)))
    pruned = pruning.prune_low_magnitude(model, pruning.ConstantSparsity(0.8, 0, frequency=1))
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    data = _input(model, n=8)
    pruned.fit(data, np.arange(8), epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    sparse_model = pruning.strip_pruning(pruned)
    dense, sparse = convert(sparse_model), convert(sparse_model, sparse=True)
    # 80 % zeros in a sparse (index + value) format: well under half the bytes.
    assert len(sparse) < 0.5 * len(dense)
    assert "DENSIFY" in {op["op"] for op in tflite_ops(sparse)}
    assert "DENSIFY" not in {op["op"] for op in tflite_ops(dense)}
    expected = keras.ops.convert_to_numpy(sparse_model(data))
    np.testing.assert_allclose(TFLiteRunner(sparse)(data), expected, atol=1e-5)
    report = to_tflite(sparse_model, tmp_path / "sparse.tflite", sparse=True, sample_inputs=data)
    assert report.passed and report.max_abs_diff <= 1e-5
    assert (tmp_path / "sparse.tflite").stat().st_size == len(sparse)
