"""Behaviours kd_keras shares with TFMOT's pruning, in the project's own words.

`benchmarks/tfmot_conformance.py` runs TFMOT's own test files against
kd_keras (not in CI); these tests pin the behaviours that run checks:
m-by-n on an input length that is not a multiple of n (zero-padded), which
layers `prune_low_magnitude` takes (exact built-in classes, `PrunableLayer`),
lists of layers, `strip_pruning` of an unbuilt model, and TFMOT's custom
training loop with `UpdatePruningStep` / `PruningSummaries`.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import pruning


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def np_m_by_n_mask_padded(w, m, n, axis):
    """TFMOT's m-by-n rule: zero-pad the axis to a multiple of n, drop the m
    smallest magnitudes of each group (the earlier entry wins a tie)."""
    moved = np.moveaxis(np.abs(w), axis, -1)
    length = moved.shape[-1]
    padded = np.concatenate(
        [moved, np.zeros((*moved.shape[:-1], -length % n), moved.dtype)], axis=-1
    )
    groups = padded.reshape(-1, n)
    keep = np.zeros_like(groups)
    for g, row in enumerate(groups):
        order = sorted(range(n), key=lambda i: (-row[i], i))
        keep[g, order[: n - m]] = 1
    keep = keep.reshape(padded.shape)[..., :length]
    return np.moveaxis(keep, -1, axis)


@pytest.mark.parametrize(
    "shape,axis,m_by_n",
    [((3, 2), 0, (2, 4)), ((6, 5), 0, (2, 4)), ((3, 3, 3, 8), -2, (2, 4)), ((7, 4), 0, (1, 3))],
)
def test_m_by_n_zero_pads_an_axis_not_a_multiple_of_n(shape, axis, m_by_n):
    rng = np.random.default_rng(3)
    w = rng.normal(size=shape).astype("float32")
    w.flat[0] = 0.0  # a real zero ties with the padding
    got = np_(pruning.m_by_n_mask(ops.convert_to_tensor(w), m_by_n, axis))
    np.testing.assert_array_equal(got, np_m_by_n_mask_padded(w, *m_by_n, axis))


def test_m_by_n_on_a_three_channel_first_conv_trains():
    """The case TFMOT takes and kd_keras refused: 2:4 on a 3-channel input,
    where each group of 3 real channels loses one weight (the pad is the other)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="first"), keras.layers.Flatten()]
    )
    pruned = pruning.prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    kernel = np_(pruned.layers[0].layer.kernel.value)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    pruned.fit(
        x,
        np.zeros((8, 288), "float32"),
        batch_size=4,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep()],
    )
    mask = np_(pruned.layers[0].masks[0].value)
    np.testing.assert_array_equal(mask, np_m_by_n_mask_padded(kernel, 2, 4, -2))
    assert np.all((mask == 0).sum(axis=2) == 1)  # one zero per 3 input channels


class SubDense(keras.layers.Dense):
    """A Dense subclass that does not say which weights to prune."""


class PrunableSubDense(keras.layers.Dense, pruning.PrunableLayer):
    def get_prunable_weights(self):
        return [self.kernel]


def test_subclass_of_a_prunable_type_needs_get_prunable_weights():
    with pytest.raises(ValueError, match=r"SubDense\) cannot be pruned.*PrunableLayer"):
        pruning.prune_low_magnitude(SubDense(4))
    wrapper = pruning.prune_low_magnitude(PrunableSubDense(4))
    model = keras.Sequential([keras.Input((6,)), wrapper])
    assert [id(w) for w in wrapper.pruned_weights] == [id(model.layers[0].layer.kernel)]
    # In a whole model the subclass is left dense, and the warning says why.
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), SubDense(4, name="sub")])
    with pytest.warns(pruning.PrunedCoverageWarning, match="'sub' .*subclass of Dense"):
        pruned = pruning.prune_low_magnitude(inner)
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude", "SubDense"]
    with pytest.raises(TypeError):
        pruning.PrunableLayer()  # abstract: get_prunable_weights is required


def test_a_list_of_layers_is_pruned_as_a_sequential_of_them():
    def layers():
        return [keras.layers.Dense(4), keras.layers.Dropout(0.5), keras.layers.Dense(4)]

    listed = pruning.prune_low_magnitude(layers())
    in_model = pruning.prune_low_magnitude(keras.Sequential([keras.Input((3,)), *layers()]))
    assert (
        [type(layer).__name__ for layer in listed]
        == [type(layer).__name__ for layer in in_model.layers]
        == ["PruneLowMagnitude", "Dropout", "PruneLowMagnitude"]
    )


