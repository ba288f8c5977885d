"""Filter pruning edge cases: the importance inputs, dependency corners and
surgery details the main tests do not reach, each checked against an
independent reference (a NumPy backprop, a hand count, the unmodified model
with the removed channels zeroed, or the exact refusal message).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from kd_keras.pruning import FilterPruningError, prune_filters
from kd_keras.pruning.dependency import ChannelGraph
from kd_keras.pruning.filters import check_round_to, select_channels
from kd_keras.pruning.importance import channel_scores, filter_norms

BN_EPSILON = 1e-3


# --------------------------------------------------------------- importance
def test_filter_norms_default_to_l1_accumulated_in_float64():
    np.testing.assert_array_equal(filter_norms(np.ones((3, 3, 4, 8))), np.full(8, 36.0))
    # One large weight and a thousand small ones in float32: a float32 sum
    # drops most of the small ones, the float64 one keeps them all.
    column = np.array([1.0] + [1e-8] * 1000, np.float32)
    kernel = np.stack([column, -2 * column], axis=1)
    wide = kernel.astype(np.float64)
    np.testing.assert_allclose(filter_norms(kernel), np.abs(wide).sum(0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        filter_norms(kernel, order=2), np.sqrt((wide**2).sum(0)), rtol=1e-12, atol=0
    )
    inputs = keras.Input((1001,))
    model = keras.Model(inputs, layers.Dense(2, use_bias=False, name="dense")(inputs))
    model.get_layer("dense").set_weights([kernel])
    graph = ChannelGraph(model)
    # `importance` defaults to "l1".
    scores = channel_scores(model, graph)
    np.testing.assert_allclose(
        scores[graph.producer_ids["dense"]], np.abs(wide).sum(0), rtol=1e-12, atol=0
    )


def test_bn_gamma_keeps_l1_for_a_group_without_batch_normalization():
    """Network slimming scores |gamma|; a producer no BatchNormalization
    follows (here the first convolution and the output Dense) keeps its L1
    norms, whatever order the groups come in."""
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(6, 3, name="plain")(inputs)
    x = layers.ReLU()(x)
    x = layers.Conv2D(4, 3, use_bias=False, name="normed")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(x))
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.weights])
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "bn_gamma")

    def l1(name):
        return np.abs(np.asarray(model.get_layer(name).kernel, np.float64)).sum(axis=(0, 1, 2))

    np.testing.assert_allclose(scores[graph.producer_ids["plain"]], l1("plain"), rtol=1e-6)
    gamma = np.abs(np.asarray(model.get_layer("bn").gamma))
    np.testing.assert_allclose(scores[graph.producer_ids["normed"]], gamma, rtol=1e-6)
    logits = np.abs(np.asarray(model.get_layer("logits").kernel, np.float64)).sum(axis=0)
    np.testing.assert_allclose(scores[graph.producer_ids["logits"]], logits, rtol=1e-6)


def _probs_model(head: str):
    """Dense (no bias) -> BatchNormalization -> ReLU -> softmax head, with
    moving statistics far from (0, 1): inference and training mode differ.

    `head="activation"` ends in Dense(activation="softmax"), `"layer"` in a
    `Softmax` layer after a linear Dense, `"logits"` in a linear Dense.
    """
    inputs = keras.Input((5,))
    x = layers.Dense(4, use_bias=False, name="hidden")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    if head == "activation":
        out = layers.Dense(3, activation="softmax", name="head")(x)
    else:
        out = layers.Dense(3, name="head")(x)
        if head == "layer":
            out = layers.Softmax(name="probs")(out)
    model = keras.Model(inputs, out)
    rng = np.random.default_rng(7)
    model.get_layer("hidden").set_weights([rng.normal(0, 0.8, (5, 4))])
    model.get_layer("bn").set_weights(
        [
            rng.uniform(0.5, 1.5, 4),  # gamma
            rng.normal(0, 0.3, 4),  # beta
            rng.normal(0, 0.5, 4),  # moving mean
            rng.uniform(0.5, 2.0, 4),  # moving variance
        ]
    )
    model.get_layer("head").set_weights([rng.normal(0, 0.8, (4, 3)), rng.normal(0, 0.3, 3)])
    return model


def _data(n, seed=11):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng.integers(0, 3, n)


def _taylor_reference(model, batches, loss="crossentropy"):
    """NumPy, float64: per batch, |sum_n a * dL/da| for each producer output
    `a` (hidden: x W1; head: its logits z), L the mean cross-entropy of the
    softmax probabilities (or, `loss="first_logit"`, the mean of z[:, 0]),
    with BatchNormalization in inference mode."""
    w1 = np.asarray(model.get_layer("hidden").kernel, np.float64)
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in model.get_layer("bn").weights)
    w2, b2 = (np.asarray(v, np.float64) for v in model.get_layer("head").weights)
    hidden, head = np.zeros(4), np.zeros(3)
    for xb, yb in batches:
        xb = np.asarray(xb, np.float64)
        yb = np.asarray(yb)
        a = xb @ w1
        scale = gamma / np.sqrt(var + BN_EPSILON)
        h = (a - mean) * scale + beta
        z = np.maximum(h, 0) @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        # d(-log p_y)/dz = p - onehot(y) for the probabilities' cross-entropy.
        dz = (p - np.eye(3)[yb]) / len(xb)
        if loss == "first_logit":
            dz = np.zeros_like(z)
            dz[:, 0] = 1.0 / len(xb)
        da = (dz @ w2.T) * (h > 0) * scale
        hidden += np.abs((a * da).sum(axis=0))
        head += np.abs((z * dz).sum(axis=0))
    return hidden, head


def _scores(model, data, batches):
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "taylor", data=data, batches=batches)
    return scores[graph.producer_ids["hidden"]], scores[graph.producer_ids["head"]]


def _assert_taylor(model, data, batches, expected_batches):
    got_hidden, got_head = _scores(model, data, batches)
    want_hidden, want_head = _taylor_reference(model, expected_batches)
    np.testing.assert_allclose(got_hidden, want_hidden, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got_head, want_head, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("head", ["activation", "layer"])
def test_taylor_on_a_softmax_output_uses_the_probabilities_cross_entropy(head):
    """A model ending in softmax (activation or `Softmax` layer) gets
    from_logits=False; BatchNormalization runs in inference mode; a producer
    without bias (hidden) and one with (head) both get their scores."""
    model = _probs_model(head)
    x, y = _data(16)
    _assert_taylor(model, (x, y), 2, [(x[:8], y[:8]), (x[8:], y[8:])])
    # The reference bites where the loss sees what it is given: scoring the
    # probabilities as if they were logits gives other numbers. (TensorFlow's
    # cross-entropy finds the logits behind a softmax output by itself, so
    # there from_logits=True happens to give the same scores.)
    if keras.backend.backend() != "tensorflow":
        graph = ChannelGraph(model)
        as_logits = channel_scores(
            model,
            graph,
            "taylor",
            data=(x, y),
            batches=2,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        want_hidden, _ = _taylor_reference(model, [(x[:8], y[:8]), (x[8:], y[8:])])
        assert np.max(np.abs(as_logits[graph.producer_ids["hidden"]] - want_hidden)) > 1e-3


def test_taylor_on_a_convolution_sums_over_its_whole_kernel():
    """A 1-wide Conv1D on one position computes the Dense model's hidden
    layer: same scores, from a (1, 5, 4) kernel instead of a (5, 4) one."""
    dense = _probs_model("activation")
    inputs = keras.Input((1, 5))
    x = layers.Conv1D(4, 1, use_bias=False, name="hidden")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="bn")(x)
    x = layers.Flatten()(layers.ReLU()(x))
    conv = keras.Model(inputs, layers.Dense(3, activation="softmax", name="head")(x))
    conv.get_layer("hidden").set_weights([np.asarray(dense.get_layer("hidden").kernel)[None]])
    for name in ("bn", "head"):
        conv.get_layer(name).set_weights(dense.get_layer(name).get_weights())
    x, y = _data(16)
    graph = ChannelGraph(conv)
    scores = channel_scores(conv, graph, "taylor", data=(x[:, None, :], y), batches=2)
    want_hidden, want_head = _taylor_reference(dense, [(x[:8], y[:8]), (x[8:], y[8:])])
    np.testing.assert_allclose(scores[graph.producer_ids["hidden"]], want_hidden, rtol=1e-4)
    np.testing.assert_allclose(scores[graph.producer_ids["head"]], want_head, rtol=1e-4)


def test_taylor_reads_datasets_lists_and_tuples_of_batches():
    model = _probs_model("activation")
    x, y = _data(20)
    batch_list = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 20, 4)]
    first3 = batch_list[:3]
    # A tf.data.Dataset of (x, y), more batches than asked for: the first 3.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    _assert_taylor(model, dataset, 3, first3)
    # A list of (x, y) tuples, and of [x, y] lists, more than `batches`.
    _assert_taylor(model, batch_list, 3, first3)
    _assert_taylor(model, [list(b) for b in batch_list], 3, first3)
    # A tuple of three (x, y) batches is batches, not an (x, y) pair.
    _assert_taylor(model, tuple(first3), 4, first3)
    # Labels as a Python list beside an x array: still one (x, y) pair.
    _assert_taylor(model, (x[:8], y[:8].tolist()), 2, [(x[:4], y[:4]), (x[4:8], y[4:8])])


@pytest.mark.parametrize(
    "n, count, bounds",
    [
        (5, 4, [(0, 2), (2, 4), (4, 5)]),  # ceil(5 / 4) = 2 per batch: 3 batches
        (4, 3, [(0, 2), (2, 4)]),  # ceil(4 / 3) = 2: the third would be empty
        (3, 4, [(0, 1), (1, 2), (2, 3)]),  # fewer samples than batches: one each
    ],
)
def test_taylor_splits_an_array_pair_into_count_batches(n, count, bounds):
    model = _probs_model("logits")
    x, y = _data(n)
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "taylor", data=(x, y), batches=count)
    # A logits model: the reference's softmax cross-entropy is the loss.
    want_hidden, want_head = _taylor_reference(model, [(x[a:b], y[a:b]) for a, b in bounds])
    np.testing.assert_allclose(scores[graph.producer_ids["hidden"]], want_hidden, rtol=1e-4)
    np.testing.assert_allclose(scores[graph.producer_ids["head"]], want_head, rtol=1e-4)


@pytest.mark.parametrize(
    "batch, kind",
    [
        (np.zeros((4, 5), "float32"), "ndarray"),
        ((np.zeros((4, 5), "float32"),), "tuple"),
        ({"x": np.zeros((4, 5), "float32")}, "dict"),
    ],
)
def test_taylor_refuses_batches_that_are_not_x_y_pairs(batch, kind):
    model = _probs_model("logits")
    with pytest.raises(FilterPruningError) as error:
        channel_scores(model, ChannelGraph(model), "taylor", data=[batch])
    assert str(error.value) == (f'importance="taylor" needs (x, y) batches; the data gave {kind}.')


def test_taylor_uses_four_batches_by_default():
    model = _probs_model("activation")
    x, y = _data(24)
    batch_list = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 24, 4)]
    graph = ChannelGraph(model)
    scores = channel_scores(model, graph, "taylor", data=batch_list)
    want_hidden, want_head = _taylor_reference(model, batch_list[:4])
    np.testing.assert_allclose(scores[graph.producer_ids["hidden"]], want_hidden, rtol=1e-4)
    np.testing.assert_allclose(scores[graph.producer_ids["head"]], want_head, rtol=1e-4)


def test_taylor_without_data_says_what_to_pass():
    model = _probs_model("logits")
    with pytest.raises(FilterPruningError) as error:
        channel_scores(model, ChannelGraph(model), "taylor")
    assert str(error.value) == (
        'importance="taylor" needs data: pass data=(x, y) (a few batches of '
        "training images and labels) or a dataset of (x, y) batches."
    )


# --------------------------------------------------------------- dependency
def _refusal(name, kind, why):
    return (
        f"Filter pruning cannot follow the channels through '{name}' ({kind}): {why} "
        f"Add '{name}' to `skip` to keep its input and output channels whole, or prune "
        "a model without it."
    )


def _conv_then(layer):
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, layer(x))


def _free_size_flatten():
    inputs = keras.Input((None, None, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, layers.Flatten(name="flatten")(x))


def _shared_conv():
    inputs = keras.Input((8, 8, 3))
    conv = layers.Conv2D(3, 3, padding="same", name="shared")
    return keras.Model(inputs, conv(conv(inputs)))


def _nested():
    inputs = keras.Input((8, 8, 3))
    inner = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(3, 1)], name="inner")
    return keras.Model(inputs, inner(inputs))


def _lora():
    inputs = keras.Input((3,))
    dense = layers.Dense(4, name="adapted")
    x = dense(inputs)
    dense.enable_lora(2)
    return keras.Model(inputs, layers.Dense(2)(x))


def _lstm():
    inputs = keras.Input((8, 4))
    return keras.Model(inputs, layers.LSTM(2, name="rnn")(inputs))


def _non_scalar_constant():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    return keras.Model(inputs, x * np.arange(4, dtype="float32"))


@pytest.mark.parametrize(
    "build, name, kind, why",
    [
        (
            lambda: _conv_then(layers.Conv2D(4, 3, data_format="channels_first", name="cf")),
            "cf",
            "Conv2D",
            "only channels_last convolutions are supported.",
        ),
        (
            lambda: _conv_then(layers.Conv2D(4, 3, groups=2, name="grouped")),
            "grouped",
            "Conv2D",
            "grouped convolution (groups=2).",
        ),
        (_lora, "adapted", "Dense", "LoRA / quantized kernels are not sliced."),
        (
            lambda: _conv_then(layers.BatchNormalization(axis=1, name="bn")),
            "bn",
            "BatchNormalization",
            "BatchNormalization over axis 1, not the channels.",
        ),
        (
            lambda: _conv_then(layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")),
            "dw",
            "DepthwiseConv2D",
            "depth_multiplier=2 (only 1 is followed).",
        ),
        (
            lambda: _conv_then(layers.DepthwiseConv2D(3, data_format="channels_first", name="dw")),
            "dw",
            "DepthwiseConv2D",
            "only channels_last convolutions are supported.",
        ),
        (
            lambda: _conv_then(layers.MaxPooling2D(data_format="channels_first", name="pool")),
            "pool",
            "MaxPooling2D",
            "only channels_last layers are supported.",
        ),
        (
            _non_scalar_constant,
            "multiply",
            "Multiply",
            "an elementwise op with a non-scalar constant operand.",
        ),
        (_shared_conv, "shared", "Conv2D", "the layer is called more than once (shared weights)."),
        (
            _free_size_flatten,
            "flatten",
            "Flatten",
            "the input's spatial size must be known.",
        ),
        (
            _nested,
            "inner",
            "Sequential",
            "nested models are not followed; build one flat Functional model.",
        ),
        (
            _lstm,
            "rnn",
            "LSTM",
            "this layer type is not supported by filter pruning.",
        ),
    ],
)
def test_unfollowable_layers_are_refused_with_their_name_and_the_way_out(build, name, kind, why):
    with pytest.raises(FilterPruningError) as error:
        ChannelGraph(build())
    assert str(error.value) == _refusal(name, kind, why)


def test_graph_refusals_name_the_model_and_the_fix():
    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(FilterPruningError) as error:
        ChannelGraph(Custom(name="custom"))
    assert str(error.value) == (
        "Filter pruning rebuilds a Functional or Sequential model from its graph; 'custom' is "
        "a subclassed Custom. Build it with the Functional API (keras.Model(inputs, outputs))."
    )

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, layers.ReLU(name="relu")(x), name="net")
    with pytest.raises(FilterPruningError) as error:
        ChannelGraph(model, skip=["zz", "conv", "aa"])
    assert str(error.value) == (
        "`skip` names ['aa', 'zz'], which are not layers of 'net'. "
        f"Layer names: {sorted(layer.name for layer in model.layers)}."
    )

    inputs = keras.Input((8, 8, None))
    model = keras.Model(inputs, layers.ReLU()(inputs), name="open_channels")
    with pytest.raises(FilterPruningError) as error:
        ChannelGraph(model)
    assert str(error.value) == (
        "The channel axis of the tensor at 'open_channels' has an unknown size; build the "
        "model on a keras.Input with a known channel count."
    )


# ------------------------------------------------------------------ filters
def test_taylor_pruning_uses_four_batches_by_default():
    model = _probs_model("activation")
    x, y = _data(24, seed=15)
    batch_list = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 24, 4)]
    four, _ = _taylor_reference(model, batch_list[:4])
    five, _ = _taylor_reference(model, batch_list[:5])
    kept = np.sort(np.argsort(four)[2:])
    assert not np.array_equal(kept, np.sort(np.argsort(five)[2:]))  # the count matters
    pruned = prune_filters(model, 0.5, importance="taylor", data=batch_list)
    kernel = np.asarray(model.get_layer("hidden").kernel)
    np.testing.assert_array_equal(np.asarray(pruned.get_layer("hidden").kernel), kernel[:, kept])


def _sequential():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            layers.Conv2D(4, 3, padding="same", name="conv1"),
            layers.ReLU(),
            layers.Conv2D(6, 3, padding="same", name="conv2"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, name="logits"),
        ],
        name="seq_net",
    )
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.weights])
    return model


def test_sequential_model_is_pruned_exactly():
    model = _sequential()
    pruned = prune_filters(model, 0.5)
    assert pruned.name == "seq_net"
    # NumPy reference: keep the largest-L1 half of each conv's filters; the
    # outputs equal the original's with the other filters zeroed.
    k1, b1 = (np.asarray(w) for w in model.get_layer("conv1").weights)
    k2, b2 = (np.asarray(w) for w in model.get_layer("conv2").weights)
    keep1 = np.sort(np.argsort(np.abs(k1).sum((0, 1, 2)))[2:])
    keep2 = np.sort(np.argsort(np.abs(k2).sum((0, 1, 2)))[3:])
    np.testing.assert_array_equal(np.asarray(pruned.get_layer("conv1").kernel), k1[..., keep1])
    np.testing.assert_array_equal(
        np.asarray(pruned.get_layer("conv2").kernel), k2[:, :, keep1][..., keep2]
    )
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    for name, keep in (("conv1", keep1), ("conv2", keep2)):
        kernel, bias = (np.asarray(w).copy() for w in model.get_layer(name).weights)
        gone = np.setdiff1d(np.arange(kernel.shape[-1]), keep)
        kernel[..., gone] = 0.0
        bias[gone] = 0.0
        zeroed.get_layer(name).set_weights([kernel, bias])
    x = np.random.default_rng(3).uniform(0, 1, (2, 6, 6, 2)).astype("float32")
    got = keras.ops.convert_to_numpy(pruned(x))
    want = keras.ops.convert_to_numpy(zeroed(x))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_unbuilt_sequential_is_refused():
    model = keras.Sequential([layers.Dense(3)], name="no_input")
    with pytest.raises(FilterPruningError) as error:
        prune_filters(model, 0.5)
    assert str(error.value) == (
        "Sequential model 'no_input' has no input shape yet; start it with "
        "keras.Input(shape) or call build() before pruning filters."
    )


@pytest.mark.parametrize("round_to", [True, 2.0, "4", 0, -1])
def test_round_to_must_be_a_positive_integer(round_to):
    with pytest.raises(FilterPruningError) as error:
        check_round_to(round_to)
    assert str(error.value) == f"round_to must be a positive integer, got {round_to!r}."


def _coupled_pair():
    """Producers `a` and `b` coupled by a residual Add: 4 shared channels."""
    inputs = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(layers.ReLU()(a))
    x = layers.GlobalAveragePooling2D()(layers.Add()([a, b]))
    return keras.Model(inputs, layers.Dense(2, name="out")(x))


@pytest.mark.parametrize("fraction, removed", [(0.25, [3]), (0.5, [3, 2]), (0.0, [])])
def test_selection_removes_the_lowest_scores_summed_over_a_group(fraction, removed):
    graph = ChannelGraph(_coupled_pair())
    scores = np.zeros(graph.num_ids)
    # Sums per coupled channel 5, 5.2, 4.5, 3.3: by `a` alone, by `b` alone
    # or by channel order the choice would differ.
    scores[graph.producer_ids["a"]] = [1.0, 5.0, 4.0, 3.0]
    scores[graph.producer_ids["b"]] = [4.0, 0.2, 0.5, 0.3]
    expected = set(graph.roots(graph.producer_ids["a"][removed]).tolist())
    assert select_channels(graph, scores, fraction) == expected
    assert select_channels(graph, scores, {"b": fraction}) == expected


def _concat_into_add():
    """`a` (2) and `b` (2) concatenated, added to `c` (4): one group of 4
    channels in which `a` owns only two."""
    inputs = keras.Input((6, 6, 3))
    a = layers.Conv2D(2, 1, name="a")(inputs)
    b = layers.Conv2D(2, 1, name="b")(inputs)
    c = layers.Conv2D(4, 1, name="c")(inputs)
    x = layers.Add()([layers.Concatenate()([a, b]), c])
    return keras.Model(inputs, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("a_scores, kept", [([2.0, 1.0], 0), ([1.0, 2.0], 1)])
def test_a_producer_keeps_its_most_important_channel(a_scores, kept):
    graph = ChannelGraph(_concat_into_add())
    scores = np.zeros(graph.num_ids)
    scores[graph.producer_ids["a"]] = a_scores
    scores[graph.producer_ids["b"]] = [9.0, 9.0]
    scores[graph.producer_ids["c"]] = [0.1, 0.1, 0.1, 0.1]
    # Half of 4 goes: both of `a`'s channels are the weakest, but emptying
    # `a` is not allowed, so only its weaker one is removed.
    removed = select_channels(graph, scores, 0.5)
    assert removed == {int(graph.roots(graph.producer_ids["a"][[1 - kept]])[0])}


def test_fraction_refusals_name_the_argument():
    graph = ChannelGraph(_coupled_pair())
    scores = np.ones(graph.num_ids)
    with pytest.raises(FilterPruningError) as error:
        select_channels(graph, scores, 1.0)
    assert str(error.value) == (
        "fraction must be in [0, 1) (the share of filters removed; 1 would remove every "
        "filter), got 1.0."
    )
    with pytest.raises(FilterPruningError) as error:
        select_channels(graph, scores, {"a": "half"})
    assert str(error.value) == "fraction['a'] must be a number in [0, 1), got 'half'."


def test_prune_filters_passes_skip_loss_and_refusals_through():
    model = _probs_model("logits")
    x, y = _data(16, seed=1)
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]

    def first_logit(y_true, y_pred):
        return keras.ops.mean(y_pred[:, 0])

    custom = _taylor_reference(model, batches, loss="first_logit")[0]
    default = _taylor_reference(model, batches)[0]
    kept = np.sort(np.argsort(custom)[2:])
    assert not np.array_equal(kept, np.sort(np.argsort(default)[2:]))  # the loss matters
    pruned = prune_filters(
        model, 0.5, importance="taylor", data=(x, y), loss=first_logit, batches=2
    )
    kernel = np.asarray(model.get_layer("hidden").kernel)
    np.testing.assert_array_equal(np.asarray(pruned.get_layer("hidden").kernel), kernel[:, kept])
    # `batches`: one of four batches.
    x, y = _data(16, seed=23)
    four = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    first = np.sort(np.argsort(_taylor_reference(model, four[:1])[0])[2:])
    assert not np.array_equal(first, np.sort(np.argsort(_taylor_reference(model, four)[0])[2:]))
    pruned = prune_filters(model, 0.5, importance="taylor", data=four, batches=1)
    np.testing.assert_array_equal(np.asarray(pruned.get_layer("hidden").kernel), kernel[:, first])
    # `skip` as one name.
    assert prune_filters(model, 0.5, skip="hidden").get_layer("hidden").units == 4
    assert prune_filters(model, 0.5).get_layer("hidden").units == 2
    with pytest.raises(FilterPruningError) as error:
        prune_filters(model, "half")
    assert str(error.value) == "fraction must be a number in [0, 1), got 'half'."
    with pytest.raises(FilterPruningError) as error:
        prune_filters("model.keras", 0.5)
    assert str(error.value) == "prune_filters takes a Keras 3 Functional model, got str."


# ------------------------------------------------------- dependency groups
def _between(middle):
    """p (4 filters) -> `middle` -> q (2 filters) -> GAP -> out."""
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 1, name="p")(inputs)
    x = middle(x)
    x = layers.Conv2D(2, 1, name="q")(x)
    return keras.Model(inputs, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize(
    "middle, mixes",
    [
        (lambda x: layers.Activation("softmax")(x), True),
        (lambda x: layers.Activation("log_softmax")(x), True),
        (lambda x: layers.Activation("relu")(x), False),
        # A callable without a __name__ (a layer object) acts per channel too.
        (lambda x: layers.Activation(layers.ReLU())(x), False),
        (lambda x: layers.Softmax()(x), True),
        (lambda x: layers.LayerNormalization()(x), True),
        (lambda x: layers.Rescaling(2.0, offset=1.0)(x), False),
        (lambda x: layers.Rescaling(np.full(4, 2.0, "float32"))(x), True),
        (lambda x: layers.ZeroPadding2D(1)(x), False),
        (lambda x: keras.ops.relu(x), False),
        (lambda x: x * 2.0, False),
        (lambda x: layers.Reshape((3, 12, 4))(x), False),
        (lambda x: layers.Reshape((6, 12, 2))(x), True),
        (lambda x: layers.Reshape((6, 6, -1))(x), True),
    ],
)
def test_channels_pass_through_or_stop_at_a_layer(middle, mixes):
    """A layer that acts per channel hands p's channel ids to q's kernel
    rows; one that mixes channels (or reshapes them away) fixes p's
    channels and gives q fresh fixed inputs."""
    graph = ChannelGraph(_between(middle))
    (group_p,) = [g for g in graph.groups() if g.producers == ["p"]]
    assert group_p.fixed == [mixes] * 4
    if mixes:
        assert set(graph.consumer_ids["q"].tolist()).isdisjoint(graph.producer_ids["p"].tolist())
        assert set(graph.roots(graph.consumer_ids["q"]).tolist()) <= graph.fixed_roots()
    else:
        np.testing.assert_array_equal(graph.consumer_ids["q"], graph.producer_ids["p"])


def test_skip_fixes_a_producer_and_stops_at_other_layers():
    model = _between(layers.ReLU(name="act"))
    graph = ChannelGraph(model, skip=["p"])
    (group_p,) = [g for g in graph.groups() if g.producers == ["p"]]
    assert group_p.fixed == [True] * 4
    np.testing.assert_array_equal(graph.consumer_ids["q"], graph.producer_ids["p"])
    # A skipped pass-through layer is a barrier: p fixed, q reads fresh ids.
    graph = ChannelGraph(model, skip=["act"])
    (group_p,) = [g for g in graph.groups() if g.producers == ["p"]]
    assert group_p.fixed == [True] * 4
    assert set(graph.consumer_ids["q"].tolist()).isdisjoint(graph.producer_ids["p"].tolist())
    (group_q,) = [g for g in graph.groups() if g.producers == ["q"]]
    assert group_q.fixed == [False, False]


def test_groups_join_through_a_bridging_producer():
    graph = ChannelGraph(_concat_into_add())
    groups = graph.groups()
    assert [g.producers for g in groups] == [["a", "b", "c"], ["out"]]
    roots = graph.roots(np.concatenate([graph.producer_ids["a"], graph.producer_ids["b"]])).tolist()
    assert groups[0].classes == roots
    assert groups[0].width == 4
    assert groups[0].fixed == [False] * 4
    assert groups[1].fixed == [True, True]  # the model output
    np.testing.assert_array_equal(
        graph.roots(graph.producer_ids["c"]), graph.roots(graph.consumer_ids["out"])
    )


def test_broadcast_operand_raw_add_and_non_channel_concatenation():
    inputs = keras.Input((6, 6, 3))
    wide = layers.Conv2D(4, 1, name="wide")(inputs)
    gate = layers.Conv2D(1, 1, name="gate")(inputs)
    x = layers.Multiply()([wide, gate])  # gate's one channel broadcasts
    x = x + layers.Conv2D(4, 1, name="third")(inputs)  # a raw op on two tensors
    other = layers.Conv2D(4, 1, name="other")(inputs)
    x = layers.Concatenate(axis=1)([x, other])  # stacks rows: channel i is one channel
    model = keras.Model(inputs, layers.Dense(2, name="out")(layers.GlobalAveragePooling2D()(x)))
    graph = ChannelGraph(model)
    groups = {tuple(sorted(g.producers)): g for g in graph.groups()}
    assert set(groups) == {("other", "third", "wide"), ("gate",), ("out",)}
    assert groups[("other", "third", "wide")].fixed == [False] * 4
    assert groups[("gate",)].fixed == [True]
    for name in ("third", "other"):
        np.testing.assert_array_equal(
            graph.roots(graph.producer_ids["wide"]), graph.roots(graph.producer_ids[name])
        )


def test_flatten_of_features_keeps_their_ids_and_a_reshape_records_them():
    inputs = keras.Input((5,))
    x = layers.Flatten()(layers.Dense(4, name="features")(inputs))
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    graph = ChannelGraph(model)
    np.testing.assert_array_equal(graph.consumer_ids["out"], graph.producer_ids["features"])

    graph = ChannelGraph(_between(layers.Reshape((3, 12, 4), name="rows")))
    assert list(graph.reshape_ids) == ["rows"]
    np.testing.assert_array_equal(graph.reshape_ids["rows"], graph.producer_ids["p"])


def test_a_shared_layer_with_weights_is_refused_a_weightless_one_followed():
    inputs = keras.Input((6, 6, 3))
    bn = layers.BatchNormalization(name="shared_bn")
    a = bn(layers.Conv2D(3, 1, name="a")(inputs))
    b = bn(layers.Conv2D(3, 1, name="b")(a))
    with pytest.raises(FilterPruningError) as error:
        ChannelGraph(keras.Model(inputs, b))
    assert str(error.value) == _refusal(
        "shared_bn",
        "BatchNormalization",
        "the layer is called more than once (shared weights).",
    )
    relu = layers.ReLU(name="shared_relu")
    a = relu(layers.Conv2D(3, 1, name="a2")(inputs))
    b = relu(layers.Conv2D(3, 1, name="b2")(a))
    graph = ChannelGraph(keras.Model(inputs, b))
    np.testing.assert_array_equal(graph.consumer_ids["b2"], graph.producer_ids["a2"])


def test_a_channel_keeping_reshape_is_rebuilt_with_the_kept_count():
    """Squeeze-excite style: GAP -> Reshape((1, 1, C)) -> 1x1 conv. Pruning
    `p` must shrink the Reshape's target to the kept channel count, and the
    pruned model equals the original with `p`'s removed filters zeroed."""
    inputs = keras.Input((6, 6, 3))
    p = layers.Conv2D(4, 1, name="p")(inputs)
    x = layers.Reshape((1, 1, 4), name="se_shape")(layers.GlobalAveragePooling2D()(p))
    x = layers.Conv2D(2, 1, name="q")(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(layers.Flatten()(x)))
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.weights])
    pruned = prune_filters(model, {"p": 0.5})
    assert tuple(pruned.get_layer("se_shape").target_shape) == (1, 1, 2)
    kernel, bias = (np.asarray(w).copy() for w in model.get_layer("p").weights)
    gone = np.argsort(np.abs(kernel).sum((0, 1, 2)))[:2]
    kernel[..., gone] = 0.0
    bias[gone] = 0.0
    model.get_layer("p").set_weights([kernel, bias])
    x = np.random.default_rng(5).uniform(0, 1, (2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pruned(x)),
        keras.ops.convert_to_numpy(model(x)),
        atol=1e-5,
        rtol=0,
    )
