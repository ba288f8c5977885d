"""Pruning the architectures people ship: prune -> fit -> strip on graphs with raw
`keras.ops` nodes (MobileNetV3's hard-swish, `h = h + inp`), nested models, a
custom layer that builds its sub-layer lazily, MultiHeadAttention, separable
convolutions, LSTM / GRU and Conv2DTranspose.

Each model is checked the same way: every pruned weight's mask has the
scheduled number of zeros and removes the smallest magnitudes (the mask
recomputed at a learning-rate-0 step equals a NumPy magnitude mask of
`weight * previous mask`); the stripped model computes what the masked model
computes; both survive a `.keras` round trip.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import pruning

SPARSITY = 0.5


def np_magnitude_mask(w, sparsity):
    """TFMOT's rule: keep the k = max(round(n (1 - s)), 1) largest |w| (ties at the k-th kept)."""
    a = np.abs(w)
    k = int(max(np.round(np.float32(a.size) * (np.float32(1) - np.float32(sparsity))), 1))
    threshold = np.sort(a.ravel())[::-1][k - 1]
    return (a >= threshold).astype(w.dtype)


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def wrappers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, pruning.PruneLowMagnitude)
    ]


def prune(model):
    schedule = pruning.ConstantSparsity(SPARSITY, 0, frequency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pruning.PrunedCoverageWarning)
        return pruning.prune_low_magnitude(model, pruning_schedule=schedule)


def train(pruned, x, y, loss, steps=3, batch_size=4, run_eagerly=False):
    pruned.compile(keras.optimizers.Adam(1e-2), loss, run_eagerly=run_eagerly)
    n = steps * batch_size
    cb = [pruning.UpdatePruningStep()]
    pruned.fit(
        x[:n], y[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=cb
    )
    # One more step at learning rate 0: the masks are recomputed from the
    # weights as they are now, which do not move, so NumPy can redo it.
    before = [
        (w, [np_(v.value) * np_(m.value) for v, m in zip(w.pruned_weights, w.masks)])
        for w in wrappers(pruned)
    ]
    pruned.optimizer.learning_rate.assign(0.0)
    pruned.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, verbose=0, callbacks=cb)
    return before


def check_masks(before, expected_layers):
    checked = set()
    for wrapper, effective in before:
        assert len(wrapper.masks) == len(effective)
        for mask, weight in zip(wrapper.masks, effective):
            got = np_(mask.value)
            want = np_magnitude_mask(weight, SPARSITY)
            n = weight.size
            assert int((got == 0).sum()) == n - max(round(n * (1 - SPARSITY)), 1), mask.name
            np.testing.assert_array_equal(got, want, err_msg=f"{wrapper.name}/{mask.name}")
        checked.add(type(wrapper.layer).__name__)
    assert expected_layers <= checked, expected_layers - checked


def check_report(pruned):
    """sparsity_report: one row per wrapped layer, all of its weights (its
    sub-layers' too: MultiHeadAttention's projections, an LSTM's cell)."""
    rows = {row.name: row for row in pruning.sparsity_report(pruned).layers}
    for wrapper in wrappers(pruned):
        masked = {
            id(w): np_(w.value) * np_(m.value)
            for w, m in zip(wrapper.pruned_weights, wrapper.masks)
        }
        values = [masked.get(id(w), np_(w.value)) for w in wrapper.layer.weights]
        row = rows[wrapper.layer.name]
        assert row.pruned and row.params == sum(v.size for v in values)
        assert row.zeros == sum(int((v == 0).sum()) for v in values)
    inner = {
        sub.name for w in wrappers(pruned) for sub in w.layer._flatten_layers(include_self=False)
    }
    assert not inner & set(rows)


def check_strip_and_save(pruned, x, tmp_path, atol=1e-5):
    # Direct calls, not `predict`: the same inference, without tracing a
    # predict function for each of the four models.
    masked_out = np_(pruned(x, training=False))
    stripped = pruning.strip_pruning(pruned)
    assert not wrappers(stripped)
    stripped_out = np_(stripped(x, training=False))
    assert np.max(np.abs(stripped_out - masked_out)) <= atol
    for name, model, out in (("pruned", pruned, masked_out), ("stripped", stripped, stripped_out)):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)  # safe_mode on
        np.testing.assert_allclose(np_(loaded(x, training=False)), out, atol=1e-6)
    return stripped


def images(shape, n=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, n)


SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="slow off TensorFlow")
def test_mobilenet_v3_small_hard_swish_raw_ops(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), minimalistic=False, classes=10
    )
    raw_ops = [op for op in model.operations if not isinstance(op, keras.layers.Layer)]
    assert raw_ops, "MobileNetV3's hard-swish is made of raw keras.ops nodes"
    pruned = prune(model)
    assert [op.name for op in pruned.operations if not isinstance(op, keras.layers.Layer)]
    x, y = images((32, 32, 3), n=8)
    # Eagerly: tracing its graph costs more than the 2 steps it runs.
    before = train(pruned, x, y, SCE, steps=1, run_eagerly=True)
    check_masks(before, {"Conv2D", "DepthwiseConv2D"})
    stripped = check_strip_and_save(pruned, x, tmp_path, atol=1e-4)
    assert stripped.layers[0].name == model.layers[0].name  # the input keeps its name


def residual_raw_ops_model():
    inp = keras.Input((12,), name="features")
    h = keras.layers.Dense(12, name="d1")(inp)
    h = h + inp  # a raw operator, not layers.Add
    h = ops.relu6(h) * (1.0 / 6.0)
    h = keras.layers.Dense(16, name="d2")(h[:, :8])
    return keras.Model(inp, keras.layers.Dense(4, name="logits")(h))


def nested_model():
    # A Sequential inside a Functional backbone inside a Functional task model.
    block = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, padding="same", name="stem")],
        name="block",
    )
    inp = keras.Input((8, 8, 3), name="pixels")
    h = keras.layers.ReLU()(block(inp))
    h = keras.layers.Conv2D(8, 3, name="conv")(h)
    backbone = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h), name="backbone")
    task_in = keras.Input((8, 8, 3), name="image")
    return keras.Model(task_in, keras.layers.Dense(4, name="head")(backbone(task_in)))


