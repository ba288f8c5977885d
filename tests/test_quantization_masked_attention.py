"""A masked `MultiHeadAttention` under QAT: it stays whole and runs in
float (a float island), and it attends with the same mask as in the float
model: the explicit `attention_mask`, the causal mask, and a padding mask
from `Embedding(mask_zero=True)` carried through the QAT model's wrappers.
Each is checked against the float layer called with the mask written out
in NumPy, and against the unmasked call (which must differ)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from kd_keras.quantization import float_islands, quantize_model

LENGTH, PADDED_FROM = 10, 4


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def transformer(kind):
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    inputs = [ids]
    h = keras.layers.Embedding(40, 16, mask_zero=kind == "padding", name="emb")(ids)
    attention = keras.layers.MultiHeadAttention(2, 8, name="mha")
    if kind == "causal":
        a = attention(h, h, use_causal_mask=True)
    elif kind == "explicit":
        mask = keras.Input((LENGTH, LENGTH), dtype="bool", name="mask")
        inputs.append(mask)
        a = attention(h, h, attention_mask=mask)
    else:
        a = attention(h, h)
    h = keras.layers.Add(name="res")([h, a])
    h = keras.layers.LayerNormalization(name="norm")(h)
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def data(kind):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, (16, LENGTH)).astype("int32")
    ids[:, PADDED_FROM:] = 0
    if kind == "padding":
        keep = ids != 0
        mask = keep[:, :, None] & keep[:, None, :]
    elif kind == "causal":
        mask = np.broadcast_to(np.tril(np.ones((LENGTH, LENGTH), bool)), (16, LENGTH, LENGTH))
    else:
        mask = rng.random((16, LENGTH, LENGTH)) > 0.4
        mask[:, :, 0] = True  # every query attends to something
    x = {"ids": ids, "mask": mask} if kind == "explicit" else ids
    return x, mask


@pytest.mark.parametrize("kind", ["padding", "causal", "explicit"])
def test_masked_attention_is_a_float_island_with_its_mask(kind):
    keras.utils.set_random_seed(0)
    model = transformer(kind)
    x, mask = data(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Flatten drops the padding mask, as in float
        qat = quantize_model(model)
        for _ in range(3):
            qat(x, training=True)
        attention = qat.get_layer("mha")
        assert type(attention) is keras.layers.MultiHeadAttention  # whole, not split
        probe = keras.Model(qat.inputs, [qat.get_layer("emb").output, attention.output])
        embedded, got = (to_np(t) for t in probe(x, training=False))
    want = to_np(attention(embedded, embedded, attention_mask=mask))
    unmasked = to_np(attention(embedded, embedded))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(unmasked - want).max() > 1e-2  # the mask matters here
    # The island's output re-enters the int8 part through a range of its own.
    assert "mha_quantize_output" in {layer.name for layer in qat.layers}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite needs TensorFlow")
@pytest.mark.parametrize("kind", ["padding", "causal"])
def test_masked_attention_converts_with_its_float_ops_listed(kind):
    from kd_keras.quantization import convert, tflite_ops, tflite_predict

    keras.utils.set_random_seed(1)
    model = transformer(kind)
    x, _ = data(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qat = quantize_model(model)
        for _ in range(3):
            qat(x, training=True)
        model_bytes = convert(qat, mode="qat")
    islands = float_islands(model_bytes, qat)
    assert {island["layer"] for island in islands} == {"mha", "norm"}
    assert {"SOFTMAX", "SELECT_V2"} <= {i["op"] for i in islands if i["layer"] == "mha"}
    # Outside the islands the projections of the head and the embedding are int8.
    dense = [op for op in tflite_ops(model_bytes) if op["op"] == "FULLY_CONNECTED"]
    assert any(op["inputs"][:2] == ["int8", "int8"] for op in dense)
    expected = to_np(qat(x, training=False))
    step = float(np.ptp(expected)) / 255
    assert np.abs(tflite_predict(model_bytes, x) - expected).max() <= 4 * step
