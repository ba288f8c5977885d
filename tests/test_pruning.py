"""kd_keras.pruning: schedules and masks against NumPy transcriptions of
TFMOT's formulas, training behaviour on every backend, save/load, strip,
errors, reports, and pruning inside Distiller.fit.

TFMOT parity and the tf_keras bridge live in tests/test_pruning_tfmot.py.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import pruning

# ---------------------------------------------------------------- references


def np_schedule(kind, step, *, begin, end, frequency, power=3, initial=0.0, final=0.5):
    """TFMOT's pruning_schedule.py, transcribed in NumPy float32."""
    f32 = np.float32
    in_range = step >= begin and (end < 0 or step <= end)
    should = bool(in_range and (step - begin) % frequency == 0)
    if kind == "constant":
        return should, f32(final)
    p = np.minimum(f32(1), np.maximum(f32(0), f32(step - begin) / f32(end - begin)))
    sparsity = f32(f32(initial - final) * np.power(f32(1) - p, f32(power))) + f32(final)
    return should, f32(sparsity)


def np_magnitude_mask(w, sparsity):
    """Keep the k = max(round(n (1 - s)), 1) largest |w| (all ties at the k-th kept)."""
    a = np.abs(w)
    k = int(max(np.round(np.float32(a.size) * (np.float32(1) - np.float32(sparsity))), 1))
    threshold = np.sort(a.ravel())[::-1][k - 1]
    return (a >= threshold).astype(w.dtype)


def np_block_mask(w, sparsity, block, pooling):
    rows, cols = int(np.prod(w.shape[:-1])), w.shape[-1]
    a = np.abs(w.reshape(rows, cols))
    bh, bw = block
    gh, gw = -(-rows // bh), -(-cols // bw)
    scores = np.zeros((gh, gw), np.float32)
    for i in range(gh):
        for j in range(gw):
            blk = a[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw]
            scores[i, j] = blk.max() if pooling == "MAX" else blk.mean()
    keep = np_magnitude_mask(scores, sparsity)
    mask = np.kron(keep, np.ones((bh, bw), np.float32))[:rows, :cols]
    return mask.reshape(w.shape)


def np_m_by_n_mask(w, m, n, axis):
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(-1, n)
    keep = np.zeros_like(groups)
    for g, row in enumerate(groups):
        order = sorted(range(n), key=lambda i: (-row[i], i))  # top_k: lower index wins ties
        keep[g, order[: n - m]] = 1
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def np_prune_run(weights, schedule_kwargs, steps):
    """Masks of one weight after `steps` training steps at learning rate 0:
    at each pruning step, the mask is recomputed from weight * mask."""
    mask = np.ones_like(weights)
    history = []
    for step in range(1, steps + 1):
        should, s = np_schedule("poly", step, **schedule_kwargs)
        if should:
            mask = np_magnitude_mask(weights * mask, s)
        history.append(mask.copy())
    return history


# ---------------------------------------------------------------- helpers


def rand(shape, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype("float32")
    if ties:  # few distinct magnitudes: many ties at the threshold
        w = np.round(w * 2) / 2
    return w


def mlp(seed=0, features=12, hidden=16, classes=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(h), name="mlp")


def data(n=64, features=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    return x, rng.integers(0, classes, n).astype("int32")


def fit(model, x, y, epochs=1, batch_size=16, lr=1e-2, callbacks=()):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=False,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep(), *callbacks],
    )
    return model


def wrappers(model):
    return [
        layer for layer in model._flatten_layers() if isinstance(layer, pruning.PruneLowMagnitude)
    ]


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


POLY = {"begin": 2, "end": 11, "frequency": 3, "power": 3, "initial": 0.1, "final": 0.8}


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        (
            "poly",
            {"begin": 0, "end": 100, "frequency": 1, "power": 3, "initial": 0.0, "final": 0.9},
        ),
        (
            "poly",
            {"begin": 7, "end": 93, "frequency": 5, "power": 2, "initial": 0.3, "final": 0.75},
        ),
        ("poly", {"begin": 3, "end": 40, "frequency": 4, "power": 1, "initial": 0.8, "final": 0.2}),
        ("constant", {"begin": 5, "end": 60, "frequency": 7, "final": 0.6}),
        ("constant", {"begin": 0, "end": -1, "frequency": 10, "final": 0.5}),
    ],
)
def test_schedule_matches_numpy_transcription_of_tfmot(kind, kwargs):
    if kind == "poly":
        schedule = pruning.PolynomialDecay(
            kwargs["initial"],
            kwargs["final"],
            kwargs["begin"],
            kwargs["end"],
            power=kwargs["power"],
            frequency=kwargs["frequency"],
        )
    else:
        schedule = pruning.ConstantSparsity(
            kwargs["final"], kwargs["begin"], kwargs["end"], kwargs["frequency"]
        )
    for step in range(0, 130):
        should, sparsity = schedule(ops.convert_to_tensor(step, "int32"))
        ref_should, ref_sparsity = np_schedule(kind, step, **kwargs)
        assert bool(np_(should)) == ref_should, step
        np.testing.assert_allclose(np_(sparsity), ref_sparsity, atol=1e-6, err_msg=str(step))


