"""Distillation losses against independent NumPy versions of the papers' formulas.

Each reference below is written from the paper (and the authors' official
code where the paper leaves a choice open), in float64, with plain loops where
that is clearer; none calls kd_keras.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import losses
from kd_keras.losses import (
    DKD,
    RKD,
    AttentionTransfer,
    DistillationLoss,
    HintLoss,
    LogitsMSE,
    SoftTargetKD,
)

ATOL = 1e-5
GARBAGE = 1e9  # what a padded position may hold; it must not leak into a loss


def numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------


def np_softmax(z, axis=-1):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(z, axis=-1):
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_kl(p, log_q):
    """Σ p (log p − log q) over the last axis, with 0 log 0 = 0 (torch's kl_div)."""
    p = np.asarray(p, np.float64)
    log_p = np.log(np.where(p > 0, p, 1.0))
    return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def ref_soft_target(teachers, student, temperature, shares=None, teacher_temperatures=None):
    """Hinton et al.: T² KL(Σ_k w_k softmax(z_k/T_k) ‖ softmax(s/T)), batch mean."""
    shares = shares or [1.0] * len(teachers)
    shares = [w / sum(shares) for w in shares]
    temps = teacher_temperatures or [temperature] * len(teachers)
    target = sum(w * np_softmax(np.asarray(t, np.float64) / tt)
                 for t, w, tt in zip(teachers, shares, temps))
    log_student = np_log_softmax(np.asarray(student, np.float64) / temperature)
    return temperature**2 * np.mean(np_kl(target, log_student))


def ref_logits_mse(teacher, student):
    """Ba & Caruana: mean over samples of mean over classes of (s - t)²."""
    t, s = np.asarray(teacher, np.float64), np.asarray(student, np.float64)
    return np.mean(np.mean((s - t) ** 2, axis=-1))


def ref_hint(teacher, student, kernel=None, bias=None):
    """FitNets: mean over samples/positions of mean over channels of (r(s) - t)²."""
    s = np.asarray(student, np.float64)
    if kernel is not None:
        s = s @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    return np.mean(np.mean((s - np.asarray(teacher, np.float64)) ** 2, axis=-1))


def ref_attention_map(x, p=2.0):
    """Official at(x) = F.normalize(x.pow(p).mean(1).view(n, -1)), channels last here."""
    x = np.asarray(x, np.float64)
    a = (np.abs(x) ** p).mean(axis=-1).reshape(x.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def ref_attention_transfer(teacher, student, p=2.0, beta=1000.0):
    """Official at_loss: (at(s) - at(t)).pow(2).mean(), times beta / 2."""
    diff = ref_attention_map(student, p) - ref_attention_map(teacher, p)
    return beta / 2 * np.mean(diff**2)


def ref_dkd(teacher, student, target, alpha=1.0, beta=8.0, temperature=4.0):
    """mdistiller's dkd_loss, transcribed to NumPy."""
    s = np.asarray(student, np.float64)
    t = np.asarray(teacher, np.float64)
    n = len(s)
    gt_mask = np.zeros_like(s)
    gt_mask[np.arange(n), target] = 1.0
    other_mask = 1.0 - gt_mask
    pred_s = np_softmax(s / temperature)
    pred_t = np_softmax(t / temperature)

    def cat_mask(p):
        return np.stack([(p * gt_mask).sum(1), (p * other_mask).sum(1)], axis=1)

    bin_s, bin_t = cat_mask(pred_s), cat_mask(pred_t)
    tckd = np.sum(np_kl(bin_t, np.log(bin_s))) * temperature**2 / n
    pred_t_part2 = np_softmax(t / temperature - 1000.0 * gt_mask)
    log_pred_s_part2 = np_log_softmax(s / temperature - 1000.0 * gt_mask)
    nckd = np.sum(np_kl(pred_t_part2, log_pred_s_part2)) * temperature**2 / n
    return alpha * tckd + beta * nckd


def huber(x):
    x = np.abs(x)
    return np.where(x < 1.0, 0.5 * x**2, x - 0.5)


def ref_rkd(teacher, student, weights=None, distance_weight=25.0, angle_weight=50.0):
    """Park et al. with the official choices, pair / triplet weights w_i w_j (w_k).

    Loops over pairs and triplets straight from the definitions.
    """
    t = np.asarray(teacher, np.float64).reshape(len(teacher), -1)
    s = np.asarray(student, np.float64).reshape(len(student), -1)
    n = len(s)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)

    def distances(e):
        return np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])

    def normalized(e):
        d = distances(e)
        num = sum(w[i] * w[j] * d[i, j] for i in range(n) for j in range(n) if i != j)
        den = sum(w[i] * w[j] for i in range(n) for j in range(n) if i != j)
        return d / (num / den)

    ds, dt = normalized(s), normalized(t)
    pair = sum(w[i] * w[j] * huber(ds[i, j] - dt[i, j]) for i in range(n) for j in range(n))
    distance_loss = pair / sum(w[i] * w[j] for i in range(n) for j in range(n))

    def cosine(e, i, j, k):
        a, b = e[j] - e[i], e[k] - e[i]
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:  # official F.normalize maps a zero vector to 0
            return 0.0
        return a @ b / (na * nb)

    num = den = 0.0
    for i, j, k in itertools.product(range(n), repeat=3):
        weight = w[i] * w[j] * w[k]
        num += weight * huber(cosine(s, i, j, k) - cosine(t, i, j, k))
        den += weight
    return distance_weight * distance_loss + angle_weight * num / den


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def padded_tokens(seed, batch=3, time=5, dim=7, lengths=(5, 2, 4)):
    """Teacher / student token outputs whose padded positions hold garbage,
    the `(batch, time)` mask, and the valid positions stacked `(n, dim)`."""
    r = rng(seed)
    teacher = r.normal(size=(batch, time, dim)) * 2
    student = r.normal(size=(batch, time, dim)) * 2
    mask = np.zeros((batch, time))
    for b, length in enumerate(lengths):
        mask[b, :length] = 1.0
    teacher[mask == 0] = GARBAGE * r.uniform(0.5, 1.0, size=(int((mask == 0).sum()), dim))
    student[mask == 0] = -GARBAGE
    return f32(teacher), f32(student), f32(mask), teacher[mask > 0], student[mask > 0]


