"""QuantizeConfig: a user layer quantized as its config says, checked against
TensorFlow's per-channel FakeQuant and a NumPy fake-quant, trained with fit,
saved and loaded under quantize_scope, converted to TFLite."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.quantization import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    QuantizeConfig,
    QuantizeWrapper,
    convert,
    quantize_annotate_layer,
    quantize_model,
    quantize_scope,
    tflite_ops,
    tflite_predict,
)
from tests.test_quantization import np_fake_quant, np_fake_quant_per_channel


# Deliberately not registered: loading must need quantize_scope.
class ScaledDense(keras.layers.Layer):
    """`activation(x @ kernel) * scale` with a learned per-unit scale."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units), initializer="glorot_uniform"
        )
        self.scale = self.add_weight(
            name="scale",
            shape=(self.units,),
            initializer=keras.initializers.RandomUniform(0.5, 1.5),
        )

    def call(self, inputs):
        return self.activation(keras.ops.matmul(inputs, self.kernel)) * self.scale

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
        }


class ScaledDenseConfig(QuantizeConfig):
    """Kernel per output channel (`axis=-1`) or per tensor (`axis=None`),
    8 bits; the activation's output (the matmul TFLite runs) and the layer's
    output with moving ranges."""

    def __init__(self, axis=-1):
        self.axis = axis

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, PerChannelSymmetricQuantizer(num_bits=8, axis=self.axis))]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, MovingAverageQuantizer())]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return [MovingAverageQuantizer()]

    def get_config(self):
        return {"axis": self.axis}


class MissingWeightConfig(ScaledDenseConfig):
    def get_weights_and_quantizers(self, layer):
        return [(layer.bias, PerChannelSymmetricQuantizer())]


class ForeignWeightConfig(ScaledDenseConfig):
    def __init__(self, other):
        super().__init__()
        self.other = other

    def get_weights_and_quantizers(self, layer):
        return [(self.other.kernel, PerChannelSymmetricQuantizer())]


def var(layer, name):
    """The value of the quantizer variable `name` of a wrapper."""
    (v,) = [w for w in layer.weights if w.path.endswith("/" + name)]
    return float(keras.ops.convert_to_numpy(v))


def make_model(config=None, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    x = keras.layers.Dense(16, activation="relu", name="dense_in")(inputs)
    config = ScaledDenseConfig() if config is None else config
    x = quantize_annotate_layer(ScaledDense(8, activation="relu", name="scaled"), config)(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs)


def data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, rng.integers(0, 4, size=n)


def trained_qat(steps=3, config=None):
    x, y = data()
    qat = quantize_model(make_model(config))
    qat.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = qat.fit(x, y, batch_size=16, epochs=steps, verbose=0)
    return qat, history


def test_custom_layer_is_wrapped_with_its_config_and_the_rest_quantized():
    qat = quantize_model(make_model())
    scaled = qat.get_layer("scaled")
    assert isinstance(scaled, QuantizeWrapper)
    assert isinstance(scaled.quantize_config, ScaledDenseConfig)
    assert isinstance(scaled.layer, ScaledDense)
    # A config does not restrict quantization to annotated layers.
    assert isinstance(qat.get_layer("dense_in"), QuantizeWrapper)
    assert isinstance(qat.get_layer("head"), QuantizeWrapper)
    # The layer starts from the float model's weights and keeps its own
    # variables (not a call's quantized tensors) between calls.
    qat(data()[0][:2])
    assert isinstance(scaled.layer.kernel, keras.Variable)
    float_layer = make_model().get_layer("scaled")
    for ours, theirs in zip(scaled.layer.weights, float_layer.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
        )


def test_config_survives_inlining_a_nested_model():
    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [
            keras.Input((12,)),
            quantize_annotate_layer(ScaledDense(8, name="scaled"), ScaledDenseConfig()),
        ],
        name="block",
    )
    inputs = keras.Input((12,))
    outputs = keras.layers.Dense(4, name="head")(block(inputs))
    qat = quantize_model(keras.Model(inputs, outputs))
    scaled = qat.get_layer("scaled")
    assert isinstance(scaled, QuantizeWrapper)
    assert isinstance(scaled.quantize_config, ScaledDenseConfig)
    assert isinstance(qat.get_layer("head"), QuantizeWrapper)


