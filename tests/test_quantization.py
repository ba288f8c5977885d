"""kd_keras.quantization maths on every backend: fake-quant against a NumPy
reference of TensorFlow's FakeQuant formula, BN folding, QAT training steps,
sparsity preservation, serialization, clustering against NumPy k-means."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.models import cnn_student
from kd_keras.quantization import (
    MovingAverageQuantizer,
    PerChannelSymmetricQuantizer,
    QuantizeLayer,
    QuantizeWrapper,
    fake_quant,
    fold_batch_norms,
    quantize_annotate_layer,
    quantize_model,
)
from kd_keras.quantization.clustering import (
    CentroidInitialization,
    ClusterWeights,
    cluster_weights,
    init_centroids,
    strip_clustering,
)
from tests import tiny

ATOL = 1e-5


# ---------------------------------------------------------------- reference


def np_nudge(min_val, max_val, num_bits=8, narrow_range=False):
    """TensorFlow's Nudge() (fake_quant_ops_functor.h), in float32."""
    min_val, max_val = np.float32(min_val), np.float32(max_val)
    quant_min = np.float32(1 if narrow_range else 0)
    quant_max = np.float32(2**num_bits - 1)
    scale = (max_val - min_val) / (quant_max - quant_min)
    zero_point_from_min = quant_min - min_val / scale
    if zero_point_from_min < quant_min:
        zero_point = quant_min
    elif zero_point_from_min > quant_max:
        zero_point = quant_max
    else:
        zero_point = np.floor(zero_point_from_min + np.float32(0.5))  # std::round, >= 0
    return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale, scale


def np_fake_quant(x, min_val, max_val, num_bits=8, narrow_range=False):
    """Quantize to integers on the nudged grid and dequantize."""
    nudged_min, nudged_max, scale = np_nudge(min_val, max_val, num_bits, narrow_range)
    clamped = np.clip(np.asarray(x, "float32"), nudged_min, nudged_max)
    return np.floor((clamped - nudged_min) / scale + np.float32(0.5)) * scale + nudged_min


def np_fake_quant_per_channel(x, max_abs):
    """Symmetric narrow-range int8 per channel of the last axis."""
    out = np.empty_like(x)
    for c, m in enumerate(max_abs):
        m = m if m > 0 else 1.0
        out[..., c] = np_fake_quant(x[..., c], -m, m, narrow_range=True)
    return out


def to_np(x):
    return keras.ops.convert_to_numpy(x)


# ---------------------------------------------------------------- quantizers


def test_fake_quant_per_tensor_asymmetric_matches_numpy_with_nudging():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 2.5, size=(4, 50)).astype("float32")
    # A range whose zero point is not an integer: TF nudges it so 0 is exact.
    lo, hi = -0.7311, 1.9137
    got = to_np(fake_quant(x, lo, hi))
    want = np_fake_quant(x, lo, hi)
    np.testing.assert_allclose(got, want, atol=ATOL)
    nudged_min, nudged_max, scale = np_nudge(lo, hi)
    assert nudged_min != np.float32(lo)  # the nudge really moved the range
    assert to_np(fake_quant(np.zeros(3, "float32"), lo, hi)).tolist() == [0.0, 0.0, 0.0]
    assert len(np.unique(got)) <= 256
    # Values outside the range clamp to the nudged ends.
    np.testing.assert_allclose(to_np(fake_quant(np.array([-9.0, 9.0], "float32"), lo, hi)),
                               [nudged_min, nudged_max], atol=ATOL)


def test_per_channel_symmetric_weights_match_numpy_and_keep_zeros():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    kernel[..., 2] = 0.0  # a pruned filter
    kernel[rng.random(kernel.shape) < 0.4] = 0.0  # scattered pruned weights
    got = to_np(PerChannelSymmetricQuantizer(axis=-1)(kernel))
    want = np_fake_quant_per_channel(kernel, np.abs(kernel).max(axis=(0, 1, 2)))
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert np.all(got[kernel == 0] == 0.0)
    # 255 levels at most per channel, symmetric grid: q in [-127, 127].
    for c in range(5):
        m = np.abs(kernel[..., c]).max() or 1.0
        steps = got[..., c] / (m / 127.0)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_per_tensor_weight_quantizer_for_dense():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(6, 3)).astype("float32")
    got = to_np(PerChannelSymmetricQuantizer(axis=None)(kernel))
    m = np.abs(kernel).max()
    np.testing.assert_allclose(got, np_fake_quant(kernel, -m, m, narrow_range=True), atol=ATOL)