def value(loss: DistillationLoss, teachers, student, **kwargs) -> np.ndarray:
    """`loss(teachers, student, **kwargs)` as NumPy (float32 inputs).

    On JAX the call is jit-compiled, as in `fit`: one compilation is also much
    faster than dispatching every op eagerly.
    """
    teachers, student = [f32(t) for t in teachers], f32(student)
    if not loss.built:
        loss.build(teachers[0].shape, student.shape)
    if keras.backend.backend() == "jax":
        import jax

        return numpy(jax.jit(lambda t, s: loss(t, s, **kwargs))(teachers, student))
    return numpy(loss(teachers, student, **kwargs))


def gradients(layer: keras.layers.Layer, fn):
    """d fn() / d layer.trainable_variables as NumPy arrays, on any backend."""
    backend = keras.backend.backend()
    variables = layer.trainable_variables
    assert variables, "build the layer first: it has no trainable variables yet"
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn()
        return [numpy(g) for g in tape.gradient(value, [v.value for v in variables])]
    if backend == "torch":
        value = fn()
        value.backward()
        return [numpy(v.value.grad) for v in variables]
    import jax

    def pure(values):
        mapping = [(v, x) for v, x in zip(variables, values)]
        with keras.StatelessScope(state_mapping=mapping):
            return fn()

    return [numpy(g) for g in jax.jit(jax.grad(pure))([v.value for v in variables])]


# --------------------------------------------------------------------------
# SoftTargetKD
# --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_soft_target_matches_hinton(temperature):
    r = rng(int(temperature))
    teacher, student = r.normal(size=(8, 10)) * 3, r.normal(size=(8, 10)) * 3
    loss = SoftTargetKD(temperature=temperature)
    got = value(loss, [teacher], student)
    np.testing.assert_allclose(got, ref_soft_target([teacher], student, temperature), atol=ATOL)


