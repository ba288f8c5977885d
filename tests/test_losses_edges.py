"""Distillation terms at their edges, against float64 NumPy references:
small and fractional weights, zero probabilities, per-teacher temperatures,
`(batch, 1)` weights, unknown dimensions, calls by keyword, the registry's
name forms, and the exact error messages (what is wrong, how to fix it)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from kd_keras import losses
from kd_keras.losses import DKD, RKD, AttentionTransfer, HintLoss, LogitsMSE, SoftTargetKD, base
from kd_keras.losses.rkd import pairwise_distances

ATOL = 1e-5


def numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, log_q):
    """Σ p (log p − log q), with 0 · log 0 = 0."""
    p = np.asarray(p, np.float64)
    log_p = np.log(np.where(p > 0, p, 1.0))
    return (p * (log_p - log_q)).sum(-1)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    s = z - z.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


# ------------------------------------------------------------------ base


def test_weighted_mean_with_small_fractional_weights_is_a_weighted_mean():
    values = f32([1.0, 2.0, 3.0, 4.0])
    weights = f32([0.001, 0.002, 0.0, 0.001])  # total 0.004, far below 1
    expected = (1 * 0.001 + 2 * 0.002 + 4 * 0.001) / 0.004
    assert float(numpy(base.weighted_mean(values, weights))) == pytest.approx(expected, rel=1e-5)
    assert float(numpy(base.weighted_mean(values))) == pytest.approx(2.5)


def test_weighted_mean_broadcasts_sample_weights_over_positions_and_drops_garbage():
    values = f32([[1.0, 2.0, 3.0], [4.0, np.inf, np.nan]])
    weights = f32([[0.5], [0.25]])  # (batch, 1): squeezed, then over time
    mask = f32([[1, 1, 1], [1, 0, 0]])
    got = base.weighted_mean(values, weights * mask)
    expected = (0.5 * (1 + 2 + 3) + 0.25 * 4) / (0.5 * 3 + 0.25)
    assert float(numpy(got)) == pytest.approx(expected, rel=1e-6)
    per_sample = base.weighted_mean(f32([[2.0], [6.0]]), f32([[1.0], [3.0]]))
    assert float(numpy(per_sample)) == pytest.approx(5.0)


def test_squeeze_trailing_ones_stops_at_rank():
    x = ops.ones((3, 1, 1))
    assert tuple(base.squeeze_trailing_ones(x, 1).shape) == (3,)
    assert tuple(base.squeeze_trailing_ones(x, 2).shape) == (3, 1)
    assert tuple(base.squeeze_trailing_ones(ops.ones((3, 2)), 1).shape) == (3, 2)


def test_l2_normalize_matches_numpy_and_leaves_zero_vectors_at_zero():
    x = f32([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]])
    got = numpy(base.l2_normalize(x))
    np.testing.assert_allclose(got[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(got[1], [0.0, 0.0])
    # Below epsilon the norm is floored at epsilon = 1e-12: 1e-7 / 1e-7 = 1.
    np.testing.assert_allclose(got[2], [1.0, 0.0], rtol=1e-5)
    tiny = numpy(base.l2_normalize(f32([[1e-13, 0.0]])))
    np.testing.assert_allclose(tiny, [[0.1, 0.0]], rtol=1e-3)  # 1e-13 / 1e-12
    along0 = numpy(base.l2_normalize(f32([[3.0, 0.0], [4.0, 1.0]]), axis=0))
    np.testing.assert_allclose(along0, [[0.6, 0.0], [0.8, 1.0]], rtol=1e-6)


def test_static_shape_keeps_unknown_dims():
    assert base.static_shape(keras.KerasTensor((None, 4, 2))) == (None, 4, 2)
    assert base.static_shape(ops.ones((2, 3))) == (2, 3)


def test_check_same_positions_ignores_unknown_dims_and_channels():
    base.check_same_positions("X", (None, 4, 4, 8), (None, None, 4, 3))
    base.check_same_positions("X", (2, 5, 8), (7, 5, 3))  # batch may differ (build shapes)
    with pytest.raises(ValueError) as info:
        base.check_same_positions("Loss", (None, 4, 4, 8), (None, 4, 3))
    assert str(info.value) == (
        "Loss: teacher features of shape (None, 4, 4, 8) and student features of shape "
        "(None, 4, 3) do not cover the same positions (all axes between batch and channels "
        "must match; channels may differ). Pick teacher_layer / student_layer at the same "
        "spatial resolution, or resize one map (e.g. pooling) in the model before the layer "
        "you name."
    )
    with pytest.raises(ValueError, match=r"^X: teacher features of shape \(None, 4, 8\)"):
        base.check_same_positions("X", (None, 4, 8), (None, 5, 8))


def test_weight_zero_is_allowed_and_negative_weight_message_is_exact():
    assert LogitsMSE(weight=0).weight == 0.0
    with pytest.raises(ValueError) as info:
        LogitsMSE(weight=-0.5)
    assert str(info.value) == (
        "LogitsMSE: weight must be >= 0, got -0.5. Use 0 to switch a term off."
    )
    with pytest.raises(ValueError, match="weight must be >= 0"):
        LogitsMSE(weight=float("nan"))


def test_terms_compute_in_float32_unless_told_otherwise():
    assert LogitsMSE().dtype_policy.name == "float32"
    assert LogitsMSE(dtype="float64").dtype_policy.name == "float64"
    r = np.random.default_rng(0)
    t, s = r.normal(size=(3, 4)).astype("float16"), r.normal(size=(3, 4)).astype("float16")
    got = LogitsMSE()([t], s)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"


def test_naming_layers_makes_a_term_read_features_not_logits():
    assert LogitsMSE().reads_logits is True
    assert LogitsMSE(teacher_layer="a").reads_logits is False
    assert LogitsMSE(student_layer="b").reads_logits is False
    assert LogitsMSE.reads_logits is True  # the class default is untouched


def test_call_by_keyword_builds_from_the_first_teacher():
    r = np.random.default_rng(1)
    t1, t2, s = (f32(r.normal(size=(2, 5))) for _ in range(3))
    term = LogitsMSE()
    got = term(teachers=[t1, t2], student=s, teacher_weights=[3.0, 1.0])
    expected = 0.75 * ((s - t1) ** 2).mean() + 0.25 * ((s - t2) ** 2).mean()
    assert float(numpy(got)) == pytest.approx(expected, rel=1e-5)
    assert term.get_build_config() == {"teacher_shape": [None, 5], "student_shape": [None, 5]}
    single = LogitsMSE()
    assert single.get_build_config() is None
    assert float(numpy(single(t1, s))) == pytest.approx(((s - t1) ** 2).mean(), rel=1e-5)


def test_build_from_config_restores_the_build_shapes():
    term = LogitsMSE()
    term.build_from_config({"teacher_shape": [None, 5], "student_shape": [None, 5]})
    assert term.built
    assert term.get_build_config() == {"teacher_shape": [None, 5], "student_shape": [None, 5]}
    unbuilt = LogitsMSE()
    unbuilt.build_from_config(None)
    assert not unbuilt.built


def test_teacher_weights_zero_for_one_teacher_is_allowed():
    t1, t2, s = f32([[1.0, 0.0]]), f32([[0.0, 5.0]]), f32([[0.0, 0.0]])
    assert float(numpy(LogitsMSE()([t1, t2], s, teacher_weights=[1.0, 0.0]))) == pytest.approx(0.5)


@pytest.mark.parametrize("weights", [[0.0, 0.0], [-1.0, 2.0], [1.0, 1.0, 1.0]])
def test_bad_teacher_weights_are_refused_with_the_values(weights):
    zeros = f32(np.zeros((2, 3)))
    with pytest.raises(ValueError) as info:
        LogitsMSE()([zeros, zeros], zeros, teacher_weights=weights)
    # Keras prefixes errors raised inside `call` with the layer's name.
    assert (
        "teacher_weights must be 2 non-negative numbers with a positive sum, got "
        f"{[float(w) for w in weights]}." in str(info.value)
    )


def test_base_compute_says_what_to_implement():
    with pytest.raises(NotImplementedError) as info:
        base.DistillationLoss().compute(None, None)
    assert str(info.value) == (
        "DistillationLoss must implement compute(teacher, student, labels=None, weights=None) "
        "and return a scalar."
    )


# ------------------------------------------------------------ soft target


def test_soft_target_with_a_zero_probability_target_is_finite_and_exact():
    teacher = f32([[0.0, -1e4, 1.0], [2.0, 0.0, -2.0]])  # softmax underflows to exactly 0
    student = f32([[0.5, 0.1, -0.3], [0.0, 1.0, 0.0]])
    t = 2.0
    expected = t**2 * np_kl(np_softmax(teacher / t), np_log_softmax(student / t)).mean()
    got = float(numpy(SoftTargetKD(t)([teacher], student)))
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-5)


def test_soft_target_per_teacher_temperatures_soften_each_teacher():
    r = np.random.default_rng(2)
    t1, t2, s = (f32(r.normal(size=(4, 5)) * 3) for _ in range(3))
    term = SoftTargetKD(4.0, teacher_temperatures=[1.0, 8.0])
    target = 0.25 * np_softmax(t1 / 1.0) + 0.75 * np_softmax(t2 / 8.0)
    expected = 16.0 * np_kl(target, np_log_softmax(s / 4.0)).mean()
    got = term([t1, t2], s, teacher_weights=[1.0, 3.0])
    assert float(numpy(got)) == pytest.approx(expected, rel=1e-5)
    assert term.get_config()["teacher_temperatures"] == [1.0, 8.0]
    np.testing.assert_allclose(
        numpy(term.teacher_distribution([t1, t2], [1.0, 3.0])), target, atol=1e-6
    )


def test_soft_target_temperature_config_is_the_initial_value():
    term = SoftTargetKD(3)
    assert isinstance(term._temperature_init, float)
    term.temperature.assign(1.5)
    assert term.get_config()["temperature"] == 3.0
    assert float(numpy(term.temperature)) == 1.5
    assert term.name == "soft_target" and LogitsMSE().name == "logits_mse"


def test_soft_target_errors_are_exact():
    with pytest.raises(ValueError) as info:
        SoftTargetKD(temperature=0.0)
    assert str(info.value) == (
        "SoftTargetKD: temperature must be > 0, got 0.0. Typical values are 1 to 8; 1 means "
        "no softening."
    )
    with pytest.raises(
        ValueError, match=r"^teacher_temperatures must all be > 0, got \[1\.0, 0\.0\]\.$"
    ):
        SoftTargetKD(teacher_temperatures=[1.0, 0.0])
    term = SoftTargetKD(teacher_temperatures=[1.0, 2.0])
    zeros = f32(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"(?<!\d)2 teacher_temperatures for 1 teachers\."):
        term([zeros], zeros)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DKD(temperature=float("nan"))


# --------------------------------------------------------------- registry


def test_registry_lookup_forms():
    assert type(losses.get("  Logits-MSE ")) is LogitsMSE
    assert type(losses.get("kd_keras>SoftTargetKD")) is SoftTargetKD
    assert type(losses.get("attentiontransfer")) is AttentionTransfer
    assert type(losses.get({"rkd": None})) is RKD
    config = losses.serialize(DKD(beta=2.0))
    assert config["class_name"] == "DKD"
    restored = losses.get({"class_name": "dkd", "config": None})
    assert type(restored) is DKD and restored.beta == 8.0


def test_registry_errors_are_exact():
    with pytest.raises(ValueError) as info:
        losses.get("fitnet")
    assert str(info.value) == (
        "Unknown distillation loss 'fitnet'; did you mean 'hint'? Known names: "
        "['attention_transfer', 'dkd', "
        "'hint', 'logits_mse', 'rkd', 'soft_target'] (class names such as 'SoftTargetKD' "
        "work too)."
    )
    for bad in (3, {"dkd": 2.0}, {"dkd": {}, "rkd": {}}):
        with pytest.raises(ValueError) as info:
            losses.get(bad)
        assert str(info.value) == (
            f"Cannot make a distillation loss from {bad!r}: give a name from "
            "['attention_transfer', 'dkd', 'hint', 'logits_mse', 'rkd', 'soft_target'], a "
            "mapping such as {'dkd': {'beta': 4.0}}, or a config written by "
            "kd_keras.losses.serialize."
        )


def test_registry_messages_for_a_class_name_match_and_for_no_match():
    known = (
        "Known names: ['attention_transfer', 'dkd', 'hint', 'logits_mse', 'rkd', "
        "'soft_target'] (class names such as 'SoftTargetKD' work too)."
    )
    with pytest.raises(ValueError) as info:
        losses.get("SoftTargetKDD")
    assert str(info.value) == (
        f"Unknown distillation loss 'SoftTargetKDD'; did you mean 'SoftTargetKD'? {known}"
    )
    with pytest.raises(ValueError) as info:
        losses.get("zzzz")
    assert str(info.value) == f"Unknown distillation loss 'zzzz'. {known}"


def test_registry_reads_a_keras_config_without_its_config_entry():
    restored = losses.get({"class_name": "DKD"})
    assert type(restored) is DKD and (restored.alpha, restored.beta) == (1.0, 8.0)


def test_get_terms_takes_a_bare_entry_terms_and_configs_as_they_are():
    (term,) = losses.get_terms("dkd")
    assert type(term) is DKD and term.beta == 8.0
    (term,) = losses.get_terms({"rkd": {"angle_weight": 0.5}})
    assert type(term) is RKD and (term.distance_weight, term.angle_weight) == (25.0, 0.5)
    given = DKD(beta=3.0)
    assert losses.get_terms(given)[0] is given
    (term,) = losses.get_terms([{"class_name": "DKD"}])
    assert type(term) is DKD and term.beta == 8.0
    (term,) = losses.get_terms([{"logits_mse": None}])
    assert type(term) is LogitsMSE


def test_get_terms_gives_the_temperature_only_to_terms_that_take_one():
    terms = losses.get_terms(
        [
            "rkd",
            "logits_mse",
            {"soft_target": None},
            {"dkd": {"temperature": 5.0}},
            DKD(temperature=7.0),
            losses.serialize(SoftTargetKD(temperature=6.0)),
        ],
        temperature=2.0,
    )
    assert [type(t) for t in terms] == [RKD, LogitsMSE, SoftTargetKD, DKD, DKD, SoftTargetKD]
    temperatures = [float(numpy(t.temperature)) for t in terms[2:]]
    assert temperatures == [2.0, 5.0, 7.0, 6.0]


def test_get_terms_unknown_argument_messages_are_exact():
    with pytest.raises(ValueError) as info:
        losses.get_terms([{"rkd": {"angle_wieght": 1.0}}])
    assert str(info.value) == (
        "RKD takes no argument 'angle_wieght'; did you mean 'angle_weight'? Its arguments: "
        "distance_weight, angle_weight, teacher_layer, student_layer, weight, name."
    )
    with pytest.raises(ValueError) as info:
        losses.get_terms(["logits_mse", {"soft_target": {"zzz": 1}}], temperature=2.0)
    assert str(info.value) == (
        "SoftTargetKD takes no argument 'zzz'. Its arguments: temperature, "
        "teacher_temperatures, weight, name, teacher_layer, student_layer."
    )
    with pytest.raises(ValueError, match=r"^Cannot make a distillation loss from \{'dkd': 2\}"):
        losses.get_terms([{"dkd": 2}])


# ------------------------------------------------------------------- hint


def test_hint_errors_are_exact():
    with pytest.raises(ValueError) as info:
        HintLoss(teacher_layer="a", student_layer="")
    assert str(info.value) == (
        "HintLoss compares intermediate features, so student_layer must name a layer (e.g. "
        "student_layer='block2', or 'backbone/block2' inside a nested model); got ''."
    )
    with pytest.raises(ValueError) as info:
        HintLoss(teacher_layer="a", student_layer="b", projection="conv")
    assert str(info.value) == (
        "HintLoss: projection must be one of ('auto', 'always', 'never'), got 'conv'. 'auto' "
        "adds a learned 1x1 regressor only when the channel widths differ."
    )
    with pytest.raises(ValueError) as info:
        HintLoss(teacher_layer="a", student_layer="b", projection="never").build(
            (None, 4, 8), (None, 4, 3)
        )
    assert str(info.value) == (
        "HintLoss: teacher width 8 != student width 3 with projection='never'. Use "
        "projection='auto' to learn a regressor between them."
    )
    with pytest.raises(ValueError) as info:
        HintLoss(teacher_layer="a", student_layer="b").build((None, 4, None), (None, 4, 3))
    assert str(info.value) == (
        "HintLoss: the channel axis must be known, got teacher shape (None, 4, None) and "
        "student shape (None, 4, 3)."
    )


def test_hint_projection_modes():
    same = HintLoss(teacher_layer="a", student_layer="b")
    same.build((None, 4, 3), (None, 4, 3))
    assert same.regressor is None
    always = HintLoss(teacher_layer="a", student_layer="b", projection="always")
    always.build((None, 4, 3), (None, 4, 3))
    assert always.regressor is not None and tuple(always.regressor.kernel.shape) == (3, 3)
    never = HintLoss(teacher_layer="a", student_layer="b", projection="never")
    never.build((None, 4, 3), (None, 4, 3))
    assert never.regressor is None
    x = f32(np.arange(24).reshape(2, 4, 3) / 10)
    y = f32(np.ones((2, 4, 3)))
    assert float(numpy(never([y], x))) == pytest.approx(((x - y) ** 2).mean(), rel=1e-6)


def test_soft_target_compute_is_the_single_teacher_weighted_loss():
    r = np.random.default_rng(4)
    t, s = f32(r.normal(size=(5, 3)) * 2), f32(r.normal(size=(5, 3)))
    w = f32([1.0, 0.0, 0.5, 2.0, 0.25])
    per = 9.0 * np_kl(np_softmax(t / 3.0), np_log_softmax(s / 3.0))
    got = SoftTargetKD(3.0).compute(t, s, labels=np.zeros(5, "int32"), weights=w)
    assert float(numpy(got)) == pytest.approx((per * w).sum() / w.sum(), rel=1e-5)


def test_temperature_is_a_frozen_float32_variable_named_temperature():
    for term in (SoftTargetKD(2.0), DKD(temperature=2.0)):
        variable = term.temperature
        assert variable.trainable is False
        assert variable.name == "temperature"
        assert keras.backend.standardize_dtype(variable.dtype) == "float32"
        assert not term.trainable_weights


def test_soft_target_accepts_a_bare_teacher_tensor():
    r = np.random.default_rng(5)
    t, s = f32(r.normal(size=(6, 4)) * 2), f32(r.normal(size=(6, 4)))
    expected = 4.0 * np_kl(np_softmax(t / 2.0), np_log_softmax(s / 2.0)).mean()
    assert float(numpy(SoftTargetKD(2.0)(t, s))) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(
        numpy(SoftTargetKD(2.0).teacher_distribution(t)), np_softmax(t / 2.0), atol=1e-6
    )


def test_weighted_mean_with_per_position_and_trailing_axis_weights():
    r = np.random.default_rng(6)
    values = f32(r.normal(size=(2, 3, 4)))
    weights = f32(r.uniform(0.1, 1.0, size=(2, 3)))
    expected = (values * weights[..., None]).sum() / (weights.sum() * 4)
    assert float(numpy(base.weighted_mean(values, weights))) == pytest.approx(expected, rel=1e-5)
    per_position = f32(r.normal(size=(2, 3)))
    got = base.weighted_mean(per_position, weights[..., None])  # (batch, time, 1)
    expected = (per_position * weights).sum() / weights.sum()
    assert float(numpy(got)) == pytest.approx(expected, rel=1e-5)
    assert tuple(base.squeeze_trailing_ones(ops.ones((3, 2, 1)), 2).shape) == (3, 2)


def test_positional_teachers_with_keyword_student():
    t, s = f32([[1.0, 2.0]]), f32([[0.0, 0.0]])
    assert float(numpy(LogitsMSE()([t], student=s))) == pytest.approx(2.5)


def test_build_config_with_an_unknown_side():
    term = LogitsMSE()
    term.build(None, (4, 3))
    assert term.get_build_config() == {"teacher_shape": None, "student_shape": [None, 3]}
    other = LogitsMSE()
    other.build((4, 5), None)
    assert other.get_build_config() == {"teacher_shape": [None, 5], "student_shape": None}


def test_weight_round_trips_through_the_config():
    restored = LogitsMSE.from_config(LogitsMSE(weight=0.3).get_config())
    assert restored.weight == pytest.approx(0.3)


# ------------------------------------------------- configs of every term


def test_non_default_arguments_survive_the_config():
    """Each term's own arguments, set away from their defaults, come back from
    its config (a dropped key would silently fall back to the default)."""
    r = np.random.default_rng(7)
    t, s = f32(r.normal(size=(4, 3, 3, 5))), f32(r.normal(size=(4, 3, 3, 5)))
    t_logits, s_logits = f32(r.normal(size=(4, 5)) * 2), f32(r.normal(size=(4, 5)))
    labels = np.array([0, 3, 1, 4])
    cases = [
        (DKD(alpha=0.5, beta=3.0, temperature=2.5), {"alpha": 0.5, "beta": 3.0}, True),
        (RKD(distance_weight=2.0, angle_weight=7.0), {"distance_weight": 2.0, "angle_weight": 7.0},
         False),
        (AttentionTransfer("t", "s", p=3.0, beta=10.0), {"p": 3.0, "beta": 10.0}, False),
        (HintLoss("t", "s", projection="never"), {"projection": "never"}, False),
    ]
    for term, arguments, logits in cases:
        restored = type(term).from_config(term.get_config())
        for name, value in arguments.items():
            assert getattr(restored, name) == value, (type(term).__name__, name)
        teacher, student = (t_logits, s_logits) if logits else (t, s)
        want = numpy(term([teacher], student, labels=labels))
        got = numpy(restored([teacher], student, labels=labels))
        assert float(got) == pytest.approx(float(want), rel=1e-6), type(term).__name__
    dkd = DKD.from_config(DKD(temperature=2.5).get_config())
    assert float(numpy(dkd.temperature)) == 2.5


# -------------------------------------------------------------------- DKD


def test_dkd_class_indices_of_every_label_form_and_clipping():
    from kd_keras.losses.dkd import class_indices

    logits = f32(np.zeros((4, 5)))
    # Out-of-range (padding) indices are clipped into [0, classes - 1].
    got = class_indices(np.array([-100, 2, 4, 9]), logits)
    assert numpy(got).astype(int).tolist() == [0, 2, 4, 4]
    assert keras.backend.standardize_dtype(got.dtype) == "int32"
    soft = f32([[0.1, 0.6, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.05, 0.05]] * 2)
    assert numpy(class_indices(soft, logits)).astype(int).tolist() == [1, 0, 1, 0]
    column = np.array([[3], [1], [0], [2]])
    assert numpy(class_indices(column, logits)).astype(int).tolist() == [3, 1, 0, 2]
    # Two classes: a one-hot (batch, 2) label is argmaxed, not mistaken for a shape error.
    two = f32(np.zeros((3, 2)))
    assert numpy(class_indices(f32(np.eye(2)[[1, 0, 1]]), two)).astype(int).tolist() == [1, 0, 1]
    # One class: a (batch, 1) label is a column of indices.
    one = f32(np.zeros((2, 1)))
    assert numpy(class_indices(np.array([[0], [0]]), one)).astype(int).tolist() == [0, 0]
    # Token logits (batch, time, classes) with time != classes: one-hot and
    # column labels reduce along the last axis only, a time of 1 stays.
    tokens = f32(np.zeros((2, 4, 3)))
    indices = np.array([[0, 2, 1, 1], [2, 2, 0, 1]])
    one_hot = f32(np.eye(3)[indices])
    assert numpy(class_indices(one_hot, tokens)).astype(int).tolist() == indices.tolist()
    assert numpy(class_indices(indices[..., None], tokens)).astype(int).tolist() == indices.tolist()
    single = class_indices(np.array([[[2]], [[1]]]), f32(np.zeros((2, 1, 5))))
    assert numpy(single).astype(int).tolist() == [[2], [1]]
    with pytest.raises(ValueError) as info:
        class_indices(np.zeros((2, 4, 3, 2)), tokens)
    assert str(info.value) == (
        "labels of shape (2, 4, 3, 2) do not fit logits of shape (2, 4, 3): pass class "
        "indices of shape (2, 4) (or one-hot labels of shape (2, 4, 3))."
    )


def test_dkd_two_classes_with_one_hot_labels_matches_mdistiller():
    from tests.test_losses import ref_dkd

    r = np.random.default_rng(8)
    teacher, student = r.normal(size=(6, 2)) * 2, r.normal(size=(6, 2))
    labels = r.integers(0, 2, size=6)
    got = numpy(DKD(alpha=1.5, beta=0.5, temperature=2.0)(
        [f32(teacher)], f32(student), labels=f32(np.eye(2)[labels])
    ))
    want = ref_dkd(teacher, student, labels, 1.5, 0.5, 2.0)
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_dkd_errors_are_exact():
    with pytest.raises(ValueError) as info:
        DKD().compute(f32(np.zeros((2, 3))), f32(np.zeros((2, 3))))
    assert str(info.value) == (
        "DKD needs the true class: call it with labels=... (the Distiller does this, using "
        "the teacher's argmax for unlabeled samples)."
    )
    with pytest.raises(ValueError) as info:
        DKD().compute(f32(np.zeros((2, 3))), f32(np.zeros((2, 3))), labels=np.zeros((2, 3, 1)))
    assert str(info.value) == (
        "labels of shape (2, 3, 1) do not fit logits of shape (2, 3): pass class indices "
        "of shape (2,) (or one-hot labels of shape (2, 3))."
    )


# ------------------------------------------- RKD, attention transfer, hint


def test_rkd_weights_of_shape_batch_1_equal_batch_and_others_are_refused():
    r = np.random.default_rng(9)
    t, s = f32(r.normal(size=(5, 4))), f32(r.normal(size=(5, 3)))
    w = f32([1.0, 0.5, 0.0, 2.0, 1.0])
    term = RKD(distance_weight=3.0, angle_weight=2.0)
    flat = float(numpy(term.compute(t, s, weights=w)))
    assert float(numpy(term.compute(t, s, weights=w[:, None]))) == pytest.approx(flat, rel=1e-6)
    with pytest.raises(ValueError) as info:
        term.compute(t, s, weights=f32(np.ones((5, 2))))
    assert str(info.value) == (
        "RKD relates whole samples, so weights must have shape (batch,), got (5, 2). "
        "Pool token features to one vector per sample first."
    )


def test_attention_transfer_rank_error_is_exact_for_either_side():
    term = AttentionTransfer(teacher_layer="t", student_layer="s")
    for teacher_shape, student_shape in (((2, 10), (2, 3, 3, 3)), ((2, 3, 3, 3), (2, 10))):
        with pytest.raises(ValueError) as info:
            term._check(teacher_shape, student_shape)
        assert str(info.value) == (
            "AttentionTransfer needs feature maps of shape (batch, H, W, C) or (batch, time, "
            f"dim); got teacher {teacher_shape} and student {student_shape}. Set "
            "teacher_layer and student_layer to convolutional layers."
        )
    term._check((2, 7, 3), (2, 7, 5))  # (batch, time, dim) is a feature map


def test_hint_projected_width_mismatch_error_is_exact():
    term = HintLoss(teacher_layer="t", student_layer="s")
    term.build((None, 4, 6), (None, 4, 3))
    with pytest.raises(ValueError) as info:
        term.compute(f32(np.zeros((2, 4, 5))), f32(np.zeros((2, 4, 3))))
    assert str(info.value) == (
        "HintLoss: teacher features of shape (2, 4, 5) do not match the projected "
        "student's (2, 4, 6). With several teachers of different widths, use one "
        "HintLoss per teacher."
    )


def test_hint_compute_checks_positions_itself_with_the_exact_message():
    """`compute` called directly (as a custom term's code may) re-checks the
    positions that `build` checked."""
    term = HintLoss(teacher_layer="t", student_layer="s")
    term.build((None, 4, 3), (None, 4, 3))
    with pytest.raises(ValueError) as info:
        term.compute(f32(np.zeros((2, 5, 3))), f32(np.zeros((2, 4, 3))))
    assert str(info.value) == (
        "HintLoss: teacher features of shape (2, 5, 3) and student features of shape "
        "(2, 4, 3) do not cover the same positions (all axes between batch and channels "
        "must match; channels may differ). Pick teacher_layer / student_layer at the same "
        "spatial resolution, or resize one map (e.g. pooling) in the model before the "
        "layer you name."
    )
    with pytest.raises(ValueError) as info:
        term.build((None, 5, 3), (None, 4, 3))
    assert str(info.value).startswith(
        "HintLoss: teacher features of shape (None, 5, 3) and student features of shape "
        "(None, 4, 3) do not cover"
    )


def test_hint_regressor_is_float32_under_mixed_precision_and_named():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        term = HintLoss(teacher_layer="t", student_layer="s")
        term.build((None, 4, 6), (None, 4, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    assert term.regressor.name == "regressor"
    assert term.regressor.compute_dtype == "float32"
    assert keras.backend.standardize_dtype(term.regressor.kernel.dtype) == "float32"
    assert term.get_build_config() == {"teacher_shape": [None, 4, 6], "student_shape": [None, 4, 3]}


def test_attention_transfer_position_mismatch_message_and_build_config():
    term = AttentionTransfer(teacher_layer="t", student_layer="s")
    with pytest.raises(ValueError) as info:
        term.build((None, 6, 6, 3), (None, 3, 3, 8))
    assert str(info.value).startswith(
        "AttentionTransfer: teacher features of shape (None, 6, 6, 3) and student features "
        "of shape (None, 3, 3, 8) do not cover the same positions"
    )
    term.build((None, 3, 3, 5), (None, 3, 3, 8))
    assert term.get_build_config() == {
        "teacher_shape": [None, 3, 3, 5], "student_shape": [None, 3, 3, 8]
    }


def test_attention_transfer_fractional_token_weights_mask_and_weigh():
    """A (batch, time) weight of 0.5 keeps the token in the map (it is > 0)
    and weighs its squared difference by 0.5 in the mean."""
    r = np.random.default_rng(10)
    t, s = r.normal(size=(2, 4, 3)), r.normal(size=(2, 4, 5))
    w = np.array([[1.0, 0.5, 0.0, 0.0], [0.5, 0.5, 1.0, 0.0]])

    def at_map(x, keep):
        m = (np.abs(x) ** 2).mean(-1) * keep
        return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)

    keep = (w > 0).astype(float)
    squared = (at_map(s, keep) - at_map(t, keep)) ** 2
    expected = 500.0 * (squared * w).sum() / w.sum()
    got = AttentionTransfer(teacher_layer="t", student_layer="s")([f32(t)], f32(s), weights=f32(w))
    assert float(numpy(got)) == pytest.approx(expected, rel=1e-5)


def np_rkd(teacher, student, distance_weight, angle_weight):
    """Park et al.'s RKD in float64 (unweighted): Huber (δ = 1) of the
    mean-normalized distances and of the triplet angles' cosines."""

    def huber(x):
        x = np.abs(x)
        return np.where(x < 1.0, 0.5 * x**2, x - 0.5)

    def psi_distance(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        return d / (d.sum() / (len(e) * (len(e) - 1)))

    def psi_angle(e):
        diff = e[None] - e[:, None]  # diff[i, j] = e_j - e_i
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        unit = np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), 0.0)
        return np.einsum("ijd,ikd->ijk", unit, unit)

    t = np.asarray(teacher, np.float64).reshape(len(teacher), -1)
    s = np.asarray(student, np.float64).reshape(len(student), -1)
    return distance_weight * huber(psi_distance(s) - psi_distance(t)).mean() + (
        angle_weight * huber(psi_angle(s) - psi_angle(t)).mean()
    )


