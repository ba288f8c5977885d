"""Pruning reaches the weight layers nested in composite layers: the attention
and feed-forward kernels of keras-hub's TransformerEncoder (kept in private
attributes), its embedding tables, and any custom layer holding sub-layers.

References: masks against a NumPy transcription of TFMOT's magnitude rule on
the recorded kernels, outputs against the unmodified model (all-ones masks)
and against the stripped copy, and a `.keras` round trip with safe_mode.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from kd_keras import pruning
from kd_keras.pruning.wrapper import reduced_axes

keras_hub = pytest.importorskip("keras_hub")

SEQ, VOCAB, CLASSES = 8, 40, 3
ENCODER_KERNELS = {
    "self_attention_layer_query_dense_kernel",
    "self_attention_layer_key_dense_kernel",
    "self_attention_layer_value_dense_kernel",
    "self_attention_layer_output_dense_kernel",
    "feedforward_intermediate_dense_kernel",
    "feedforward_output_dense_kernel",
}


def np_(x):
    return keras.ops.convert_to_numpy(x)


def np_magnitude_mask(w, sparsity):
    """TFMOT: keep the k = max(round(n (1 - s)), 1) largest |w| (ties at the k-th kept)."""
    a = np.abs(w)
    k = int(max(np.round(np.float32(a.size) * (np.float32(1) - np.float32(sparsity))), 1))
    threshold = np.sort(a.ravel())[::-1][k - 1]
    return (a >= threshold).astype(w.dtype)


def bert(seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=SEQ,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=CLASSES, preprocessor=None)


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "token_ids": rng.integers(0, VOCAB, (n, SEQ)).astype("int32"),
        "segment_ids": np.zeros((n, SEQ), "int32"),
        "padding_mask": np.ones((n, SEQ), "int32"),
    }
    return x, rng.integers(0, CLASSES, n)


def wrappers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, pruning.PruneLowMagnitude)
    ]


def quiet_prune(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pruning.PrunedCoverageWarning)
        return pruning.prune_low_magnitude(model, **kwargs)


def test_encoder_kernels_and_embeddings_get_masks_matching_numpy():
    model = bert()
    x, y = data()
    before = np_(model(x, training=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pruning.PrunedCoverageWarning)  # nothing left dense
        pruned = pruning.prune_low_magnitude(
            model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
        )
    # All-ones masks: the pruned model computes what the model did.
    np.testing.assert_allclose(np_(pruned(x, training=False)), before, rtol=0, atol=1e-6)
    by_layer = {w.layer.name: w for w in wrappers(pruned)}
    assert {"token_embedding", "position_embedding", "segment_embedding"} <= set(by_layer)
    for name in ("transformer_layer_0", "transformer_layer_1"):
        labels = {m.name.removesuffix("_mask") for m in by_layer[name].masks}
        assert labels == ENCODER_KERNELS
    kernels = {
        (w.name, i): np_(v.value) for w in by_layer.values() for i, v in enumerate(w.pruned_weights)
    }
    # One step at learning rate 0: the masks come from the recorded kernels.
    pruned.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    for w in by_layer.values():
        for i, mask in enumerate(w.masks):
            ref = np_magnitude_mask(kernels[(w.name, i)], 0.5)
            np.testing.assert_array_equal(np_(mask.value), ref, err_msg=f"{w.name} {mask.name}")
    report = pruning.sparsity_report(pruned)
    rows = {row.name: row for row in report.layers}
    assert rows["transformer_layer_0"].pruned and rows["token_embedding"].pruned


def test_trained_encoder_strips_to_plain_layers_with_exact_zeros(tmp_path):
    model = bert()
    x, y = data()
    pruned = quiet_prune(model, pruning_schedule=pruning.ConstantSparsity(0.75, 0, frequency=2))
    pruned.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    expected = np_(pruned(x, training=False))

    # `.keras` round trip of the pruned model (safe_mode on): masks and outputs kept.
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(np_(loaded(x, training=False)), expected, atol=1e-5)

    stripped = pruning.strip_pruning(pruned)
    encoders = [
        layer
        for layer in stripped._flatten_layers(include_self=False)
        if layer.name.startswith("transformer_layer")
    ]
    assert [type(e).__name__ for e in encoders] == ["TransformerEncoder"] * 2
    assert not wrappers(stripped)
    np.testing.assert_allclose(np_(stripped(x, training=False)), expected, atol=1e-5)
    for w in wrappers(pruned):
        for kernel, mask in zip(w.pruned_weights, w.masks):
            mask = np_(mask.value)
            # 3/4 of each kernel pruned (TFMOT's k: round half to even).
            k = int(max(np.round(np.float32(mask.size) * np.float32(0.25)), 1))
            assert mask.sum() == k, kernel.path
    # The stripped kernels are exactly zero where the masks are.
    stripped_vars = {v.path: np_(v.value) for v in stripped.weights}
    for w in wrappers(pruned):
        for kernel, mask in zip(w.pruned_weights, w.masks):
            value = stripped_vars[kernel.path]
            assert np.all(value[np_(mask.value) == 0] == 0), kernel.path


@keras.saving.register_keras_serializable(package="kd_keras_tests")
class Scale(keras.layers.Layer):
    """A weighted layer no pruning rule knows."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="kd_keras_tests")