def test_soft_target_temperature_variable_changes_the_loss():
    r = rng(1)
    teacher, student = r.normal(size=(6, 5)), r.normal(size=(6, 5))
    loss = SoftTargetKD(temperature=4.0)
    loss([f32(teacher)], f32(student))
    loss.temperature.assign(2.0)
    got = value(loss, [teacher], student)
    np.testing.assert_allclose(got, ref_soft_target([teacher], student, 2.0), atol=ATOL)
    assert loss.get_config()["temperature"] == 4.0


def test_soft_target_masked_tokens():
    teacher, student, mask, valid_t, valid_s = padded_tokens(seed=2)
    loss = SoftTargetKD(temperature=3.0)
    got = value(loss, [teacher], student, weights=mask)
    np.testing.assert_allclose(got, ref_soft_target([valid_t], valid_s, 3.0), atol=ATOL)


def test_soft_target_fractional_sample_weights():
    r = rng(3)
    teacher, student = r.normal(size=(5, 4)), r.normal(size=(5, 4))
    w = np.array([0.5, 0.0, 2.0, 1.0, 0.25])
    per_sample = [ref_soft_target([teacher[i : i + 1]], student[i : i + 1], 2.0) for i in range(5)]
    expected = np.sum(w * per_sample) / w.sum()
    for weights in (w, w[:, None]):  # Keras hands sample weights either way
        got = value(SoftTargetKD(2.0), [teacher], student, weights=weights)
        np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize(
    ("shares", "teacher_temperatures"),
    [(None, None), ([3.0, 1.0, 1.0], None), ([1.0, 2.0, 1.0], [1.0, 3.0, 6.0])],
)
def test_soft_target_ensemble_is_kl_to_average_distribution(shares, teacher_temperatures):
    r = rng(4)
    teachers = [r.normal(size=(6, 7)) * 2 for _ in range(3)]
    student = r.normal(size=(6, 7))
    loss = SoftTargetKD(temperature=2.5, teacher_temperatures=teacher_temperatures)
    got = value(loss, teachers, student, teacher_weights=shares)
    expected = ref_soft_target(teachers, student, 2.5, shares, teacher_temperatures)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    # ... which is not the average of the per-teacher losses.
    mean_of_losses = np.mean([ref_soft_target([t], student, 2.5) for t in teachers])
    assert abs(expected - mean_of_losses) > 1e-3


# --------------------------------------------------------------------------
# LogitsMSE
# --------------------------------------------------------------------------


def test_logits_mse_matches_ba_caruana():
    r = rng(5)
    teacher, student = r.normal(size=(9, 6)) * 4, r.normal(size=(9, 6))
    got = value(LogitsMSE(), [teacher], student)
    np.testing.assert_allclose(got, ref_logits_mse(teacher, student), atol=ATOL)


def test_logits_mse_masked_tokens():
    teacher, student, mask, valid_t, valid_s = padded_tokens(seed=6)
    got = value(LogitsMSE(), [teacher], student, weights=mask)
    np.testing.assert_allclose(got, ref_logits_mse(valid_t, valid_s), atol=ATOL)


def test_logits_mse_multi_teacher_is_weighted_sum_of_losses():
    r = rng(7)
    teachers = [r.normal(size=(4, 3)) for _ in range(2)]
    student = r.normal(size=(4, 3))
    got = value(LogitsMSE(), teachers, student, teacher_weights=[1, 3])
    expected = 0.25 * ref_logits_mse(teachers[0], student) + 0.75 * ref_logits_mse(
        teachers[1], student
    )
    np.testing.assert_allclose(got, expected, atol=ATOL)


# --------------------------------------------------------------------------
# HintLoss
# --------------------------------------------------------------------------


def hint_reference(loss, teacher, student):
    if loss.regressor is None:
        return ref_hint(teacher, student)
    kernel, bias = (numpy(w) for w in loss.regressor.weights)
    return ref_hint(teacher, student, kernel, bias)