@pytest.mark.parametrize("total, ramp", [(1000, 0.5), (37, 0.3), (5, 1.0), (1, 0.5)])
def test_ramp_schedule_reaches_target_on_a_mask_update_then_holds(total, ramp):
    schedule = pruning.ramp_schedule(0.8, total, ramp=ramp)
    end, frequency = schedule.end_step, schedule.frequency
    assert end % frequency == 0 and 1 <= end <= max(1, int(total * ramp))
    assert 1 <= end // frequency <= 11  # about ten mask updates
    kwargs = {"begin": 0, "end": end, "frequency": frequency, "power": 3}
    for step in range(total + 5):
        should, sparsity = schedule(ops.convert_to_tensor(step, "int32"))
        ref_should, ref_sparsity = np_schedule("poly", step, initial=0.0, final=0.8, **kwargs)
        assert bool(np_(should)) == ref_should
        np.testing.assert_allclose(np_(sparsity), ref_sparsity, atol=1e-6)
    assert bool(np_(schedule(ops.convert_to_tensor(end, "int32"))[0]))  # last update at 0.8
    with pytest.raises(ValueError, match="ramp must be in"):
        pruning.ramp_schedule(0.8, 100, ramp=0.0)


def test_recovery_learning_rate_holds_then_follows_cosine():
    lr = pruning.recovery_learning_rate(1e-3, hold_steps=40, total_steps=100)
    steps = np.arange(0, 120)
    got = np.array([float(np_(lr(int(t)))) for t in steps])
    decay = np.clip(steps - 40, 0, 60) / 60
    expected = np.where(steps <= 40, 1e-3, 1e-3 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * decay))))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_schedules_serialize():
    for schedule in (
        pruning.PolynomialDecay(0.1, 0.8, 5, 50, power=2, frequency=3),
        pruning.ConstantSparsity(0.5, 10, 90, 5),
    ):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule)
        )
        assert type(restored) is type(schedule)
        assert restored.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: pruning.ConstantSparsity(1.0, 0), r"outside \[0, 1\)"),
        (lambda: pruning.ConstantSparsity(-0.1, 0), r"outside \[0, 1\)"),
        (lambda: pruning.PolynomialDecay(0.0, 1.2, 0, 10), r"final_sparsity=1.2 is outside"),
        (
            lambda: pruning.PolynomialDecay(0.0, 0.5, 100, 10),
            "end_step=10 is before begin_step=100",
        ),
        (lambda: pruning.ConstantSparsity(0.5, 100, 10), "end_step=10 is before begin_step=100"),
        (lambda: pruning.PolynomialDecay(0.0, 0.5, 10, 10), "end_step > begin_step"),
        (lambda: pruning.PolynomialDecay(0.0, 0.5, 0, -1), "end_step=-1"),
        (lambda: pruning.ConstantSparsity(0.5, 0, frequency=0), "frequency must be > 0"),
    ],
)
def test_schedule_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.95, 0.999])
def test_magnitude_mask_matches_numpy(sparsity, ties):
    w = rand((6, 7, 5), seed=int(sparsity * 100), ties=ties)
    mask, threshold = pruning.magnitude_mask(ops.convert_to_tensor(w), sparsity)
    ref = np_magnitude_mask(w, sparsity)
    np.testing.assert_array_equal(np_(mask), ref)
    assert np_(threshold) == pytest.approx(np.abs(w)[ref == 1].min())
    if not ties:
        kept = max(round(w.size * (1 - sparsity)), 1)
        assert int(np_(mask).sum()) == kept


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
@pytest.mark.parametrize(
    "shape,block", [((8, 6), (2, 3)), ((9, 7), (2, 2)), ((3, 3, 4, 6), (4, 2))]
)
def test_block_mask_matches_numpy(shape, block, pooling):
    w = rand(shape, seed=3)
    mask, _ = pruning.block_mask(ops.convert_to_tensor(w), 0.6, block, pooling)
    np.testing.assert_array_equal(np_(mask), np_block_mask(w, 0.6, block, pooling))