def test_pairwise_distances_match_numpy_with_an_exact_zero_diagonal():
    """Off the origin, the expanded `|a|² + |b|² − 2ab` leaves a rounding
    residue on the diagonal, which must still come out as exactly 0."""
    e = np.random.default_rng(11).normal(size=(6, 5)) + 3.0
    got = numpy(pairwise_distances(f32(e)))
    expected = np.linalg.norm(e[:, None] - e[None], axis=-1)
    np.testing.assert_array_equal(np.diag(got), np.zeros(6))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("distance_weight", "angle_weight"), [(1.0, 0.5), (0.5, 0.25)])
def test_rkd_term_weights_below_one_match_numpy(distance_weight, angle_weight):
    r = np.random.default_rng(12)
    t, s = r.normal(size=(5, 6)), r.normal(size=(5, 3))
    got = RKD(distance_weight, angle_weight)([f32(t)], f32(s))
    expected = np_rkd(t, s, distance_weight, angle_weight)
    assert expected > 0 and float(numpy(got)) == pytest.approx(expected, rel=1e-5)


def test_rkd_under_float64_floatx_computes_in_float32_and_matches_numpy():
    """`keras.config.set_floatx("float64")` (a user's global setting) makes
    Keras' default dtype float64; RKD still computes in float32 throughout."""
    r = np.random.default_rng(13)
    t, s = r.normal(size=(5, 4)), r.normal(size=(5, 3))
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        got = RKD(2.0, 3.0).compute(t, s)
    finally:
        keras.config.set_floatx(previous)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert float(numpy(got)) == pytest.approx(np_rkd(t, s, 2.0, 3.0), rel=1e-5)