def test_moving_average_quantizer_updates_in_training_only():
    layer = QuantizeLayer(MovingAverageQuantizer(ema_decay=0.9))
    layer.build((None, 5))
    rng = np.random.default_rng(3)
    a = rng.uniform(0.2, 3.0, size=(8, 5)).astype("float32")  # all positive: min clamps to 0
    b = rng.uniform(-2.0, 1.0, size=(8, 5)).astype("float32")
    out_a = to_np(layer(a, training=True))
    lo, hi = 0.0, float(a.max())  # first batch sets the range
    np.testing.assert_allclose(out_a, np_fake_quant(a, lo, hi), atol=ATOL)
    out_b = to_np(layer(b, training=True))
    lo, hi = 0.9 * lo + 0.1 * min(b.min(), 0.0), 0.9 * hi + 0.1 * max(b.max(), 0.0)
    np.testing.assert_allclose(out_b, np_fake_quant(b, lo, hi), atol=ATOL)
    # Inference reads the stored range and does not move it.
    out_c = to_np(layer(b, training=False))
    np.testing.assert_allclose(out_c, np_fake_quant(b, lo, hi), atol=ATOL)
    weights = {w.name: float(to_np(w)) for w in layer.weights}
    np.testing.assert_allclose([weights["range_min"], weights["range_max"]], [lo, hi], atol=ATOL)
    assert weights["range_initialized"] == 1.0


def test_quantizers_serialize():
    for q in (PerChannelSymmetricQuantizer(axis=-2), MovingAverageQuantizer(ema_decay=0.99)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(q))
        assert again == q
    with pytest.raises(ValueError, match="num_bits"):
        PerChannelSymmetricQuantizer(num_bits=16)


# ---------------------------------------------------------------- BN folding / QAT


def _student_with_bn_stats(seed=0):
    model = cnn_student(input_shape=(8, 8, 1), num_classes=tiny.NUM_CLASSES)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(size=n).astype("float32"))
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n).astype("float32"))
    return model


def test_fold_batch_norms_equals_unfolded_model_in_float():
    model = _student_with_bn_stats()
    x, _ = tiny.images(16)
    folded = fold_batch_norms(model)
    np.testing.assert_allclose(
        to_np(folded(x, training=False)), to_np(model(x, training=False)), atol=ATOL
    )
    assert type(folded.get_layer("bn1")) is keras.layers.Identity
    assert folded.get_layer("conv1").use_bias
    # NumPy reference of the folded kernel for one layer.
    bn, conv = model.get_layer("bn1"), model.get_layer("conv1")
    scale = to_np(bn.gamma) / np.sqrt(to_np(bn.moving_variance) + bn.epsilon)
    np.testing.assert_allclose(
        to_np(folded.get_layer("conv1").kernel), to_np(conv.kernel) * scale, atol=ATOL
    )
    np.testing.assert_allclose(
        to_np(folded.get_layer("conv1").bias),
        to_np(bn.beta) - to_np(bn.moving_mean) * scale,
        atol=ATOL,
    )


def test_quantize_model_graph_fuses_bn_and_relu_and_keeps_names():
    qat = quantize_model(_student_with_bn_stats())
    conv1 = qat.get_layer("conv1")
    assert isinstance(conv1, QuantizeWrapper)
    assert keras.activations.serialize(conv1.layer.activation) == "relu"
    assert type(qat.get_layer("bn1")) is keras.layers.Identity
    assert type(qat.get_layer("block1")) is keras.layers.Identity
    assert type(qat.get_layer("pool1")) is keras.layers.MaxPooling2D  # range passes through
    # The model input enters through one quantizer, named after the input.
    assert isinstance(qat.get_layer(f"{qat.layers[0].name}_quantize"), QuantizeLayer)
    assert qat.get_layer("logits").weight_quantizer.axis is None  # Dense: per-tensor
    assert qat.get_layer("conv2").weight_quantizer.axis == -1