@pytest.mark.parametrize(
    "shape,m_by_n,axis",
    [
        ((16, 6), (2, 4), 0),
        ((3, 3, 8, 5), (2, 4), -2),
        ((12, 4), (1, 3), 0),
        ((4, 4, 2, 8), (2, 4), -1),
    ],
)
def test_m_by_n_mask_matches_numpy(shape, m_by_n, axis):
    w = rand(shape, seed=5, ties=True)  # ties resolved towards the lower index, as tf.math.top_k
    mask = np_(pruning.m_by_n_mask(ops.convert_to_tensor(w), m_by_n, axis))
    np.testing.assert_array_equal(mask, np_m_by_n_mask(w, *m_by_n, axis))
    groups = np.moveaxis(mask, axis, -1).reshape(-1, m_by_n[1])
    assert (groups.sum(-1) == m_by_n[1] - m_by_n[0]).all()


# ---------------------------------------------------------------- training


def test_masks_and_step_match_numpy_run_at_learning_rate_0():
    """Same result on every backend: the suite runs under each KERAS_BACKEND."""
    model = mlp()
    pruned = pruning.prune_low_magnitude(
        model,
        pruning_schedule=pruning.PolynomialDecay(
            POLY["initial"],
            POLY["final"],
            POLY["begin"],
            POLY["end"],
            POLY["power"],
            POLY["frequency"],
        ),
    )
    kernels = {w.name: np_(w.layer.kernel.value) for w in wrappers(pruned)}
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(
                {
                    w.name: (int(np_(w.pruning_step.value)), np_(w.masks[0].value))
                    for w in wrappers(self.model)
                }
            )

    x, y = data(n=13 * 4)
    pruned.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(
        x,
        y,
        batch_size=4,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep(), Record()],
    )
    assert len(seen) == 13
    for name, w in kernels.items():
        ref = np_prune_run(w, POLY, 13)
        for step, record in enumerate(seen, start=1):
            got_step, got_mask = record[name]
            assert got_step == step
            np.testing.assert_array_equal(got_mask, ref[step - 1], err_msg=f"{name} step {step}")
    # Final sparsity 0.8 reached at end_step=11: keep round(192 * 0.2) = 38 of the
    # hidden kernel and round(64 * 0.2) = 13 of the logits kernel.
    final = {w.layer.name: int(np_(w.masks[0].value).sum()) for w in wrappers(pruned)}
    assert final == {"hidden": 38, "logits": 13}


def _kernel_rows(model):
    return {
        w.layer.name: (np_(w.layer.kernel.value), np_(w.masks[0].value)) for w in wrappers(model)
    }