class Block(keras.layers.Layer):
    """A custom composite: sub-layers in private attributes, as keras-hub does."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self._up = keras.layers.Dense(units * 2, activation="relu", name="up")
        self._down = keras.layers.Dense(units, name="down")
        self._scale = Scale(name="scale")

    def build(self, input_shape):
        self._up.build(input_shape)
        self._down.build((*input_shape[:-1], self.units * 2))
        self._scale.build((*input_shape[:-1], self.units))

    def call(self, x):
        return self._scale(self._down(self._up(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_composite_layer_is_pruned_and_unknown_weights_are_named():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(Block(name="block")(inputs)))
    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, 32)
    before = np_(model(x))
    with pytest.warns(pruning.PrunedCoverageWarning, match="'scale' \\(Scale\\)"):
        pruned = pruning.prune_low_magnitude(
            model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
        )
    np.testing.assert_allclose(np_(pruned(x)), before, rtol=0, atol=1e-6)
    block = pruned.get_layer("prune_low_magnitude_block")
    assert [m.name for m in block.masks] == ["up_kernel_mask", "down_kernel_mask"]
    kernels = [np_(v.value) for v in block.pruned_weights]
    pruned.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    for kernel, mask in zip(kernels, block.masks):
        np.testing.assert_array_equal(np_(mask.value), np_magnitude_mask(kernel, 0.5))
    stripped = pruning.strip_pruning(pruned)
    assert type(stripped.get_layer("block")) is Block
    np.testing.assert_allclose(np_(stripped(x)), np_(pruned(x)), atol=1e-6)
    assert np.mean(np_(stripped.get_layer("block")._up.kernel) == 0) == 0.5


def np_m_by_n_mask(w, m, n, axis):
    """Zero the m smallest |w| of every n consecutive weights along `axis`."""
    a = np.moveaxis(np.abs(w), axis, -1)
    groups = a.reshape(-1, n)
    mask = np.ones_like(groups)
    order = np.argsort(groups, axis=1, kind="stable")[:, :m]
    np.put_along_axis(mask, order, 0, axis=1)
    return np.moveaxis(mask.reshape(a.shape), -1, axis).astype(w.dtype)


def test_m_by_n_runs_along_each_encoder_kernels_own_input_axis():
    model = bert()
    x, y = data()
    pruned = quiet_prune(model, sparsity_m_by_n=(2, 4))
    encoder = pruned.get_layer("bert_backbone").get_layer("prune_low_magnitude_transformer_layer_0")
    # The query projection sums over the hidden axis (0), the attention
    # output over the head axis (1), the feed-forward Dense kernels over 0.
    axes = dict(zip([m.name for m in encoder.masks], reduced_axes(encoder.layer)))
    assert axes["self_attention_layer_query_dense_kernel_mask"] == 0
    assert axes["self_attention_layer_output_dense_kernel_mask"] == 1
    kernels = [np_(v.value) for v in encoder.pruned_weights]
    pruned.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    for kernel, mask in zip(kernels, encoder.masks):
        ref = np_m_by_n_mask(kernel, 2, 4, axes[mask.name])
        np.testing.assert_array_equal(np_(mask.value), ref, err_msg=mask.name)


def test_subclassed_model_prunes_a_composite_attribute_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = Block(name="block")  # its Dense layers are private
            self.head = keras.layers.Dense(2, name="head")

        def call(self, x, training=None):
            return self.head(self.block(x, training=training), training=training)

    x = np.random.default_rng(0).normal(size=(32, 5)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, 32)
    net = Net()
    before = np_(net(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pruning.PrunedCoverageWarning)  # Scale's weight
        same = pruning.prune_low_magnitude(
            net, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
        )
    assert same is net
    assert isinstance(net.block, pruning.PruneLowMagnitude)
    assert isinstance(net.head, pruning.PruneLowMagnitude)
    np.testing.assert_allclose(np_(net(x)), before, rtol=0, atol=1e-6)
    kernels = [np_(v.value) for v in net.block.pruned_weights]
    net.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    net.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    for kernel, mask in zip(kernels, net.block.masks):
        np.testing.assert_array_equal(np_(mask.value), np_magnitude_mask(kernel, 0.5))
    out = np_(net(x))
    pruning.strip_pruning(net)
    assert type(net.block) is Block
    np.testing.assert_allclose(np_(net(x)), out, atol=1e-6)
    assert np.mean(np_(net.block._down.kernel) == 0) == 0.5


def test_layer_in_a_private_attribute_of_a_subclassed_model_is_named():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self._hidden = keras.layers.Dense(4, name="hidden")  # out of in-place reach
            self.head = keras.layers.Dense(2, name="head")

        def call(self, x, training=None):
            return self.head(self._hidden(x), training=training)

    net = Net()
    net(np.zeros((1, 5), "float32"))
    with pytest.warns(pruning.PrunedCoverageWarning, match="'hidden' \\(Dense\\): prunable, but"):
        pruning.prune_low_magnitude(net)
    assert isinstance(net.head, pruning.PruneLowMagnitude)
    assert not isinstance(net._hidden, pruning.PruneLowMagnitude)