def test_strip_pruning_of_an_unbuilt_model_gives_the_original_config():
    model = keras.Sequential([keras.layers.Dense(10), keras.layers.Dense(10)])
    stripped = pruning.strip_pruning(pruning.prune_low_magnitude(model))
    assert not stripped.built
    assert stripped.get_config() == model.get_config()
    a, b = keras.Input((10,), name="a"), keras.Input((10,), name="b")
    functional = keras.Model(
        [a, b], keras.layers.Add()([keras.layers.Dense(10)(a), keras.layers.Dense(10)(b)])
    )
    stripped = pruning.strip_pruning(pruning.prune_low_magnitude(functional))
    assert stripped.get_config() == functional.get_config()  # input names kept


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.GradientTape loop")
def test_tfmot_custom_training_loop(tmp_path):
    """TFMOT's documented loop: set_model, on_train_begin, then per epoch a
    GradientTape step and `on_epoch_end(batch=-1)` with no on_epoch_begin;
    the end-of-epoch re-masking happens and summaries are written."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(5)]
    )
    pruned = pruning.prune_low_magnitude(
        model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
    )
    optimizer = keras.optimizers.SGD(0.1)
    x = np.random.default_rng(0).random((20, 10)).astype("float32")
    y = np.random.default_rng(1).random((20, 5)).astype("float32")
    step_callback = pruning.UpdatePruningStep()
    log_callback = pruning.PruningSummaries(log_dir=str(tmp_path))
    step_callback.set_model(pruned)
    log_callback.set_model(pruned)
    pruned.optimizer = optimizer
    step_callback.on_train_begin()
    for _ in range(3):
        log_callback.on_epoch_begin(epoch=-1)
        step_callback.on_train_batch_begin(batch=-1)
        with tf.GradientTape() as tape:
            loss = keras.losses.mean_squared_error(y, pruned(x, training=True))
        grads = tape.gradient(loss, pruned.trainable_variables)
        optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        step_callback.on_epoch_end(batch=-1)
        # Re-masked: the stored kernels are exactly zero where the masks are.
        for layer in pruned.layers:
            kernel, mask = np_(layer.layer.kernel.value), np_(layer.masks[0].value)
            assert np.all(kernel[mask == 0] == 0) and (mask == 0).mean() == 0.5
    assert [int(np_(layer.pruning_step.value)) for layer in pruned.layers] == [3, 3]
    assert os.listdir(tmp_path)


def test_pruning_summaries_write_once_per_step(tmp_path):
    """Written at each epoch's start (as TFMOT) and end, a step never twice."""
    import tensorflow as tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    pruned = pruning.prune_low_magnitude(
        model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=1)
    )
    pruned.compile("sgd", "mse")
    x = np.ones((8, 4), "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned.fit(
            x,
            np.ones((8, 3), "float32"),
            batch_size=4,
            epochs=2,
            verbose=0,
            callbacks=[pruning.UpdatePruningStep(), pruning.PruningSummaries(tmp_path)],
        )
    steps = []
    for root, _, files in os.walk(tmp_path):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for v in event.summary.value:
                    if v.tag == "prune_low_magnitude_d/target_sparsity":
                        steps.append(event.step)
    assert steps == [0, 2, 4]  # epoch 1 start, epoch 1 end = epoch 2 start, epoch 2 end


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFMOT runs on TensorFlow")
def test_avg_block_scores_break_near_ties_as_tfmot():
    """Weights with few distinct values make block averages that tie up to the
    last float bit; the blocks kept are TFMOT's own (its mask function)."""
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        pruning_impl,
        pruning_schedule,
    )

    rng = np.random.default_rng(0)
    compared = 0
    while compared < 60:
        shape = tuple(int(v) for v in rng.integers(3, 12, 2))
        block = tuple(int(v) for v in rng.integers(2, 4, 2))
        grid = [-(-shape[i] // block[i]) for i in range(2)]
        # TFMOT pads 'SAME' on both sides from 2 on, and squeezes a 1-wide grid.
        if max((-shape[i]) % block[i] for i in range(2)) >= 2 or min(grid) < 2:
            continue
        w = (rng.integers(-6, 7, shape) / 10.0).astype("float32")
        sparsity = float(rng.choice([0.3, 0.5, 0.7]))
        schedule = pruning_schedule.ConstantSparsity(sparsity, 0, 100, 1)
        variables = [(tf.Variable(w), tf.Variable(np.ones_like(w)), tf.Variable(0.0))]
        reference = pruning_impl.Pruning(lambda: tf.constant(1), variables, schedule, block, "AVG")
        want = reference._maybe_update_block_mask(tf.constant(w))[1].numpy()
        got = np_(pruning.block_mask(ops.convert_to_tensor(w), sparsity, block, "AVG")[0])
        np.testing.assert_array_equal(got, want, err_msg=f"{shape} {block} {sparsity}")
        compared += 1