def test_hint_with_projection_matches_fitnets():
    r = rng(8)
    teacher, student = r.normal(size=(2, 4, 4, 8)), r.normal(size=(2, 4, 4, 3))
    loss = HintLoss(teacher_layer="block2", student_layer="block2")
    got = value(loss, [teacher], student)
    assert loss.regressor is not None
    kernel, bias = loss.regressor.weights
    assert tuple(kernel.shape) == (3, 8) and tuple(bias.shape) == (8,)
    assert kernel.trainable and bias.trainable
    assert {id(v) for v in loss.trainable_weights} == {id(kernel), id(bias)}
    np.testing.assert_allclose(got, hint_reference(loss, teacher, student), atol=ATOL)


def test_hint_same_width_has_no_projection_unless_always():
    r = rng(9)
    teacher, student = r.normal(size=(3, 5)), r.normal(size=(3, 5))
    plain = HintLoss(teacher_layer="t", student_layer="s")
    got = value(plain, [teacher], student)
    assert plain.regressor is None and not plain.trainable_weights
    np.testing.assert_allclose(got, ref_hint(teacher, student), atol=ATOL)
    always = HintLoss(teacher_layer="t", student_layer="s", projection="always")
    got = value(always, [teacher], student)
    assert len(always.trainable_weights) == 2
    np.testing.assert_allclose(got, hint_reference(always, teacher, student), atol=ATOL)


def test_hint_masked_tokens():
    teacher, student, mask, valid_t, valid_s = padded_tokens(seed=10)
    student = student[..., :4]  # narrower student: the regressor is used
    valid_s = valid_s[:, :4]
    loss = HintLoss(teacher_layer="t", student_layer="s")
    got = value(loss, [teacher], student, weights=mask)
    np.testing.assert_allclose(got, hint_reference(loss, valid_t, valid_s), atol=ATOL)


def test_hint_projection_receives_the_fitnets_gradient():
    r = rng(11)
    teacher, student = f32(r.normal(size=(2, 3, 3, 6))), f32(r.normal(size=(2, 3, 3, 4)))
    loss = HintLoss(teacher_layer="t", student_layer="s")
    loss.build(teacher.shape, student.shape)
    kernel, bias = (numpy(w) for w in loss.regressor.weights)
    grad_kernel, grad_bias = gradients(loss, lambda: loss([teacher], student))
    # d/dW mean((sW + b - t)²) = 2 sᵀ(sW + b - t) / (positions · channels)
    s = student.reshape(-1, 4).astype(np.float64)
    residual = s @ kernel + bias - teacher.reshape(-1, 6)
    np.testing.assert_allclose(grad_kernel, 2 * s.T @ residual / residual.size, atol=ATOL)
    np.testing.assert_allclose(grad_bias, 2 * residual.sum(0) / residual.size, atol=ATOL)


def test_hint_gradient_ignores_padded_garbage():
    teacher, student, mask, _, _ = padded_tokens(seed=12)
    student = student[..., :4]
    loss = HintLoss(teacher_layer="t", student_layer="s")
    loss.build(teacher.shape, student.shape)
    grads = gradients(loss, lambda: loss([teacher], student, weights=mask))
    assert all(np.isfinite(g).all() and 0 < np.abs(g).max() < 1e3 for g in grads)


def test_hint_spatial_mismatch_names_both_shapes():
    loss = HintLoss(teacher_layer="block1", student_layer="block2")
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 16\).*\(2, 4, 4, 16\).*same spatial"):
        loss([f32(np.zeros((2, 8, 8, 16)))], f32(np.zeros((2, 4, 4, 16))))


# --------------------------------------------------------------------------
# AttentionTransfer
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "beta"), [(2.0, 1000.0), (1.0, 10.0), (3.0, 1.0)])
def test_attention_transfer_matches_official(p, beta):
    r = rng(13)
    teacher, student = r.normal(size=(3, 5, 4, 16)), r.normal(size=(3, 5, 4, 6))
    loss = AttentionTransfer(teacher_layer="t", student_layer="s", p=p, beta=beta)
    got = value(loss, [teacher], student)
    np.testing.assert_allclose(got, ref_attention_transfer(teacher, student, p, beta), atol=ATOL)