def test_qat_forward_equals_numpy_reference_of_quantized_dense():
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="d")(inputs))
    qat = quantize_model(model)
    x, _ = tiny.data(32)
    qat(x, training=True)  # sets the input and output ranges from this batch
    w = to_np(model.get_layer("d").kernel)
    b = to_np(model.get_layer("d").bias)
    x_q = np_fake_quant(x, min(x.min(), 0), max(x.max(), 0))
    m = np.abs(w).max()
    pre = np.maximum(x_q @ np_fake_quant(w, -m, m, narrow_range=True) + b, 0.0)
    want = np_fake_quant(pre, 0.0, pre.max())
    np.testing.assert_allclose(to_np(qat(x, training=False)), want, atol=1e-4)


def test_qat_trains_a_few_steps_and_updates_ranges():
    x, y = tiny.images(64)
    qat = quantize_model(_student_with_bn_stats())
    qat.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = to_np(qat.get_layer("conv1").layer.kernel).copy()
    history = qat.fit(x, y, epochs=3, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(to_np(qat.get_layer("conv1").layer.kernel), before)
    wrapper = qat.get_layer("conv2")
    # (a folded BN's moving statistics are non-trainable weights too)
    ranges = {
        w.name: float(to_np(w))
        for w in wrapper.non_trainable_weights
        if w.name.startswith("output")
    }
    assert ranges["output_initialized"] == 1.0
    assert ranges["output_min"] == 0.0 < ranges["output_max"]  # fused ReLU


def test_qat_under_mixed_precision_quantizes_in_float32():
    x, y = tiny.images(32)
    keras.utils.set_random_seed(0)
    reference = quantize_model(_student_with_bn_stats())
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        with pytest.warns(UserWarning, match="computes in float32"):
            qat = quantize_model(_student_with_bn_stats())
        assert {layer.compute_dtype for layer in qat._flatten_layers()} == {"float32"}
        # The same function as the QAT copy of the float32 model, to float32 precision.
        reference(x, training=True)
        qat(x, training=True)  # the same activation ranges from the same batch
        np.testing.assert_allclose(to_np(qat(x)), to_np(reference(x)), atol=ATOL)
        qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = qat.fit(x, y, epochs=2, batch_size=8, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        logits = qat.get_layer("logits")
        ranges = {w.name: w for w in logits.non_trainable_weights}
        assert {w.dtype for w in ranges.values()} == {"float32"}
        assert float(to_np(ranges["output_min"])) < float(to_np(ranges["output_max"]))
        # The int8 grid is computed from the float32 kernel, not a bfloat16 copy.
        kernel = to_np(logits.layer.kernel)
        m = np.abs(kernel).max()
        want = np_fake_quant(kernel, -m, m, narrow_range=True)
        np.testing.assert_allclose(to_np(logits.quantized_kernel()), want, atol=1e-6)
    finally:
        keras.config.set_dtype_policy(previous)


def test_pruning_zeros_stay_zero_through_qat():
    model = _student_with_bn_stats()
    rng = np.random.default_rng(4)
    for name in ("conv1", "conv2", "logits"):
        kernel = to_np(model.get_layer(name).kernel)
        kernel[rng.random(kernel.shape) < 0.7] = 0.0
        model.get_layer(name).kernel.assign(kernel)
    names = ("conv1", "conv2", "logits")
    zeros = {name: to_np(model.get_layer(name).kernel) == 0 for name in names}
    qat = quantize_model(model)
    x, y = tiny.images(32)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for name, mask in zeros.items():
        effective = to_np(qat.get_layer(name).quantized_kernel())
        assert qat.get_layer(name).preserve_sparsity
        assert np.all(effective[mask] == 0.0), name
        assert np.mean(effective == 0) >= np.mean(mask)


def test_qat_model_saves_and_loads(tmp_path):
    x, y = tiny.images(16)
    qat = quantize_model(_student_with_bn_stats())
    qat(x, training=True)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(qat(x)), atol=ATOL)
    assert isinstance(loaded.get_layer("conv1"), QuantizeWrapper)


def test_unsupported_layer_is_named_with_the_skip_list_fix():
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, name="d1")(inputs)
    h = keras.layers.UnitNormalization(name="norm")(h)
    out = keras.layers.Dense(3, name="d2")(h)
    model = keras.Model(inputs, out)
    fix = r"(?s)'norm' \(UnitNormalization\).*skip_layers=\['norm'\]"
    with pytest.raises(ValueError, match=fix):
        quantize_model(model)
    qat = quantize_model(model, skip_layers=["norm"])
    assert type(qat.get_layer("norm")) is keras.layers.UnitNormalization
    # The float layer's output re-enters the quantized part through a quantizer.
    assert isinstance(qat.get_layer("norm_quantize"), QuantizeLayer)
    with pytest.raises(ValueError, match="not in"):
        quantize_model(model, skip_layers=["nope"])