def test_pruned_weights_exactly_zero_after_adam_and_strip():
    model = mlp()
    pruned = pruning.prune_low_magnitude(
        model, pruning_schedule=pruning.PolynomialDecay(0.0, 0.75, 0, 6, frequency=2)
    )
    x, y = data()
    fit(pruned, x, y, epochs=3, lr=0.05)
    for name, (kernel, mask) in _kernel_rows(pruned).items():
        assert (kernel[mask == 0] == 0).all(), name
        assert np.mean(mask == 0) == pytest.approx(1 - round(mask.size * 0.25) / mask.size)
    stripped = pruning.strip_pruning(pruned)
    assert not any(isinstance(layer, pruning.PruneLowMagnitude) for layer in stripped.layers)
    assert [type(layer) for layer in stripped.layers] == [type(layer) for layer in model.layers]
    for name, (kernel, mask) in _kernel_rows(pruned).items():
        stripped_kernel = np_(stripped.get_layer(name).kernel.value)
        np.testing.assert_array_equal(stripped_kernel, kernel * mask)
    np.testing.assert_allclose(
        np_(stripped.predict(x, verbose=0)), np_(pruned.predict(x, verbose=0)), atol=1e-6
    )
    # The stripped copy owns its weights: training the pruned model leaves it alone.
    before = np_(stripped.get_layer("hidden").kernel.value)
    fit(pruned, x, y, epochs=1)
    np.testing.assert_array_equal(np_(stripped.get_layer("hidden").kernel.value), before)


def test_pruning_under_mixed_precision_masks_the_float32_kernel():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        pruned = pruning.prune_low_magnitude(
            mlp(), pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
        )
        x, y = data()
        fit(pruned, x, y, epochs=2, lr=0.05)
        for name, (kernel, mask) in _kernel_rows(pruned).items():
            assert kernel.dtype == np.float32 and (kernel[mask == 0] == 0).all(), name
            assert np.mean(mask == 0) == 0.5, name  # even sizes: exactly half
        stripped = pruning.strip_pruning(pruned)
        assert np.mean(np_(stripped.get_layer("hidden").kernel.value) == 0) >= 0.5
        # Magnitudes that bfloat16 rounds to one value are still ranked in float32.
        inputs = keras.Input((2,))
        dense = keras.layers.Dense(2, use_bias=False, name="d")
        model = keras.Model(inputs, dense(inputs))
        kernel = np.array([[1.0, -1.001], [1.002, -1.003]], "float32")
        dense.kernel.assign(kernel)
        pruned = pruning.prune_low_magnitude(
            model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
        )
        fit(pruned, *data(4, features=2, classes=2), batch_size=4, lr=0.0)
        ((_, mask),) = _kernel_rows(pruned).values()
        np.testing.assert_array_equal(mask, np.abs(kernel) >= 1.002)
        # ... while the wrapped layer still computes in the policy's bfloat16.
        out = wrappers(pruned)[0](np.ones((1, 2), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    finally:
        keras.config.set_dtype_policy(previous)


def test_forward_pass_uses_masked_weights_between_epochs():
    layer = pruning.prune_low_magnitude(
        keras.layers.Dense(4), pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
    )
    x = rand((3, 6))
    layer(x)
    layer.masks[0].assign(np.tile(np.array([[1.0, 0.0, 1.0, 0.0]], "float32"), (6, 1)))
    kernel, mask = np_(layer.layer.kernel.value), np_(layer.masks[0].value)
    expected = x @ (kernel * mask) + np_(layer.layer.bias.value)
    np.testing.assert_allclose(np_(layer(x)), expected, atol=1e-5)


def test_sequential_and_subclassed_models():
    x, y = data()
    seq = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, name="a"),
            keras.layers.ReLU(),
            keras.layers.Dense(4, name="b"),
        ]
    )
    schedule = pruning.ConstantSparsity(0.5, 0, frequency=1)
    pruned = fit(pruning.prune_low_magnitude(seq, pruning_schedule=schedule), x, y)
    assert isinstance(pruned, keras.Sequential)
    assert [type(layer).__name__ for layer in pruned.layers] == [
        "PruneLowMagnitude",
        "ReLU",
        "PruneLowMagnitude",
    ]
    assert [int((np_(w.layer.kernel.value) == 0).sum()) for w in wrappers(pruned)] == [48, 16]

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = [
                keras.layers.Dense(8, activation="relu", name="body0"),
                keras.layers.Dense(8, activation="relu", name="body1"),
            ]
            self.head = keras.layers.Dense(4, name="head")

        def call(self, inputs, training=None):
            for layer in self.body:
                inputs = layer(inputs, training=training)
            return self.head(inputs)

    net = Net()
    net(x[:2])
    before = np_(net(x))
    same = pruning.prune_low_magnitude(net, pruning_schedule=schedule, skip=["head"])
    assert same is net
    assert isinstance(net.body[0], pruning.PruneLowMagnitude)
    assert not isinstance(net.head, pruning.PruneLowMagnitude)
    np.testing.assert_allclose(np_(net(x)), before, atol=1e-6)  # masks start at ones
    fit(net, x, y)
    report = pruning.sparsity_report(net)
    assert {row.name for row in report.layers if row.pruned} == {"body0", "body1"}
    assert [int((np_(w.layer.kernel.value) == 0).sum()) for w in net.body] == [48, 32]
    out = np_(net(x))
    pruning.strip_pruning(net)
    assert not wrappers(net) and isinstance(net.body[0], keras.layers.Dense)
    assert np.mean(np_(net.body[1].kernel.value) == 0) == pytest.approx(0.5)
    np.testing.assert_allclose(np_(net(x)), out, atol=1e-5)


