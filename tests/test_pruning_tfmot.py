"""kd_keras.pruning against real TFMOT (TensorFlow backend only: TFMOT
needs tf_keras): same schedules, and the same masks at every step on the
same model, weights and data; plus the tf_keras bridge."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras import pruning

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFMOT runs on tf_keras / TensorFlow only"
)

SCHEDULE = {
    "initial_sparsity": 0.05,
    "final_sparsity": 0.85,
    "begin_step": 1,
    "end_step": 9,
    "power": 3,
    "frequency": 2,
}
STEPS, BATCH = 12, 4


@pytest.fixture(scope="module")
def tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _build(lib):
    inputs = lib.Input((6, 6, 4))
    h = lib.layers.Conv2D(4, 3, name="conv")(inputs)
    h = lib.layers.Flatten(name="flatten")(h)
    h = lib.layers.Dense(8, activation="relu", name="hidden")(h)
    return lib.Model(inputs, lib.layers.Dense(3, name="logits")(h))


def _data():
    rng = np.random.default_rng(7)
    return (
        rng.normal(size=(STEPS * BATCH, 6, 6, 4)).astype("float32"),
        rng.integers(0, 3, STEPS * BATCH),
    )


def _record(base, get_masks):
    class Record(base):
        def __init__(self):
            super().__init__()
            self.history = []

        def on_train_batch_end(self, batch, logs=None):
            self.history.append(get_masks(self.model))

    return Record()


def _tfmot_masks(model):
    return {
        layer.layer.name: (int(layer.pruning_step.numpy()), layer.pruning_vars[0][1].numpy())
        for layer in model.layers
        if hasattr(layer, "pruning_vars") and layer.pruning_vars
    }


def _kd_masks(model):
    return {
        layer.layer.name: (int(layer.pruning_step.numpy()), layer.masks[0].numpy())
        for layer in model.layers
        if isinstance(layer, pruning.PruneLowMagnitude)
    }


def test_schedules_equal_tfmot_at_every_step(tfmot):
    import tensorflow as tf

    pairs = [
        (tfmot.sparsity.keras.PolynomialDecay(**SCHEDULE), pruning.PolynomialDecay(**SCHEDULE)),
        (
            tfmot.sparsity.keras.PolynomialDecay(0.2, 0.9, 10, 1000, power=2, frequency=7),
            pruning.PolynomialDecay(0.2, 0.9, 10, 1000, power=2, frequency=7),
        ),
        (
            tfmot.sparsity.keras.ConstantSparsity(0.7, 5, 500, 3),
            pruning.ConstantSparsity(0.7, 5, 500, 3),
        ),
    ]
    for theirs, ours in pairs:
        for step in range(0, 1100, 3):
            t_should, t_sparsity = theirs(tf.constant(step, tf.int64))
            o_should, o_sparsity = ours(tf.constant(step, tf.int32))
            assert bool(t_should) == bool(o_should), step
            assert float(t_sparsity) == float(o_sparsity), step  # bit-identical float32


@pytest.mark.parametrize(
    "options",
    [{}, {"block_size": (2, 2)}, {"sparsity_m_by_n": (2, 4)}],
    ids=["unstructured", "block2x2", "2:4"],
)
def test_same_masks_as_tfmot_at_every_step(tfmot, options):
    import tf_keras

    ref = _build(tf_keras)
    ours = _build(keras)
    ours.set_weights(ref.get_weights())
    dense_only = "block_size" in options  # TFMOT's block sparsity is for rank-2 weights
    t_schedule = tfmot.sparsity.keras.PolynomialDecay(**SCHEDULE)

    def tfmot_wrap(layer):
        if isinstance(layer, tf_keras.layers.Conv2D | tf_keras.layers.Dense) and not (
            dense_only and isinstance(layer, tf_keras.layers.Conv2D)
        ):
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=t_schedule, **options
            )
        return layer

    # TFMOT wraps the reference's own layers, so both start from the same weights.
    t_model = tf_keras.models.clone_model(ref, clone_function=tfmot_wrap)

    k_model = pruning.prune_low_magnitude(
        ours,
        pruning_schedule=pruning.PolynomialDecay(**SCHEDULE),
        skip=["conv"] if dense_only else None,
        **options,
    )
    x, y = _data()
    t_model.compile(tf_keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    k_model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    t_rec = _record(tf_keras.callbacks.Callback, _tfmot_masks)
    k_rec = _record(keras.callbacks.Callback, _kd_masks)
    t_model.fit(
        x,
        y,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), t_rec],
    )
    k_model.fit(
        x,
        y,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep(), k_rec],
    )

    assert len(t_rec.history) == len(k_rec.history) == STEPS
    sparsities = []
    for step, (theirs, mine) in enumerate(zip(t_rec.history, k_rec.history), start=1):
        assert (
            sorted(theirs)
            == sorted(mine)
            == (["hidden", "logits"] if dense_only else ["conv", "hidden", "logits"])
        )
        for name in theirs:
            assert theirs[name][0] == mine[name][0] == step
            np.testing.assert_array_equal(mine[name][1], theirs[name][1], err_msg=f"{name} {step}")
        sparsities.append(1 - mine["hidden"][1].mean())
    if not options:  # 0.85 reached at end_step 9: round(512 * 0.15) = 77 weights kept
        assert sparsities[-1] == pytest.approx(1 - 77 / 512)
        assert sparsities[0] < sparsities[2] < sparsities[4] < sparsities[8]


def test_bridge_prunes_tf_keras_model_with_tfmot(tfmot):
    import tf_keras

    model = _build(tf_keras)
    with pytest.warns(pruning.TFMOTBridgeWarning, match="using tensorflow_model_optimization"):
        pruned = pruning.prune_low_magnitude(
            model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1), skip=["logits"]
        )
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,
    )

    wrapped = [layer.layer.name for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    assert wrapped == ["conv", "hidden"]
    pruned.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data()
    pruned.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()]
    )  # delegates to TFMOT's callback
    report = pruning.sparsity_report(pruned)
    rows = {row.name: row for row in report.layers}
    assert rows["hidden"].pruned and rows["hidden"].zeros == 64 * 8 // 2
    assert rows["conv"].zeros == 3 * 3 * 4 * 4 // 2 and not rows["logits"].pruned
    with pytest.warns(pruning.TFMOTBridgeWarning):
        stripped = pruning.strip_pruning(pruned)
    assert [type(layer).__name__ for layer in stripped.layers] == [
        "InputLayer",
        "Conv2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert (stripped.get_layer("hidden").kernel.numpy() == 0).sum() == 64 * 8 // 2


def test_bridge_rejects_unprunable_layer_in_explicit_list(tfmot):
    import tf_keras

    model = tf_keras.Sequential(
        [
            tf_keras.Input((4,)),
            tf_keras.layers.Dense(4, name="d"),
            tf_keras.layers.LayerNormalization(name="norm"),
        ]
    )
    with pytest.warns(pruning.TFMOTBridgeWarning), pytest.raises(ValueError, match="'norm'"):
        pruning.prune_low_magnitude(model, prunable=["norm"])