def test_batch_norm_that_cannot_be_folded_becomes_an_int8_mul_and_add():
    # tiny.conv: Conv2D(activation="relu") -> BatchNormalization: nothing to
    # fold into, so the BN runs as x * scale + offset with its moving statistics.
    model = tiny.conv()
    rng = np.random.default_rng(5)
    bn = model.get_layer("bn")
    n = bn.gamma.shape[0]
    bn.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                    rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)])
    qat = quantize_model(model)
    names = [layer.name for layer in qat.layers]
    assert "bn" not in names and {"bn_scale_quantize", "bn_offset_quantize"} <= set(names)
    from kd_keras.quantization.rules import affine_constants

    scale, offset = affine_constants(bn)
    x = rng.normal(size=(4, 5, 5, n)).astype("float32")
    np.testing.assert_allclose(to_np(bn(x, training=False)), x * scale + offset, atol=1e-5)
    # skip_layers keeps it in float, as before.
    qat = quantize_model(tiny.conv(), skip_layers=["bn"])
    assert type(qat.get_layer("bn")) is keras.layers.BatchNormalization
    # A channels_first BN is neither folded nor an int8 MUL/ADD: refused by name.
    inputs = keras.Input((4, 6, 6))
    h = keras.layers.BatchNormalization(axis=1, name="bn_cf")(inputs)
    cf = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match="(?s)'bn_cf' .*other than the last.*skip_layers"):
        quantize_model(cf)


def test_quantize_annotate_layer_quantizes_only_annotated_layers():
    inputs = keras.Input((6,), name="x")
    h = quantize_annotate_layer(keras.layers.Dense(8, name="q"))(inputs)
    out = keras.layers.Dense(3, name="f")(h)
    qat = quantize_model(keras.Model(inputs, out))
    assert isinstance(qat.get_layer("q"), QuantizeWrapper)
    assert type(qat.get_layer("f")) is keras.layers.Dense


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="Functional"):
        quantize_model(net)


# ---------------------------------------------------------------- clustering


def np_lloyd_fixed_point(values, centroids):
    """Centroids after one Lloyd step (assign to nearest, take means)."""
    assign = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    return np.array([values[assign == c].mean() if np.any(assign == c) else centroids[c]
                     for c in range(len(centroids))])


def test_centroid_initialization_matches_numpy_references():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(9, 16)).astype("float32")
    np.testing.assert_allclose(
        init_centroids(w, 8, CentroidInitialization.LINEAR),
        np.linspace(w.min(), w.max(), 8),
        atol=ATOL,
    )
    centroids = init_centroids(w, 8, CentroidInitialization.KMEANS_PLUS_PLUS)
    assert len(np.unique(centroids)) == 8
    # k-means converged: each centroid is the mean of the weights nearest to it.
    np.testing.assert_allclose(
        centroids, np_lloyd_fixed_point(w.ravel().astype("float64"), centroids), atol=ATOL
    )
    with pytest.raises(ValueError, match="cluster_centroids_init"):
        init_centroids(w, 8, "density")


def _train_save_load_strip(clustered, x, y, tmp_path):
    """Fit `clustered` 2 epochs, round-trip it through `.keras` and strip it;
    the loaded and stripped models must compute what the trained one does."""
    clustered.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    clustered.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(to_np(loaded(x)), to_np(clustered(x)), atol=ATOL)
    final = strip_clustering(loaded)
    np.testing.assert_allclose(to_np(final(x)), to_np(clustered(x)), atol=ATOL)
    return loaded, final


def test_cluster_weights_trains_and_strip_leaves_k_values(tmp_path):
    x, y = tiny.images(32)
    model = _student_with_bn_stats()
    clustered = cluster_weights(model, number_of_clusters=4,
                                cluster_centroids_init=CentroidInitialization.LINEAR)
    wrapper = clustered.get_layer("conv2")
    assert isinstance(wrapper, ClusterWeights)
    kernel = to_np(wrapper.layer.kernel)
    centroids = to_np(wrapper.cluster_centroids)
    nearest = centroids[np.argmin(np.abs(kernel[..., None] - centroids), axis=-1)]
    np.testing.assert_allclose(to_np(wrapper.clustered_kernel()), nearest, atol=ATOL)

    _, final = _train_save_load_strip(clustered, x, y, tmp_path)
    assert not np.allclose(to_np(wrapper.cluster_centroids), centroids)  # centroids train
    for name in ("conv1", "conv2", "logits"):
        layer = final.get_layer(name)
        assert type(layer) in (keras.layers.Conv2D, keras.layers.Dense)
        assert len(np.unique(to_np(layer.kernel))) == 4, name