def test_quantized_kernel_and_output_match_fake_quant_references():
    tf = pytest.importorskip("tensorflow")
    qat, _ = trained_qat(steps=1)  # real activation and output ranges
    scaled = qat.get_layer("scaled")
    kernel = keras.ops.convert_to_numpy(scaled.layer.kernel)
    max_abs = np.abs(kernel).max(axis=0)
    (weight, quantizer, variables), = scaled._config_weights
    ours = keras.ops.convert_to_numpy(quantizer(weight, weights=variables))
    theirs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        kernel, -max_abs, max_abs, num_bits=8, narrow_range=True
    ).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours, np_fake_quant_per_channel(kernel, max_abs), atol=1e-6)
    assert len(np.unique(ours[:, 0])) <= 255

    # The layer's inference output: relu(quantized input @ fake-quant kernel)
    # on the activation's stored range, times scale, on the output's range.
    x = data()[0][:8]
    hidden = keras.ops.convert_to_numpy(
        keras.Model(qat.inputs[0], scaled.input)(x)
    )
    scale = keras.ops.convert_to_numpy(scaled.layer.scale)
    act = np_fake_quant(
        np.maximum(hidden @ theirs, 0),
        var(scaled, "activation_0_min"),
        var(scaled, "activation_0_max"),
    )
    expected = np_fake_quant(act * scale, var(scaled, "output_min"), var(scaled, "output_max"))
    got = keras.ops.convert_to_numpy(keras.Model(qat.inputs[0], scaled.output)(x))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_qat_fit_trains_the_custom_layer_and_its_output_range():
    qat, history = trained_qat(steps=3)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    scaled = qat.get_layer("scaled")
    before = make_model().get_layer("scaled")
    assert not np.allclose(
        keras.ops.convert_to_numpy(scaled.layer.kernel), keras.ops.convert_to_numpy(before.kernel)
    )
    assert not np.allclose(
        keras.ops.convert_to_numpy(scaled.layer.scale), keras.ops.convert_to_numpy(before.scale)
    )
    # The output range left TFMOT's [-6, 6] start for the data's.
    for name in ("output", "activation_0"):
        assert var(scaled, f"{name}_initialized") == 1.0
        assert var(scaled, f"{name}_max") != 6.0


def test_keras_round_trip_under_quantize_scope(tmp_path):
    qat, _ = trained_qat(steps=2)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    x = data(seed=3)[0]
    with quantize_scope(ScaledDense, ScaledDenseConfig):
        restored = keras.models.load_model(path)
    config = restored.get_layer("scaled").quantize_config
    assert isinstance(config, ScaledDenseConfig) and config.axis == -1
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(qat(x))
    )
    with quantize_scope({"ScaledDense": ScaledDense}):
        with pytest.raises(TypeError, match=r"(?s)ScaledDenseConfig.*quantize_scope"):
            keras.models.load_model(path)
    with pytest.raises(TypeError, match=r"(?s)'scaled'.*ScaledDense.*quantize_scope"):
        keras.models.load_model(path)


def test_config_naming_a_weight_the_layer_lacks_is_refused_with_the_layer_named():
    with pytest.raises(ValueError, match=r"'scaled'.*ScaledDense"):
        quantize_model(make_model(MissingWeightConfig()))
    other = keras.layers.Dense(3)
    other.build((None, 2))
    foreign = r"'scaled'.*'dense.*/kernel'.*not a \(variable of the layer"
    with pytest.raises(ValueError, match=foreign):
        quantize_model(make_model(ForeignWeightConfig(other)))
    with pytest.raises(TypeError, match="QuantizeConfig"):
        quantize_annotate_layer(ScaledDense(2), quantize_config="8bit")


def test_qat_model_with_custom_layer_converts():
    pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite conversion traces the model with TensorFlow")
    # TFLite's FULLY_CONNECTED / BATCH_MATMUL take a per-tensor matmul kernel
    # (the converter transposes it, which a per-channel axis cannot follow),
    # so the converting config quantizes the kernel per tensor, as TFMOT's
    # Dense config does; a per-channel one is refused with the remedy.
    per_channel, _ = trained_qat(steps=1)
    with pytest.raises(RuntimeError, match="skip_layers"):
        convert(per_channel, mode="qat")
    qat, _ = trained_qat(steps=4, config=ScaledDenseConfig(axis=None))
    tflite = convert(qat, mode="qat")
    ops = tflite_ops(tflite)
    names = [op["op"] for op in ops]
    x = data(seed=5)[0][:16]
    got = tflite_predict(tflite, x)
    want = keras.ops.convert_to_numpy(qat.predict(x, verbose=0))
    head = qat.get_layer("head")
    step = (var(head, "output_max") - var(head, "output_min")) / 255
    # A few int8 steps of the output range: rounding differs along the way.
    np.testing.assert_allclose(got, want, atol=3 * step)
    matmuls = [op for op in ops if op["op"] in ("FULLY_CONNECTED", "BATCH_MATMUL")]
    assert len(matmuls) == 3, names
    # Fully int8: the custom layer's matmul and scale run as int8 kernels.
    float_ops = [
        op["op"] for op in ops
        if "float32" in op["inputs"] + op["outputs"] and op["op"] not in ("QUANTIZE", "DEQUANTIZE")
    ]
    assert float_ops == [], names
    assert all(op["inputs"][:2] == ["int8", "int8"] for op in matmuls), ops
    (mul,) = [op for op in ops if op["op"] == "MUL"]
    assert mul["inputs"] == ["int8", "int8"] and mul["outputs"] == ["int8"]
