"""The Distiller's target and teacher handling at its edges, against NumPy:
target unpacking, weight products of samples and positions, the labels DKD
gets (true, teacher's ensemble top-1, or mixed by `label_mask`), teachers
ending in softmax with exact zeros, and the exact error messages."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import kd_keras
from kd_keras.distiller import combine_weights, unpack_targets
from kd_keras.losses import DKD, SoftTargetKD
from tiny import data, mlp, np_soft_target, softmax


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_unpack_targets_forms():
    assert unpack_targets(None) == (None, None, None, None)
    y = np.arange(3)
    labels, *rest = unpack_targets(y)
    assert labels is y and rest == [None, None, None]
    t, m = np.zeros((3, 4)), np.ones(3)
    assert unpack_targets({"teacher_logits": t, "label_mask": m}) == (None, t, m, None)
    assert unpack_targets({"labels": y, "padding_mask": m}) == (y, None, None, m)
    with pytest.raises(ValueError) as info:
        unpack_targets({"labels": y, "logits": t, "mask": m})
    assert str(info.value) == (
        "Unknown target keys ['logits', 'mask']: a Distiller target is either the labels or a "
        "dict with keys among ['labels', 'teacher_logits', 'label_mask', 'padding_mask']."
    )


def test_combine_weights_multiplies_sample_and_position_weights():
    assert combine_weights(None, None) is None
    w = np.array([1.0, 0.5], "float32")
    pad = np.array([[1, 1, 0], [1, 0, 0]], "float32")
    got = combine_weights(w, None, pad)
    np.testing.assert_allclose(np_(got), w[:, None] * pad)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_allclose(np_(combine_weights(w)), w)
    np.testing.assert_allclose(np_(combine_weights(w, w)), w * w)
    np.testing.assert_allclose(np_(combine_weights(pad, w)), pad * w[:, None])


def dkd_distiller(teachers, alpha=0.0):
    student = mlp(8, name="s", seed=3)
    distiller = kd_keras.Distiller(
        student, teachers, losses=[DKD(alpha=1.0, beta=2.0, temperature=2.0)], alpha=alpha
    )
    distiller.compile(optimizer="sgd")
    return distiller


def term_labels(distiller, x, y):
    labels, cached, label_mask, _ = unpack_targets(y)
    t_logits, _ = distiller.teacher_forward(x)
    return distiller._labels_for_terms(labels, label_mask, t_logits)


def test_dkd_labels_come_from_the_labels_the_mask_or_the_ensemble_top1():
    x, y = data(12)
    a, b = mlp(16, name="a", seed=1), mlp(16, name="b", seed=2)
    distiller = dkd_distiller([a, b])
    ensemble = softmax(np_(a(x))) + softmax(np_(b(x)))
    top1 = ensemble.argmax(-1)
    np.testing.assert_array_equal(np_(term_labels(distiller, x, None)), top1)
    np.testing.assert_array_equal(np_(term_labels(distiller, x, y)), y)
    np.testing.assert_array_equal(np_(term_labels(distiller, x, y[:, None])), y)
    mask = (np.arange(12) % 3 == 0).astype("float32")
    np.testing.assert_array_equal(
        np_(term_labels(distiller, x, {"labels": y, "label_mask": mask})),
        np.where(mask > 0, y, top1),
    )
    assert keras.backend.standardize_dtype(term_labels(distiller, x, y).dtype) == "int32"
    # Terms that do not read labels get none.
    plain = kd_keras.Distiller(mlp(8, name="s2"), a, losses=[SoftTargetKD(2.0)])
    assert plain._labels_for_terms(y, None, [a(x)]) is None


def test_softmax_teacher_logits_are_floored_log_probabilities():
    inputs = keras.Input((6,))
    probs = keras.layers.Dense(
        4,
        activation="softmax",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant([0.0, -1e4, 1.0, 2.0]),
    )(inputs)
    teacher = keras.Model(inputs, probs)
    distiller = kd_keras.Distiller(mlp(8, name="s"), teacher, losses=[SoftTargetKD(1.0)])
    (logits,), (features,) = distiller.teacher_forward(data(3)[0])
    p = softmax(np.array([0.0, -1e4, 1.0, 2.0]))
    expected = np.log(np.maximum(p, 1e-30)).astype("float32")
    assert features == {}
    np.testing.assert_allclose(np_(logits), np.tile(expected, (3, 1)), rtol=1e-5)


def test_loss_from_cached_and_online_teachers_is_the_ensemble_kd():
    x, y = data(16)
    a, b = mlp(16, name="a", seed=1), mlp(16, name="b", seed=2)
    distiller = kd_keras.Distiller(
        mlp(8, name="s", seed=3), [a, b], losses=[SoftTargetKD(2.0)], alpha=0.0
    )
    distiller.compile(optimizer="sgd")
    s = np_(distiller(x, training=False))
    target = 0.5 * softmax(np_(a(x)) / 2.0) + 0.5 * softmax(np_(b(x)) / 2.0)
    log_s = np.log(softmax(s / 2.0))
    expected = 4.0 * (target * (np.log(target) - log_s)).sum(-1).mean()
    online = distiller.compute_loss(x, y, distiller(x), training=False)
    cached = distiller.compute_loss(
        x, {"labels": y, "teacher_logits": (np_(a(x)), np_(b(x)))}, distiller(x), training=False
    )
    assert float(np_(online)) == pytest.approx(expected, rel=1e-5)
    assert float(np_(cached)) == pytest.approx(expected, rel=1e-5)
    one = distiller.compute_loss(x, {"teacher_logits": np_(a(x))}, distiller(x), training=False)
    assert float(np_(one)) == pytest.approx(np_soft_target(np_(a(x)), s, 2.0), rel=1e-5)


def test_missing_teacher_errors_are_exact():
    x, _ = data(4)
    offline = kd_keras.Distiller(mlp(8, name="s"), None)
    with pytest.raises(ValueError) as info:
        offline.teacher_forward(x)
    assert str(info.value) == (
        "This Distiller has no teacher, so every batch must carry cached outputs: "
        "y={'labels': y, 'teacher_logits': logits} (see kd_keras.cache_teacher_outputs)."
    )