@keras.saving.register_keras_serializable(package="kd_keras_tests")
class PrunedInside(keras.Model):
    """A subclassed model that wraps its own layers: serializable as it is."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        schedule = pruning.PolynomialDecay(0.0, 0.5, 0, 8, frequency=1)
        self.hidden = pruning.prune_low_magnitude(
            keras.layers.Dense(16, activation="relu"), pruning_schedule=schedule
        )
        self.head = keras.layers.Dense(4)

    def call(self, inputs, training=None):
        return self.head(self.hidden(inputs, training=training))


def test_subclassed_model_built_during_fit_saves_and_resumes(tmp_path):
    x, y = data()
    net = fit(PrunedInside(), x, y)  # unbuilt until the first traced step
    assert int(np_(net.hidden.pruning_step.value)) == 4
    path = os.path.join(tmp_path, "sub.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert int(np_(loaded.hidden.pruning_step.value)) == 4
    np.testing.assert_array_equal(np_(loaded.hidden.masks[0].value), np_(net.hidden.masks[0].value))
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    mask = np_(loaded.hidden.masks[0].value)
    assert int(np_(loaded.hidden.pruning_step.value)) == 8
    assert (mask == 0).sum() == 12 * 16 // 2


def test_prunable_and_skip_lists():
    model = mlp()
    pruned = pruning.prune_low_magnitude(model, prunable=["logits"])
    assert [w.layer.name for w in wrappers(pruned)] == ["logits"]
    with pytest.raises(ValueError, match="Nothing to prune in model 'mlp'"):
        pruning.prune_low_magnitude(model, skip=[keras.layers.Dense])
    pruned = pruning.prune_low_magnitude(model, prunable=[keras.layers.Dense], skip=["hidden"])
    assert [w.layer.name for w in wrappers(pruned)] == ["logits"]
    assert pruned.get_layer("bn") is model.get_layer("bn")  # passes through untouched


def _all_types_model():
    inputs = keras.Input((6, 6, 4))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv2d")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = keras.layers.SeparableConv2D(8, 3, padding="same", name="separable")(h)
    h = keras.layers.Conv2DTranspose(4, 3, padding="same", name="transpose")(h)
    h = keras.layers.Reshape((36, 4))(h)
    h = keras.layers.Conv1D(8, 3, padding="same", name="conv1d")(h)
    h = keras.layers.Reshape((6, 6, 8, 1))(h)
    h = keras.layers.Conv3D(4, 3, padding="same", name="conv3d")(h)
    h = keras.layers.Reshape((36, 32))(h)
    h = keras.layers.EinsumDense("btd,de->bte", output_shape=(36, 8), name="einsum")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    image_out = keras.layers.Dense(4, name="dense")(h)
    tokens = keras.Input((5,), dtype="int32")
    t = keras.layers.Embedding(12, 8, name="embedding")(tokens)
    t = keras.layers.GlobalAveragePooling1D()(t)
    return keras.Model(
        [inputs, tokens], keras.layers.Add()([image_out, keras.layers.Dense(4, name="dense2")(t)])
    )


WEIGHT = {"separable": "pointwise_kernel", "embedding": "embeddings"}


def test_every_prunable_layer_type_trains_to_target():
    model = _all_types_model()
    pruned = pruning.prune_low_magnitude(
        model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
    )
    names = sorted(w.layer.name for w in wrappers(pruned))
    assert names == sorted(
        [
            "conv2d",
            "depthwise",
            "separable",
            "transpose",
            "conv1d",
            "conv3d",
            "einsum",
            "dense",
            "embedding",
            "dense2",
        ]
    )
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(8, 6, 6, 4)).astype("float32"), rng.integers(0, 12, (8, 5))]
    y = rng.integers(0, 4, 8)
    fit(pruned, x, y, batch_size=8)
    for w in wrappers(pruned):
        weight = np_(getattr(w.layer, WEIGHT.get(w.layer.name, "kernel")).value)
        zeros = int((weight == 0).sum())
        assert zeros == weight.size - max(round(weight.size * 0.5), 1), w.layer.name


def test_m_by_n_on_conv_and_dense_keeps_pattern_through_training():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, name="dense"),
        ]
    )
    pruned = pruning.prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    initial = {w.layer.name: np_(w.layer.kernel.value) for w in wrappers(pruned)}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6, 6, 4)).astype("float32"), rng.integers(0, 4, 32)
    fit(pruned, x, y, epochs=2, batch_size=8)
    for w in wrappers(pruned):
        axis = 0 if w.layer.name == "dense" else -2
        np.testing.assert_array_equal(
            np_(w.masks[0].value), np_m_by_n_mask(initial[w.layer.name], 2, 4, axis)
        )
        kernel = np_(w.layer.kernel.value)
        groups = np.moveaxis(kernel, axis, -1).reshape(-1, 4)
        assert ((groups != 0).sum(-1) <= 2).all()


def test_save_and_load_mid_pruning_resumes(tmp_path):
    schedule = pruning.PolynomialDecay(0.0, 0.8, 0, 12, frequency=1)
    x, y = data()
    pruned = fit(pruning.prune_low_magnitude(mlp(), pruning_schedule=schedule), x, y, epochs=1)
    path = os.path.join(tmp_path, "mid.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(wrappers(pruned), wrappers(loaded)):
        assert int(np_(b.pruning_step.value)) == int(np_(a.pruning_step.value)) == 4
        np.testing.assert_array_equal(np_(b.masks[0].value), np_(a.masks[0].value))
        assert b.pruning_schedule.get_config() == schedule.get_config()
    np.testing.assert_allclose(
        np_(loaded.predict(x, verbose=0)), np_(pruned.predict(x, verbose=0)), atol=1e-6
    )
    loaded.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep()],
    )
    for w in wrappers(loaded):
        assert int(np_(w.pruning_step.value)) == 12  # resumed from 4, not restarted at 0
        mask = np_(w.masks[0].value)
        assert (mask == 0).sum() == mask.size - round(mask.size * 0.2)


def test_model_never_called_in_training_mode_raises():
    class NoTrainingArg(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, inputs):  # Keras calls it without training=True
            return self.dense(inputs)

    net = NoTrainingArg()
    net(np.zeros((1, 12), "float32"))
    pruning.prune_low_magnitude(net)
    assert isinstance(net.dense, pruning.PruneLowMagnitude)
    with pytest.raises(RuntimeError, match="never called with training=True"):
        fit(net, *data())


def test_fit_without_update_pruning_step_raises():
    pruned = pruning.prune_low_magnitude(mlp())
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    x, y = data()
    with pytest.raises(RuntimeError, match="UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_bad_inputs_have_clear_errors():
    model = mlp()
    with pytest.raises(ValueError, match=r"'bn' \(BatchNormalization\) cannot be pruned"):
        pruning.prune_low_magnitude(model, prunable=["bn"])
    with pytest.raises(ValueError, match="Layer type BatchNormalization cannot be pruned"):
        pruning.prune_low_magnitude(model, prunable=[keras.layers.BatchNormalization])
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        pruning.prune_low_magnitude(model, skip=["nope"])
    with pytest.raises(ValueError, match="cannot be pruned"):
        pruning.prune_low_magnitude(keras.layers.LayerNormalization())
    # (A Dense over 6 inputs with 2:4 is zero-padded to groups of 4 as in
    # TFMOT: tests/test_pruning_conformance.py.)
    with pytest.raises(ValueError, match="m \\(zeros per group\\) must be smaller"):
        pruning.prune_low_magnitude(keras.layers.Dense(3), sparsity_m_by_n=(4, 4))
    with pytest.raises(ValueError, match="sparsity_m_by_n is not defined"):
        pruning.prune_low_magnitude(
            keras.Sequential([keras.Input((4, 4, 4)), keras.layers.DepthwiseConv2D(3)]),
            sparsity_m_by_n=(2, 4),
        )


def test_sparsity_report_counts_match_numpy():
    model = mlp()
    pruned = fit(
        pruning.prune_low_magnitude(
            model, pruning_schedule=pruning.ConstantSparsity(0.6, 0, frequency=1)
        ),
        *data(),
    )
    report = pruning.sparsity_report(pruned)
    rows = {row.name: row for row in report.layers}
    assert set(rows) == {"hidden", "bn", "logits"}
    for name in ("hidden", "logits"):
        layer = pruned.get_layer(f"prune_low_magnitude_{name}").layer
        arrays = [np_(v.value) for v in layer.weights]
        assert rows[name].params == sum(a.size for a in arrays)
        assert rows[name].zeros == sum(int((a == 0).sum()) for a in arrays)
        assert rows[name].pruned
    assert rows["bn"].params == 4 * 16 and not rows["bn"].pruned
    assert report.total_params == sum(r.params for r in report.layers) == model.count_params()
    text = str(report)
    assert "hidden *" in text and "total" in text and f"{report.sparsity:.2%}" in text


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorBoard files via tf.summary"
)
def test_pruning_summaries_write_mask_sparsity(tmp_path):
    import tensorflow as tf

    pruned = pruning.prune_low_magnitude(
        mlp(), pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
    )
    fit(pruned, *data(), callbacks=[pruning.PruningSummaries(str(tmp_path))])
    values = {}
    for root, _, files in os.walk(tmp_path):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for v in event.summary.value:
                    values[v.tag] = float(tf.make_ndarray(v.tensor))
    tag = "prune_low_magnitude_hidden/kernel_mask/sparsity"
    assert values[tag] == pytest.approx(0.5)
    assert values["prune_low_magnitude_hidden/target_sparsity"] == pytest.approx(0.5)


def test_pruned_student_inside_distiller_fit():
    import kd_keras

    x, y = data(n=48)
    teacher = mlp(seed=1, hidden=32)
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    student = pruning.prune_low_magnitude(
        mlp(seed=2), pruning_schedule=pruning.PolynomialDecay(0.0, 0.5, 0, 6, frequency=1)
    )
    distiller = kd_keras.Distiller(
        student=student,
        teacher=teacher,
        losses=[kd_keras.losses.SoftTargetKD(temperature=4.0)],
        alpha=0.1,
    )
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    for w in wrappers(distiller.student):
        assert int(np_(w.pruning_step.value)) == 6
        kernel, mask = np_(w.layer.kernel.value), np_(w.masks[0].value)
        assert (mask == 0).sum() == mask.size - round(mask.size * 0.5)
        assert (kernel[mask == 0] == 0).all()
    final = pruning.strip_pruning(distiller.student)
    hidden = pruning.sparsity_report(final).layers[0]
    assert (hidden.name, hidden.params, hidden.zeros) == ("hidden", 12 * 16 + 16, 96)