def test_attention_transfer_masked_tokens():
    teacher, student, mask, _, _ = padded_tokens(seed=14)
    loss = AttentionTransfer(teacher_layer="t", student_layer="s")
    got = value(loss, [teacher], student, weights=mask)
    # Each sequence's attention map covers its own tokens only; every token
    # counts once in the mean.
    lengths = mask.sum(1).astype(int)
    sq = [
        (ref_attention_map(student[b : b + 1, :n]) - ref_attention_map(teacher[b : b + 1, :n])) ** 2
        for b, n in enumerate(lengths)
    ]
    expected = 500.0 * np.sum([s.sum() for s in sq]) / lengths.sum()
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_attention_transfer_sample_weights_drop_samples():
    r = rng(15)
    teacher, student = r.normal(size=(4, 3, 3, 5)), r.normal(size=(4, 3, 3, 2))
    teacher[1] = GARBAGE
    w = np.array([1.0, 0.0, 1.0, 1.0])
    loss = AttentionTransfer(teacher_layer="t", student_layer="s")
    expected = ref_attention_transfer(teacher[w > 0], student[w > 0])
    for weights in (w, w[:, None]):
        got = value(loss, [teacher], student, weights=weights)
        np.testing.assert_allclose(got, expected, atol=ATOL)


def test_attention_transfer_needs_matching_positions():
    loss = AttentionTransfer(teacher_layer="t", student_layer="s")
    with pytest.raises(ValueError, match=r"\(2, 6, 6, 3\).*\(2, 3, 3, 3\)"):
        loss([f32(np.zeros((2, 6, 6, 3)))], f32(np.zeros((2, 3, 3, 3))))
    with pytest.raises(ValueError, match="feature maps"):
        AttentionTransfer()([f32(np.zeros((2, 10)))], f32(np.zeros((2, 10))))


# --------------------------------------------------------------------------
# DKD
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 1.0, 8.0)]
)
def test_dkd_matches_mdistiller(alpha, beta, temperature):
    r = rng(16)
    teacher, student = r.normal(size=(10, 6)) * 3, r.normal(size=(10, 6)) * 2
    labels = r.integers(0, 6, size=10)
    loss = DKD(alpha=alpha, beta=beta, temperature=temperature)
    got = value(loss, [teacher], student, labels=labels.astype("int32"))
    expected = ref_dkd(teacher, student, labels, alpha, beta, temperature)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_dkd_with_alpha_equal_beta_is_not_soft_target():
    # DKD's point: KD = TCKD + (1 − p_t) NCKD, so alpha = beta = 1 is not KD.
    r = rng(17)
    teacher, student = r.normal(size=(8, 5)) * 3, r.normal(size=(8, 5))
    labels = np.argmax(teacher, 1)
    dkd = value(DKD(1.0, 1.0, 2.0), [teacher], student, labels=labels)
    np.testing.assert_allclose(dkd, ref_dkd(teacher, student, labels, 1.0, 1.0, 2.0), atol=ATOL)
    assert dkd > ref_soft_target([teacher], student, 2.0) + 1e-4


def test_dkd_accepts_one_hot_and_column_labels():
    r = rng(18)
    teacher, student = r.normal(size=(5, 4)), r.normal(size=(5, 4))
    labels = r.integers(0, 4, size=5)
    expected = ref_dkd(teacher, student, labels)
    loss = DKD()
    for form in (np.eye(4)[labels], labels[:, None], labels.astype("float32")):
        got = value(loss, [teacher], student, labels=form)
        np.testing.assert_allclose(got, expected, atol=ATOL)