def test_clustering_under_mixed_precision_assigns_in_float32():
    x, y = tiny.images(32)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        clustered = cluster_weights(
            _student_with_bn_stats(), 4, cluster_centroids_init=CentroidInitialization.LINEAR
        )
        clustered.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        clustered.fit(x, y, epochs=2, batch_size=8, verbose=0)
        wrapper = clustered.get_layer("logits")
        assert wrapper.compute_dtype == "float32" and wrapper.layer.compute_dtype == "bfloat16"
        kernel, centroids = to_np(wrapper.layer.kernel), to_np(wrapper.cluster_centroids)
        nearest = centroids[np.argmin(np.abs(kernel[..., None] - centroids), axis=-1)]
        np.testing.assert_array_equal(to_np(wrapper.clustered_kernel(False)), nearest)
        # The clustered model and its stripped copy compute the same function.
        final = strip_clustering(clustered)
        assert final.get_layer("logits").compute_dtype == "bfloat16"
        np.testing.assert_array_equal(to_np(final.get_layer("logits").kernel), nearest)
        np.testing.assert_allclose(
            to_np(final.predict(x, verbose=0)), to_np(clustered.predict(x, verbose=0)), atol=0.1
        )
    finally:
        keras.config.set_dtype_policy(previous)


def _pruned_copy(model, sparsity=0.75, seed=0):
    """`model` with the smallest `sparsity` of every kernel set to zero."""
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = to_np(layer.kernel).copy()
            cut = np.quantile(np.abs(kernel), sparsity)
            kernel[np.abs(kernel) <= cut] = 0
            layer.kernel.assign(kernel)
    return model


def test_preserve_sparsity_keeps_zeros_through_training_and_strip(tmp_path):
    x, y = tiny.images(32)
    model = _pruned_copy(_student_with_bn_stats())
    kernel = to_np(model.get_layer("logits").kernel)
    zeros = kernel == 0

    # Without the mask a pruned kernel loses its zeros to the nearest centroid.
    plain = strip_clustering(cluster_weights(model, 4, "LINEAR"))
    assert not np.any(to_np(plain.get_layer("logits").kernel) == 0)

    clustered = cluster_weights(
        model, number_of_clusters=4, cluster_centroids_init="LINEAR", preserve_sparsity=True
    )
    wrapper = clustered.get_layer("logits")
    # As in TFMOT, 0 is one of the 4 values: 3 centroids cover the non-zero
    # weights only (LINEAR: min..max of those).
    nonzero = kernel[~zeros]
    np.testing.assert_allclose(
        to_np(wrapper.cluster_centroids), np.linspace(nonzero.min(), nonzero.max(), 3), atol=ATOL
    )
    np.testing.assert_array_equal(to_np(wrapper.sparsity_mask), (~zeros).astype("float32"))

    loaded, final = _train_save_load_strip(clustered, x, y, tmp_path)
    for name in ("conv1", "conv2", "logits"):
        original = to_np(model.get_layer(name).kernel)
        stripped = to_np(final.get_layer(name).kernel)
        np.testing.assert_array_equal(stripped == 0, original == 0, err_msg=name)
        centroids = to_np(loaded.get_layer(name).cluster_centroids)
        nonzero_values = np.unique(stripped[stripped != 0])
        assert len(nonzero_values) <= 3, name
        nearest = centroids[np.argmin(np.abs(nonzero_values[:, None] - centroids), axis=1)]
        np.testing.assert_allclose(nonzero_values, nearest, atol=ATOL)


def test_preserve_sparsity_needs_enough_distinct_nonzero_weights():
    model = _pruned_copy(_student_with_bn_stats(), sparsity=0.99)
    with pytest.raises(ValueError, match="conv1.*distinct values"):
        cluster_weights(model, 16, preserve_sparsity=True)
    with pytest.raises(ValueError, match=">= 3 with preserve_sparsity"):
        cluster_weights(model, 2, preserve_sparsity=True)