@keras.saving.register_keras_serializable(package="kd_keras_tests")
class LazyBlock(keras.layers.Layer):
    """Creates its Dense in __init__ and builds it in call(): no build()."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units)

    def call(self, inputs):
        return ops.relu(self.inner(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def lazy_model():
    inp = keras.Input((12,))
    h = LazyBlock(16, name="lazy")(inp)
    return keras.Model(inp, keras.layers.Dense(4, name="logits")(h))


def transformer_model(seq=6, vocab=20, dim=16):
    tokens = keras.Input((seq,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab, dim, name="embed")(tokens)
    a = keras.layers.MultiHeadAttention(2, 8, name="mha")(h, h)
    h = keras.layers.LayerNormalization(name="ln1")(h + a)
    f = keras.layers.Dense(32, activation="gelu", name="ffn1")(h)
    h = keras.layers.LayerNormalization(name="ln2")(h + keras.layers.Dense(dim, name="ffn2")(f))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(3, name="logits")(h))


def sequence_model():
    inp = keras.Input((12, 4), name="audio")
    h = keras.layers.SeparableConv1D(8, 3, padding="same", name="sep1d")(inp)
    h = keras.layers.LSTM(8, return_sequences=True, name="lstm")(h)
    h = keras.layers.GRU(8, name="gru")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(h))


def upsampling_model():
    inp = keras.Input((8, 8, 3))
    h = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep2d")(inp)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="down")(h)
    h = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(h)
    return keras.Model(inp, keras.layers.Conv2D(2, 1, name="out")(h))


CASES = {
    "residual_raw_ops": (residual_raw_ops_model, (12,), {"Dense"}),
    "nested": (nested_model, (8, 8, 3), {"Conv2D", "Dense"}),
    "lazy_custom_layer": (lazy_model, (12,), {"Dense"}),
    "transformer": (transformer_model, None, {"MultiHeadAttention", "Embedding", "Dense"}),
    "separable_lstm_gru": (sequence_model, (12, 4), {"SeparableConv1D", "LSTM", "GRU"}),
    "separable_transpose": (upsampling_model, (8, 8, 3), {"SeparableConv2D", "Conv2DTranspose"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prune_fit_strip_roundtrip(case, tmp_path):
    build, shape, expected = CASES[case]
    keras.utils.set_random_seed(1)
    model = build()
    if shape is None:
        x = np.random.default_rng(0).integers(0, 20, (16, 6)).astype("int32")
    else:
        x = images(shape)[0]
    out_shape = model.output.shape[1:]
    if case == "separable_transpose":
        y, loss = np.zeros((len(x), *out_shape), "float32"), "mse"
    else:
        y, loss = np.random.default_rng(0).integers(0, out_shape[-1], len(x)), SCE
    pruned = prune(model)
    before = train(pruned, x, y, loss)
    check_masks(before, expected)
    check_report(pruned)
    check_strip_and_save(pruned, x, tmp_path)


def test_nested_models_are_pruned_and_stripped_recursively():
    model = nested_model()
    pruned = prune(model)
    assert sorted(w.layer.name for w in wrappers(pruned)) == ["conv", "head", "stem"]
    backbone = pruned.get_layer("backbone")
    assert isinstance(backbone.get_layer("block"), keras.Sequential)
    stripped = pruning.strip_pruning(pruned)
    names = [layer.name for layer in stripped._flatten_layers(include_self=False)]
    assert {"backbone", "block", "stem", "conv", "head"} <= set(names)
    assert stripped.layers[0].name == "image"


def test_which_weights_each_layer_type_prunes():
    """As TFMOT for LSTM / GRU (kernel and recurrent kernel, not the bias) and
    MultiHeadAttention (its four projections); separable convolutions get
    both kernels (TFMOT: the pointwise one only)."""
    inp = keras.Input((5, 4))
    lstm = keras.layers.LSTM(3, return_sequences=True)
    gru = keras.layers.GRU(3, return_sequences=True)
    mha = keras.layers.MultiHeadAttention(2, 4)
    sep = keras.layers.SeparableConv1D(4, 3)
    h = gru(lstm(inp))
    sep(mha(h, h))
    weights = {
        "lstm": ([lstm.cell.kernel, lstm.cell.recurrent_kernel], [0, 0]),
        "gru": ([gru.cell.kernel, gru.cell.recurrent_kernel], [0, 0]),
        "mha": (
            [
                mha._query_dense.kernel,
                mha._key_dense.kernel,
                mha._value_dense.kernel,
                mha._output_dense.kernel,
            ],
            [0, 0, 0, 1],  # query/key/value (in, heads, dim); output (heads, dim, out)
        ),
        "sep": ([sep.depthwise_kernel, sep.pointwise_kernel], [None, -2]),
    }
    from kd_keras.pruning.wrapper import prunable_weights, reduced_axes

    for layer, (want, axes) in zip((lstm, gru, mha, sep), weights.values()):
        assert [id(w) for w in prunable_weights(layer)] == [id(w) for w in want]
        assert reduced_axes(layer) == axes
    wrapper = pruning.PruneLowMagnitude(mha)
    wrapper.build(None)
    assert len({m.name for m in wrapper.masks}) == 4  # one distinct mask per projection


def test_left_dense_layers_are_listed_once_in_one_warning():
    class CustomDense(keras.layers.Dense):  # a subclass: TFMOT does not guess its weights
        pass

    class RawScale(keras.layers.Layer):  # its own weight, no rule for it
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inp = keras.Input((8,))
    h = keras.layers.Dense(8, name="pruned")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = LazyBlock(8, name="lazy")(h)  # a composite: its Dense is pruned
    h = RawScale(name="raw")(h)
    shared = CustomDense(8, name="custom")
    h = shared(shared(h))
    h = keras.layers.LayerNormalization(name="ln")(h)
    model = keras.Model(inp, keras.layers.Dropout(0.1)(h))
    with pytest.warns(pruning.PrunedCoverageWarning) as record:
        pruned = pruning.prune_low_magnitude(model)
    assert len(record) == 1
    message = str(record[0].message)
    assert "left 2 layer(s)" in message
    assert message.count("'custom'") == 1  # called twice, listed once
    assert "'raw' (RawScale): no pruning rule" in message and "'lazy'" not in message
    assert "'custom' (CustomDense): a subclass of Dense without get_prunable_weights()" in message
    # Nothing to prune there: no weights (Dropout), or scales and offsets.
    assert "dropout" not in message and "'bn'" not in message and "'ln'" not in message
    assert [w.layer.name for w in wrappers(pruned)] == ["pruned", "lazy"]
    # Choosing explicitly (prunable= / skip=) silences it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", pruning.PrunedCoverageWarning)
        pruning.prune_low_magnitude(model, prunable=["pruned"])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="slow off TensorFlow")
def test_keras_hub_backbone_inside_an_image_classifier(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(16, 16, 3),
    )
    task = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=3)
    pruned = prune(task)
    pruned_backbone = pruned.get_layer(backbone.name)
    assert sum(isinstance(layer, pruning.PruneLowMagnitude) for layer in pruned_backbone.layers)
    x, y = images((16, 16, 3), n=8, classes=3)
    before = train(pruned, x, y, SCE, steps=1)
    check_masks(before, {"Conv2D", "Dense"})
    check_strip_and_save(pruned, x, tmp_path)