def test_dkd_masked_tokens_with_padding_labels():
    teacher, student, mask, valid_t, valid_s = padded_tokens(seed=19)
    r = rng(19)
    labels = r.integers(0, teacher.shape[-1], size=mask.shape)
    labels[mask == 0] = -100  # the usual "ignore" label on padding
    loss = DKD(temperature=2.0)
    got = value(loss, [teacher], student, labels=labels.astype("int32"), weights=mask)
    expected = ref_dkd(valid_t, valid_s, labels[mask > 0], temperature=2.0)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_dkd_temperature_variable_and_multi_teacher():
    r = rng(20)
    teachers = [r.normal(size=(6, 5)) * 2 for _ in range(2)]
    student = r.normal(size=(6, 5))
    labels = r.integers(0, 5, size=6)
    loss = DKD(temperature=4.0)
    loss.temperature.assign(3.0)
    got = value(loss, teachers, student, labels=labels)
    expected = np.mean([ref_dkd(t, student, labels, temperature=3.0) for t in teachers])
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_dkd_needs_labels():
    with pytest.raises(ValueError, match="labels="):
        DKD()([f32(np.zeros((2, 3)))], f32(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"class indices of shape \(2,\)"):
        DKD()([f32(np.zeros((2, 3)))], f32(np.zeros((2, 3))), labels=np.zeros((2, 3, 1)))


# --------------------------------------------------------------------------
# RKD
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distance_weight", "angle_weight"), [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)]
)
def test_rkd_matches_park(distance_weight, angle_weight):
    r = rng(21)
    teacher, student = r.normal(size=(6, 2, 2, 3)), r.normal(size=(6, 5))
    loss = RKD(distance_weight, angle_weight, teacher_layer="t", student_layer="s")
    got = value(loss, [teacher], student)
    expected = ref_rkd(teacher, student, None, distance_weight, angle_weight)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_rkd_zero_weight_samples_contribute_nothing():
    r = rng(22)
    teacher, student = r.normal(size=(7, 4)), r.normal(size=(7, 3))
    w = np.array([1, 0, 1, 1, 0, 1, 1], dtype=np.float64)
    teacher[w == 0], student[w == 0] = GARBAGE, -GARBAGE
    got = value(RKD(), [teacher], student, weights=w)
    keep = w > 0
    np.testing.assert_allclose(got, ref_rkd(teacher[keep], student[keep]), atol=ATOL)


def test_rkd_fractional_weights():
    r = rng(23)
    teacher, student = r.normal(size=(5, 4)), r.normal(size=(5, 4))
    w = np.array([0.2, 1.0, 0.7, 2.0, 0.5])
    for weights in (w, w[:, None]):
        got = value(RKD(), [teacher], student, weights=weights)
        np.testing.assert_allclose(got, ref_rkd(teacher, student, w), atol=ATOL)


def test_rkd_gradients_are_finite_despite_degenerate_pairs():
    # Pairs (i, i) have distance 0 and triplets (i, i, k) a zero vector; their
    # square roots / normalizations must not turn the gradient into NaN.
    r = rng(27)
    x, teacher = f32(r.normal(size=(5, 3))), f32(r.normal(size=(5, 6)))
    student = keras.layers.Dense(4)
    student.build(x.shape)
    grads = gradients(student, lambda: RKD()([teacher], student(x)))
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in grads)


