"""Distiller behaviour: the loss it optimizes (against NumPy), fit/evaluate/
predict, data forms, frozen teacher, saving, and refusals of bad input."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import kd_keras
from kd_keras.losses import DistillationLoss, SoftTargetKD
from tiny import NUM_CLASSES, conv, data, images, mlp, np_soft_target, np_sparse_ce

TF = keras.backend.backend() == "tensorflow"


def numpy_of(x):
    return ops.convert_to_numpy(x)


def make(alpha=0.3, temperature=2.0, **kwargs):
    teacher = mlp(32, name="teacher", seed=1)
    student = mlp(8, name="student", seed=2)
    distiller = kd_keras.Distiller(
        student, teacher, losses=[SoftTargetKD(temperature)], alpha=alpha, **kwargs
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    return distiller


def loss_value(distiller, x, y, sample_weight=None):
    y_pred = distiller(x, training=False)
    return float(numpy_of(distiller.compute_loss(x, y, y_pred, sample_weight, training=False)))


def test_loss_matches_numpy_reference():
    x, y = data(32)
    distiller = make(alpha=0.3, temperature=2.0)
    t = numpy_of(distiller.teacher(x))
    s = numpy_of(distiller.student(x))
    expected = 0.3 * np_sparse_ce(y, s).mean() + 0.7 * np_soft_target(t, s, 2.0)
    np.testing.assert_allclose(loss_value(distiller, x, y), expected, rtol=1e-5, atol=1e-5)


def test_sample_weight_weights_both_terms():
    x, y = data(32)
    w = np.linspace(0.0, 2.0, 32).astype("float32")
    distiller = make(alpha=0.5, temperature=3.0)
    t, s = numpy_of(distiller.teacher(x)), numpy_of(distiller.student(x))
    ce = (np_sparse_ce(y, s) * w).sum() / w.sum()
    expected = 0.5 * ce + 0.5 * np_soft_target(t, s, 3.0, w)
    np.testing.assert_allclose(loss_value(distiller, x, y, w), expected, rtol=1e-5, atol=1e-5)


def test_fit_logs_every_term_and_predict_returns_student_outputs():
    x, y = data(64)
    distiller = make()
    history = distiller.fit(
        x, y, epochs=2, batch_size=16, verbose=0, validation_data=data(16, seed=3)
    )
    for key in ("loss", "student_loss", "soft_target_loss", "accuracy", "val_soft_target_loss"):
        assert key in history.history and len(history.history[key]) == 2
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), numpy_of(distiller.student(x)), rtol=1e-5, atol=1e-5
    )
    result = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) >= {"loss", "student_loss", "soft_target_loss", "accuracy"}


def test_distillation_reduces_the_distillation_term():
    x, y = data(128)
    distiller = make(alpha=0.0, temperature=2.0)
    before = loss_value(distiller, x, y)
    distiller.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert loss_value(distiller, x, y) < 0.5 * before


def test_teacher_weights_and_batchnorm_statistics_never_change():
    teacher, student = conv(8, name="teacher", seed=1), conv(2, name="student", seed=2)
    before = [w.copy() for w in teacher.get_weights()]
    distiller = kd_keras.Distiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = images(32)
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert teacher.trainable is False
    assert not any(id(v) in {id(w) for w in teacher.weights} for v in distiller.trainable_variables)


@pytest.mark.skipif(not TF, reason="tf.data input pipeline")
def test_tf_data_input_with_sample_weights():
    import tensorflow as tf

    x, y = data(64)
    w = np.ones(64, "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)
    history = make().fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_cached_logits_give_the_same_loss_as_the_online_teacher():
    x, y = data(32)
    distiller = make(alpha=0.2, temperature=3.0)
    logits = kd_keras.cache_teacher_outputs(distiller.teacher, x, verbose=0)
    np.testing.assert_allclose(logits, numpy_of(distiller.teacher(x)), rtol=1e-5, atol=1e-5)
    offline = kd_keras.Distiller(distiller.student, None, losses=[SoftTargetKD(3.0)], alpha=0.2)
    offline.compile(optimizer="adam")
    online_loss = loss_value(distiller, x, y)
    offline_loss = loss_value(offline, x, {"labels": y, "teacher_logits": logits})
    np.testing.assert_allclose(offline_loss, online_loss, rtol=1e-5, atol=1e-6)
    offline.fit(x, {"labels": y, "teacher_logits": logits}, epochs=1, batch_size=8, verbose=0)


def test_cached_step_never_calls_the_teacher():
    x, y = data(32)
    distiller = make()
    logits = kd_keras.cache_teacher_outputs(distiller.teacher, x, verbose=0)
    calls = []
    original = distiller.teacher.call
    object.__setattr__(
        distiller.teacher, "call", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    try:
        distiller.fit(x, {"labels": y, "teacher_logits": logits}, epochs=1, batch_size=8, verbose=0)
    finally:
        object.__delattr__(distiller.teacher, "call")
    assert calls == []


def test_teacher_ending_in_softmax_is_used_through_log_probabilities():
    x, y = data(32)
    logits_teacher = mlp(32, name="teacher", seed=1)
    prob_teacher = keras.Sequential([logits_teacher, keras.layers.Softmax()], name="prob_teacher")
    student = mlp(8, name="student", seed=2)
    a = kd_keras.Distiller(student, logits_teacher, losses=[SoftTargetKD(2.0)])
    b = kd_keras.Distiller(student, prob_teacher, losses=[SoftTargetKD(2.0, name="kd")])
    for d in (a, b):
        d.compile(optimizer="adam")
    np.testing.assert_allclose(loss_value(a, x, y), loss_value(b, x, y), rtol=1e-4)


def test_student_ending_in_softmax_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="ends in a softmax.*Remove the final"):
        kd_keras.Distiller(mlp(8, activation="softmax", name="s"), mlp(16, name="t"))


def test_subclassed_student_returning_probabilities_is_refused_before_training():
    @keras.saving.register_keras_serializable(package="kd_keras_tests")
    class SoftmaxInside(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(NUM_CLASSES)

        def call(self, x):
            return ops.softmax(self.dense(x))

    x, y = data(16)
    distiller = kd_keras.Distiller(SoftmaxInside(name="soft"), mlp(16, name="t"))
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match="outputs probabilities.*Remove the softmax"):
        distiller.fit(x, y, verbose=0)


def test_class_count_mismatch_is_refused():
    with pytest.raises(ValueError, match="predicts 5 classes but the student .* predicts 4"):
        kd_keras.Distiller(mlp(8, name="s"), mlp(16, classes=5, name="t"))


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"), alpha=alpha)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SoftTargetKD(temperature)


def test_unknown_hint_layer_lists_the_layers_that_exist():
    class Hint(DistillationLoss):
        def compute(self, teacher, student, labels=None, weights=None):
            return ops.mean(ops.square(teacher - student))

    with pytest.raises(ValueError, match=r"'nope' not found.*\['hidden', 'logits', 'x'\]"):
        kd_keras.Distiller(
            mlp(8, name="s"),
            mlp(16, name="t"),
            losses=[Hint(teacher_layer="hidden", student_layer="nope")],
        )


def test_labels_out_of_range_fail_before_the_first_step():
    x, y = data(32)
    distiller = make()
    before = [w.copy() for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match=r"labels range over \[\d, 7\].*valid labels 0..3"):
        distiller.fit(x, np.where(y == 0, 7, y), epochs=1, verbose=0)
    for a, b in zip(before, distiller.student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_probabilities_cached_as_logits_are_refused():
    x, y = data(32)
    probs = np.full((32, NUM_CLASSES), 1.0 / NUM_CLASSES, "float32")
    offline = kd_keras.Distiller(mlp(8, name="s"), None)
    offline.compile(optimizer="adam")
    with pytest.raises(ValueError, match="look like probabilities"):
        offline.fit(x, {"labels": y, "teacher_logits": probs}, verbose=0)


def test_nan_inputs_are_refused():
    x, y = data(32)
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf .first at sample 5"):
        make().fit(x, y, verbose=0)


def test_nan_term_stops_training_and_is_named():
    class Exploding(DistillationLoss):
        def compute(self, teacher, student, labels=None, weights=None):
            return ops.log(ops.mean(student) * 0.0 - 1.0)  # log of a negative: NaN

    x, y = data(64)
    distiller = kd_keras.Distiller(
        mlp(8, name="s"), mlp(16, name="t"), losses=[SoftTargetKD(2.0), Exploding(name="exploding")]
    )
    distiller.compile(optimizer="adam")
    with pytest.warns(RuntimeWarning, match="exploding_loss became NaN"):
        history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert len(history.history["loss"]) == 1  # stopped in the first epoch


def test_no_teacher_and_no_cache_is_refused():
    x, y = data(16)
    offline = kd_keras.Distiller(mlp(8, name="s"), None)
    offline.compile(optimizer="adam")
    with pytest.raises(ValueError, match="no teacher, so y must be a dict with 'teacher_logits'"):
        offline.fit(x, y, verbose=0)


def test_unknown_target_key_is_refused():
    x, y = data(16)
    with pytest.raises(ValueError, match=r"Unknown target keys \['label'\]"):
        make().fit(x, {"label": y}, verbose=0)


def test_student_saves_alone_and_distiller_round_trips_in_safe_mode(tmp_path):
    x, y = data(32)
    distiller = make()
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    student_path = os.path.join(tmp_path, "student.keras")
    distiller.student.save(student_path)
    student = keras.saving.load_model(student_path, safe_mode=True)
    assert {w.path.split("/")[0] for w in student.weights} <= {"hidden", "logits"}
    np.testing.assert_allclose(
        student.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6
    )

    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, kd_keras.Distiller)
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), distiller.predict(x, verbose=0), atol=1e-6
    )
    np.testing.assert_allclose(loss_value(restored, x, y), loss_value(distiller, x, y), rtol=1e-5)
    restored.fit(x, y, epochs=1, batch_size=8, verbose=0)  # and it trains on


def test_multi_teacher_target_is_the_weighted_mean_of_softened_distributions():
    x, y = data(32)
    t1, t2 = mlp(16, name="t1", seed=1), mlp(24, name="t2", seed=3)
    student = mlp(8, name="s", seed=2)
    term = SoftTargetKD(2.0, teacher_temperatures=[1.0, 4.0])
    distiller = kd_keras.Distiller(
        student, [t1, t2], losses=[term], alpha=0.0, teacher_weights=[3.0, 1.0]
    )
    distiller.compile(optimizer="adam")
    from tiny import softmax

    z1, z2, s = (numpy_of(m(x)) for m in (t1, t2, student))
    target = 0.75 * softmax(z1 / 1.0) + 0.25 * softmax(z2 / 4.0)
    expected = 4.0 * (target * (np.log(target) - np.log(softmax(s / 2.0)))).sum(-1).mean()
    np.testing.assert_allclose(loss_value(distiller, x, y), expected, rtol=1e-5, atol=1e-6)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)


def test_unlabeled_batches_train_on_distillation_alone():
    x, y = data(32)
    distiller = make(alpha=0.4, temperature=2.0)
    t, s = numpy_of(distiller.teacher(x)), numpy_of(distiller.student(x))
    np.testing.assert_allclose(
        loss_value(distiller, x, None), 0.6 * np_soft_target(t, s, 2.0), rtol=1e-5
    )
    history = distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    assert history.history["student_loss"][0] == 0.0


def test_label_mask_ignores_the_labels_of_unlabeled_samples():
    x, y = data(32)
    mask = (np.arange(32) % 4 == 0).astype("float32")
    garbage = np.where(mask > 0, y, 3).astype("int32")  # wrong labels where unlabeled
    distiller = make(alpha=0.5, temperature=2.0)
    t, s = numpy_of(distiller.teacher(x)), numpy_of(distiller.student(x))
    ce = np_sparse_ce(y, s)[mask > 0].mean()
    expected = 0.5 * ce + 0.5 * np_soft_target(t, s, 2.0)
    got = loss_value(distiller, x, {"labels": garbage, "label_mask": mask})
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    distiller.fit(x, {"labels": garbage, "label_mask": mask}, epochs=1, batch_size=8, verbose=0)


def token_model(name, units, seed, vocab=11, time=5):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((time,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(vocab, units, name="embed")(inputs)
    h = keras.layers.Dense(units, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="logits")(h), name=name)


def test_token_level_kd_padded_positions_contribute_exactly_nothing():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 11, (8, 5)).astype("int32")
    labels = rng.integers(0, NUM_CLASSES, (8, 5)).astype("int32")
    lengths = np.array([5, 3, 1, 4, 2, 5, 3, 2])
    padding = (np.arange(5)[None] < lengths[:, None]).astype("float32")
    teacher, student = token_model("t", 16, 1), token_model("s", 4, 2)
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0)], alpha=0.5)
    distiller.compile(optimizer="adam")
    target = {"labels": labels, "padding_mask": padding}
    t, s = numpy_of(teacher(tokens)), numpy_of(student(tokens))
    keep = padding > 0
    expected = 0.5 * np_sparse_ce(labels[keep], s[keep]).mean() + 0.5 * np_soft_target(
        t[keep], s[keep], 2.0
    )
    np.testing.assert_allclose(loss_value(distiller, tokens, target), expected, rtol=1e-5)
    # Changing what sits at padded positions (tokens and labels) changes nothing.
    tokens2 = np.where(keep, tokens, 7).astype("int32")
    labels2 = np.where(keep, labels, 2).astype("int32")
    target2 = {"labels": labels2, "padding_mask": padding}
    np.testing.assert_allclose(loss_value(distiller, tokens2, target2), expected, rtol=1e-5)
    distiller.fit(tokens, target, epochs=1, batch_size=4, verbose=0)


def test_hint_on_a_layer_inside_a_nested_model():
    class Hint(DistillationLoss):
        def compute(self, teacher, student, labels=None, weights=None):
            return ops.mean(ops.square(ops.mean(teacher, -1) - ops.mean(student, -1)))

    inner = conv(4, name="backbone", seed=2)
    student = keras.Sequential([inner], name="wrapped")
    student.build((None, 8, 8, 1))
    distiller = kd_keras.Distiller(
        student,
        conv(8, name="teacher", seed=1),
        losses=[
            SoftTargetKD(2.0),
            Hint(teacher_layer="block1", student_layer="backbone/block1", name="hint"),
        ],
    )
    distiller.compile(optimizer="adam")
    x, y = images(16)
    history = distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert history.history["hint_loss"][0] > 0


def test_subclassed_student():
    @keras.saving.register_keras_serializable(package="kd_keras_tests")
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
            self.out = keras.layers.Dense(NUM_CLASSES, name="logits")

        def call(self, x):
            return self.out(self.hidden(x))

    x, y = data(32)
    student = Sub(name="sub")
    distiller = kd_keras.Distiller(student, mlp(16, name="t"))
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_mixed_precision_keeps_the_loss_in_float32():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        x, y = data(32)
        distiller = make()
        assert distiller.distillation_terms[0].compute_dtype == "float32"
        history = distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.config.set_dtype_policy(policy)