def test_feature_losses_with_several_teachers():
    r = rng(28)
    maps = [r.normal(size=(3, 4, 4, c)) for c in (5, 9)]
    student_map = r.normal(size=(3, 4, 4, 2))
    at = AttentionTransfer(teacher_layer="t", student_layer="s")
    got = value(at, maps, student_map, teacher_weights=[1.0, 3.0])
    expected = 0.25 * ref_attention_transfer(maps[0], student_map) + 0.75 * (
        ref_attention_transfer(maps[1], student_map)
    )
    np.testing.assert_allclose(got, expected, atol=ATOL)
    embeddings = [r.normal(size=(5, d)) for d in (3, 7)]
    student_embedding = r.normal(size=(5, 2))
    got = value(RKD(), embeddings, student_embedding)
    expected = np.mean([ref_rkd(e, student_embedding) for e in embeddings])
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_rkd_reads_logits_only_without_layers():
    assert RKD().reads_logits
    assert not RKD(teacher_layer="embedding", student_layer="embedding").reads_logits
    assert DKD.needs_labels and not RKD.needs_labels
    assert not HintLoss(teacher_layer="a", student_layer="b").reads_logits
    assert not AttentionTransfer().reads_logits


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="an unknown batch size only exists in TensorFlow graphs",
)
def test_losses_trace_with_unknown_batch_size():
    import tensorflow as tf

    r = rng(26)
    features_t, features_s = f32(r.normal(size=(4, 3, 3, 6))), f32(r.normal(size=(4, 3, 3, 2)))
    logits_t, logits_s = f32(r.normal(size=(4, 5))), f32(r.normal(size=(4, 5)))
    labels, w = np.array([0, 4, 2, 1], "int32"), f32([1.0, 0.0, 0.5, 1.0])
    cases = [
        (SoftTargetKD(), logits_t, logits_s),
        (LogitsMSE(), logits_t, logits_s),
        (DKD(), logits_t, logits_s),
        (RKD(), logits_t, logits_s),
        (HintLoss(teacher_layer="t", student_layer="s"), features_t, features_s),
        (AttentionTransfer(teacher_layer="t", student_layer="s"), features_t, features_s),
    ]
    for loss, teacher, student in cases:
        eager = value(loss, [teacher], student, labels=labels, weights=w)

        def spec(x):
            return tf.TensorSpec((None,) + x.shape[1:], x.dtype)

        traced = tf.function(
            lambda t, s, y, sw, loss=loss: loss([t], s, labels=y, weights=sw),
            input_signature=[spec(teacher), spec(student), spec(labels), spec(w)],
        )
        np.testing.assert_allclose(numpy(traced(teacher, student, labels, w)), eager, atol=ATOL)


# --------------------------------------------------------------------------
# Serialization, registry, arguments
# --------------------------------------------------------------------------

CONFIGURED = [
    lambda: SoftTargetKD(temperature=3.0, teacher_temperatures=[2.0, 5.0], weight=0.5),
    lambda: LogitsMSE(weight=2.0),
    lambda: HintLoss(teacher_layer="outer/block2", student_layer="block2", projection="always"),
    lambda: AttentionTransfer(teacher_layer="block1", student_layer="block1", p=1.0, beta=50.0),
    lambda: DKD(alpha=0.5, beta=4.0, temperature=2.0),
    lambda: RKD(distance_weight=1.0, angle_weight=2.0, teacher_layer="e", student_layer="e"),
]


@pytest.mark.parametrize("make", CONFIGURED)
def test_config_round_trips(make):
    loss = make()
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    again = losses.deserialize(losses.serialize(loss))
    assert again.get_config() == config
    assert losses.get(losses.serialize(loss)).get_config() == config


def test_built_hint_round_trips_with_its_projection():
    r = rng(24)
    teacher, student = f32(r.normal(size=(2, 4, 4, 8))), f32(r.normal(size=(2, 4, 4, 3)))
    loss = HintLoss(teacher_layer="t", student_layer="s")
    expected = value(loss, [teacher], student)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert restored.built and restored.regressor is not None
    restored.set_weights(loss.get_weights())
    np.testing.assert_allclose(value(restored, [teacher], student), expected, atol=ATOL)


@keras.saving.register_keras_serializable(package="kd_keras_tests")
class ModelWithTerms(keras.Model):
    """A student-like model that owns distillation terms, as the Distiller does."""

    def __init__(self, terms, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3)
        self.terms = terms

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        terms = [keras.saving.serialize_keras_object(t) for t in self.terms]
        return {**super().get_config(), "terms": terms}

    @classmethod
    def from_config(cls, config):
        terms = [keras.saving.deserialize_keras_object(t) for t in config.pop("terms")]
        return cls(terms, **config)


def test_keras_file_keeps_projection_and_temperature(tmp_path):
    r = rng(29)
    teacher, student = f32(r.normal(size=(2, 5, 8))), f32(r.normal(size=(2, 5, 3)))
    hint, dkd = HintLoss(teacher_layer="t", student_layer="s"), DKD(temperature=4.0)
    model = ModelWithTerms([hint, dkd])
    model(np.zeros((2, 4), "float32"))
    expected = value(hint, [teacher], student)
    dkd.temperature.assign(2.5)  # as a schedule would have left it
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    loaded_hint, loaded_dkd = loaded.terms
    np.testing.assert_allclose(value(loaded_hint, [teacher], student), expected, atol=ATOL)
    assert float(numpy(loaded_dkd.temperature)) == 2.5


def test_registry_names_and_forms():
    expected = {
        "soft_target": SoftTargetKD,
        "logits_mse": LogitsMSE,
        "attention_transfer": AttentionTransfer,
        "dkd": DKD,
        "rkd": RKD,
    }
    for name, cls in expected.items():
        assert type(losses.get(name)) is cls
    assert type(losses.get("DKD")) is DKD and type(losses.get("Soft-Target")) is SoftTargetKD
    assert losses.get({"dkd": {"beta": 2.0}}).beta == 2.0
    assert losses.get({"class_name": "rkd", "config": {"angle_weight": 0.0}}).angle_weight == 0.0
    hint = losses.get({"hint": {"teacher_layer": "a", "student_layer": "b"}})
    assert isinstance(hint, HintLoss) and hint.teacher_layer == "a"
    term = LogitsMSE()
    assert losses.get(term) is term
    assert set(losses.LOSSES) == {*expected, "hint"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: losses.get("fitnet"), "Known names"),
        (lambda: losses.get(3), "give a name"),
        (lambda: losses.get("hint"), "teacher_layer must name a layer"),
        (lambda: SoftTargetKD(temperature=0.0), "temperature must be > 0"),
        (lambda: SoftTargetKD(teacher_temperatures=[1.0, -2.0]), "teacher_temperatures"),
        (lambda: LogitsMSE(weight=-1.0), "weight must be >= 0"),
        (lambda: HintLoss(teacher_layer="a"), "student_layer must name a layer"),
        (lambda: HintLoss(teacher_layer="a", student_layer="b", projection="conv"), "'auto'"),
        (lambda: AttentionTransfer(p=0.0), "p must be > 0"),
        (lambda: AttentionTransfer(beta=-1.0), "beta must be >= 0"),
        (lambda: DKD(alpha=-1.0), "alpha and beta must be >= 0"),
        (lambda: DKD(temperature=-4.0), "temperature must be > 0"),
        (lambda: RKD(distance_weight=-1.0), "must be >= 0"),
        (lambda: RKD(distance_weight=0.0, angle_weight=0.0), "not both 0"),
    ],
)
def test_bad_arguments_say_how_to_fix(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_call_arguments_say_how_to_fix():
    zeros = f32(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="teacher_weights must be 2"):
        LogitsMSE()([zeros, zeros], zeros, teacher_weights=[1.0])
    with pytest.raises(ValueError, match=r"weights must have shape \(batch,\)"):
        RKD()([zeros], zeros, weights=f32(np.ones((3, 2))))
    with pytest.raises(ValueError, match="projection='auto'"):
        HintLoss(teacher_layer="a", student_layer="b", projection="never")(
            [f32(np.zeros((3, 5)))], zeros
        )
    with pytest.raises(ValueError, match="one HintLoss per teacher"):
        HintLoss(teacher_layer="a", student_layer="b")([zeros, f32(np.zeros((3, 6)))], zeros)


def test_all_zero_weights_give_zero_not_nan():
    r = rng(25)
    teacher, student = f32(r.normal(size=(4, 3))), f32(r.normal(size=(4, 3)))
    zero = f32(np.zeros(4))
    for loss in (SoftTargetKD(), LogitsMSE(), RKD()):
        assert value(loss, [teacher], student, weights=zero) == 0.0
    assert value(DKD(), [teacher], student, labels=np.zeros(4, "int32"), weights=zero) == 0.0


def test_every_registered_loss_is_a_distillation_loss():
    for cls in losses.LOSSES.values():
        assert issubclass(cls, DistillationLoss)
        assert keras.saving.get_registered_name(cls) == f"kd_keras>{cls.__name__}"
