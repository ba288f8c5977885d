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
from kd_keras.losses import DKD, DistillationLoss, LogitsMSE, SoftTargetKD, weighted_mean
from tiny import data, mlp, np_soft_target, np_sparse_ce, softmax


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


# -- the whole loss at once, against NumPy ------------------------------------------


class TrueClassLogit(DistillationLoss):
    """A label-reading term with a NumPy-checkable value: the weighted mean of
    the student's logit at the class the Distiller hands it."""

    needs_labels = True

    def compute(self, teacher, student, labels=None, weights=None):
        index = ops.expand_dims(ops.cast(labels, "int32"), -1)
        return weighted_mean(ops.take_along_axis(student, index, axis=-1)[..., 0], weights)


class MeanFeatureGap(DistillationLoss):
    """A feature term: squared gap of the features' channel means."""

    def compute(self, teacher, student, labels=None, weights=None):
        return ops.mean(ops.square(ops.mean(teacher, -1) - ops.mean(student, -1)))


L2 = 0.01


def regularized_student(seed=3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(4, kernel_regularizer=keras.regularizers.L2(L2), name="logits")
    return keras.Model(inputs, logits(h), name="s")


def reset(distiller):
    for metric in distiller.metrics:
        metric.reset_state()


def tracked(distiller):
    """`(student_loss, [each term's value], invalid-batch flag)` as tracked."""
    return (
        float(np_(distiller.student_loss_tracker.result())),
        [float(np_(t.result())) for t in distiller.term_trackers],
        float(np_(distiller.invalid_batch_tracker.result())),
    )


def full_distiller():
    a, b = mlp(16, name="a", seed=1), mlp(12, name="b", seed=2)
    terms = [
        SoftTargetKD(2.0, weight=0.7),
        LogitsMSE(weight=1.5),
        TrueClassLogit(weight=0.5, name="true_class"),
    ]
    distiller = kd_keras.Distiller(
        regularized_student(), [a, b], losses=terms, alpha=0.3, teacher_weights=[3.0, 1.0]
    )
    distiller.compile(optimizer="sgd")
    return distiller, a, b


def full_reference(distiller, a, b, x, labels, sample_weight, label_mask):
    """Every part of the loss of `full_distiller` in float64 NumPy."""
    s = np_(distiller.student(x)).astype("float64")
    za, zb = np_(a(x)).astype("float64"), np_(b(x)).astype("float64")
    w, m = sample_weight.astype("float64"), label_mask.astype("float64")
    student_loss = (np_sparse_ce(labels, s) * w * m).sum() / (w * m).sum()
    target = 0.75 * softmax(za / 2.0) + 0.25 * softmax(zb / 2.0)
    kl = (target * (np.log(target) - np.log(softmax(s / 2.0)))).sum(-1)
    soft = 4.0 * (kl * w).sum() / w.sum()
    mse = sum(
        share * (((s - z) ** 2).mean(-1) * w).sum() / w.sum()
        for share, z in ((0.75, za), (0.25, zb))
    )
    top1 = (softmax(za) + softmax(zb)).argmax(-1)  # ensemble labels are unweighted
    term_labels = np.where(m > 0, labels, top1)
    true_class = (s[np.arange(len(s)), term_labels] * w).sum() / w.sum()
    kernel = np_(distiller.student.get_layer("logits").kernel).astype("float64")
    regularizer = L2 * (kernel**2).sum()
    total = 0.3 * student_loss + 0.7 * (0.7 * soft + 1.5 * mse + 0.5 * true_class) + regularizer
    return total, student_loss, [soft, mse, true_class]


@pytest.mark.parametrize("training", [False, True])
def test_loss_weighs_samples_masks_labels_mixes_teachers_and_terms_and_adds_regularizers(
    training,
):
    x, y = data(16)
    w = np.linspace(0.2, 2.0, 16).astype("float32")
    mask = (np.arange(16) % 3 != 1).astype("float32")
    given = np.where(mask > 0, y, (y + 1) % 4).astype("int32")  # wrong where unlabeled
    distiller, a, b = full_distiller()
    total, student_loss, terms = full_reference(distiller, a, b, x, y, w, mask)
    target = {"labels": given, "label_mask": mask}
    reset(distiller)
    got = distiller.compute_loss(x, target, distiller(x), sample_weight=w, training=training)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    assert float(np_(got)) == pytest.approx(total, rel=1e-5)
    got_student, got_terms, invalid = tracked(distiller)
    assert got_student == pytest.approx(student_loss, rel=1e-5)
    np.testing.assert_allclose(got_terms, terms, rtol=1e-5)
    assert invalid == 0.0


@pytest.mark.parametrize("training", [True, False])
def test_unlabeled_samples_may_hold_any_label(training):
    # Evaluation too: validation data padded with -100 reaches TensorFlow's
    # sparse cross-entropy, which refuses a negative class.
    x, y = data(16)
    w = np.ones(16, "float32")
    mask = (np.arange(16) % 3 != 1).astype("float32")
    distiller, a, b = full_distiller()
    total, _, _ = full_reference(distiller, a, b, x, y, w, mask)
    target = {"labels": np.where(mask > 0, y, -100).astype("int32"), "label_mask": mask}
    reset(distiller)
    got = distiller.compute_loss(x, target, distiller(x), training=training)
    assert float(np_(got)) == pytest.approx(total, rel=1e-5)
    assert tracked(distiller)[2] == 0.0


@pytest.mark.parametrize("bad", ["out of range", "nan"])
def test_a_training_batch_with_a_bad_label_is_zeroed_and_flagged(bad):
    x, y = data(8)
    labels = y.astype("float32") if bad == "nan" else y.copy()
    labels[5] = np.nan if bad == "nan" else 9
    distiller = kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"), alpha=0.5)
    for call in (
        lambda: distiller.compute_loss(x, labels, distiller(x), training=True),
        # Keras's own default: `compute_loss` is a training step's unless told.
        lambda: distiller.compute_loss(x, labels, distiller(x)),
    ):
        reset(distiller)
        assert float(np_(call())) == 0.0
        assert tracked(distiller)[2] == 2.0  # the labels' code of the guard
    # The same batch with valid labels is not zeroed.
    reset(distiller)
    assert float(np_(distiller.compute_loss(x, y, distiller(x), training=True))) > 0.1
    assert tracked(distiller)[2] == 0.0


def test_unlabeled_training_step_is_distillation_alone():
    x, _ = data(8)
    teacher, student = mlp(16, name="t", seed=1), mlp(8, name="s", seed=2)
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0)], alpha=0.4)
    expected = 0.6 * np_soft_target(np_(teacher(x)), np_(student(x)), 2.0)
    for training in (True, False):
        reset(distiller)
        got = distiller.compute_loss(x, None, distiller(x), training=training)
        assert float(np_(got)) == pytest.approx(expected, rel=1e-5)
        assert tracked(distiller)[:2] == (0.0, [pytest.approx(expected / 0.6, rel=1e-5)])


# -- bad batches later in a stream ---------------------------------------------------


class Batches(keras.utils.PyDataset):
    """Fixed batches in order: `fit` can check only the first one up front."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


class WeightsAfterEachBatch(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.student, self.seen = model, []

    def on_train_batch_end(self, batch, logs=None):
        self.model  # noqa: B018 - on JAX, reading `model` syncs the step's state back
        self.seen.append([np_(w).copy() for w in self.student.weights])


@pytest.mark.parametrize(
    "problem, message",
    [
        ("inputs", "its inputs contain NaN or inf"),
        ("labels", "its labels are out of range (valid: 0..classes-1) or not finite"),
        (
            "both",
            "its inputs contain NaN or inf and its labels are out of range "
            "(valid: 0..classes-1) or not finite",
        ),
    ],
)
def test_a_bad_later_batch_teaches_nothing_and_stops_fit_naming_the_problem(problem, message):
    x, y = data(16)
    bad_x, bad_y = x[8:].copy(), y[8:].copy()
    if problem in ("inputs", "both"):
        bad_x[3, 2] = np.nan
    if problem in ("labels", "both"):
        bad_y[6] = 4
    student = mlp(8, name="s", seed=2)
    initial = [np_(w).copy() for w in student.weights]
    distiller = kd_keras.Distiller(student, mlp(16, name="t", seed=1), alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    recorder = WeightsAfterEachBatch(student)
    with pytest.raises(ValueError) as info:
        distiller.fit(
            Batches([(x[:8], y[:8]), (bad_x, bad_y)]),
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[recorder],
        )
    assert str(info.value).startswith(f"Batch 1 of epoch 0: {message}. Training stopped")
    (after_good,) = recorder.seen  # the guard raised before the callback saw batch 1
    assert not np.allclose(after_good[0], initial[0])  # the good batch taught
    for good, now in zip(after_good, student.weights):  # the bad one did not
        np.testing.assert_array_equal(good, np_(now))


# -- padding masks given with the inputs ------------------------------------------


TIME = 5


def dict_token_model(name, units, seed, pooled=False):
    """Takes `{"tokens", "padding_mask"}` like a keras-hub model; outputs
    per-token logits, or one row per sequence when `pooled`."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((TIME,), dtype="int32", name="tokens")
    padding = keras.Input((TIME,), dtype="int32", name="padding_mask")
    h = keras.layers.Embedding(11, units, name="embed")(tokens)
    h = keras.layers.Dense(units, activation="relu", name="hidden")(h)
    h = h * ops.expand_dims(ops.cast(padding, "float32"), -1)
    if pooled:
        h = keras.layers.Flatten()(h)
    logits = keras.layers.Dense(4, name="logits")(h)
    return keras.Model({"tokens": tokens, "padding_mask": padding}, logits, name=name)


def token_batch():
    rng = np.random.default_rng(0)
    lengths = np.array([5, 3, 1, 4, 2, 5])
    padding = (np.arange(TIME)[None] < lengths[:, None]).astype("int32")
    x = {"tokens": rng.integers(1, 11, (6, TIME)).astype("int32"), "padding_mask": padding}
    return x, rng.integers(0, 4, (6, TIME)).astype("int32"), padding


def test_padding_mask_of_the_inputs_weighs_token_level_terms_unless_the_target_has_one():
    x, labels, padding = token_batch()
    teacher, student = dict_token_model("t", 16, 1), dict_token_model("s", 6, 2)
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0)], alpha=0.5)
    t, s = np_(teacher(x)), np_(student(x))

    def expected(keep):
        return 0.5 * np_sparse_ce(labels[keep], s[keep]).mean() + 0.5 * np_soft_target(
            t[keep], s[keep], 2.0
        )

    def loss(target, training=False):
        return float(np_(distiller.compute_loss(x, target, distiller(x), training=training)))

    assert loss(labels) == pytest.approx(expected(padding > 0), rel=1e-5)
    # Padded positions may hold any label (-100 is the usual padding label).
    padded_labels = np.where(padding > 0, labels, -100).astype("int32")
    reset(distiller)
    assert loss(padded_labels, training=True) == pytest.approx(expected(padding > 0), rel=1e-5)
    assert tracked(distiller)[2] == 0.0
    # A padding_mask in the target wins over the inputs' one.
    shorter = padding.copy()
    shorter[:, 0] = 0
    target = {"labels": labels, "padding_mask": shorter}
    assert loss(target) == pytest.approx(expected(shorter > 0), rel=1e-5)


def test_padding_mask_input_of_a_sequence_classifier_weighs_nothing():
    x, token_labels, _ = token_batch()
    labels = token_labels[:, 0]
    teacher = dict_token_model("t", 16, 1, pooled=True)
    student = dict_token_model("s", 6, 2, pooled=True)
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0)], alpha=0.5)
    t, s = np_(teacher(x)), np_(student(x))
    expected = 0.5 * np_sparse_ce(labels, s).mean() + 0.5 * np_soft_target(t, s, 2.0)
    got = distiller.compute_loss(x, labels, distiller(x), training=False)
    assert float(np_(got)) == pytest.approx(expected, rel=1e-5)


# -- the teacher's forward pass -----------------------------------------------------


class DropoutByDefault(keras.Model):
    """A teacher whose `call` defaults to training mode: only an explicit
    `training=False` turns its Dropout off."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.dropout = keras.layers.Dropout(0.5)
        self.logits = keras.layers.Dense(4)

    def call(self, x, training=True):
        return self.logits(self.dropout(self.hidden(x), training=training))


def test_teacher_runs_in_inference_mode_even_when_its_call_defaults_to_training():
    x, y = data(16)
    teacher = DropoutByDefault(name="teacher")
    distiller = kd_keras.Distiller(mlp(8, name="s"), teacher, losses=[SoftTargetKD(2.0)], alpha=0)
    expected = np_(teacher(x, training=False))
    assert not np.allclose(np_(teacher(x)), expected)  # its default does drop units
    (logits,), _ = distiller.teacher_forward(x)
    np.testing.assert_array_equal(np_(logits), expected)
    s = np_(distiller.student(x))
    got = distiller.compute_loss(x, y, distiller(x), training=False)
    assert float(np_(got)) == pytest.approx(np_soft_target(expected, s, 2.0), rel=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch autograd")
def test_torch_teacher_runs_without_autograd():
    import torch

    class GradModeProbe(keras.layers.Layer):
        def call(self, x):
            seen.append(torch.is_grad_enabled())
            return x

    seen = []
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(4)(GradModeProbe()(h)), name="t")
    distiller = kd_keras.Distiller(mlp(8, name="s"), teacher)
    seen.clear()
    with torch.enable_grad():
        (logits,), _ = distiller.teacher_forward(data(4)[0])
    # No graph is kept for the teacher: its activations are freed at once.
    assert seen == [False]
    assert not logits.requires_grad


def test_the_named_output_of_a_teacher_with_several_heads_is_distilled():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inputs)
    aux = keras.layers.Dense(4, name="aux")(h)
    main = keras.layers.Dense(4, name="main")(h)
    teacher = keras.Model(inputs, [aux, main], name="two_heads")
    x, _ = data(8)
    for choice in ("main", 1):
        distiller = kd_keras.Distiller(mlp(8, name="s"), teacher, teacher_output=choice)
        (logits,), _ = distiller.teacher_forward(x)
        np.testing.assert_allclose(np_(logits), np_(teacher(x)[1]), rtol=1e-6)


def hidden_of(model, x):
    sub = keras.Model(model.input, model.get_layer("hidden").output)
    return np_(sub(x))


def test_feature_terms_read_the_layers_they_name_also_beside_cached_logits():
    x, y = data(16)
    teacher, student = mlp(16, name="t", seed=1), mlp(8, name="s", seed=2)
    gap = MeanFeatureGap(teacher_layer="hidden", student_layer="hidden", name="gap", weight=2.0)
    distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0), gap], alpha=0.25)
    t, s = np_(teacher(x)), np_(student(x))
    ht, hs = hidden_of(teacher, x), hidden_of(student, x)
    expected = 0.25 * np_sparse_ce(y, s).mean() + 0.75 * (
        np_soft_target(t, s, 2.0) + 2.0 * ((ht.mean(-1) - hs.mean(-1)) ** 2).mean()
    )
    (_,), (features,) = distiller.teacher_forward(x)
    np.testing.assert_allclose(np_(features["hidden"]), ht, rtol=1e-5, atol=1e-6)
    # Cached logits do not hold the features: the teacher still runs.
    for target in (y, {"labels": y, "teacher_logits": t}):
        got = distiller.compute_loss(x, target, distiller(x), training=False)
        assert float(np_(got)) == pytest.approx(expected, rel=1e-5)


def test_missing_teacher_errors_of_the_loss_are_exact():
    x, y = data(4)
    offline = kd_keras.Distiller(mlp(8, name="s"), None)
    with pytest.raises(ValueError) as info:
        offline.compute_loss(x, y, offline(x), training=False)
    assert str(info.value).startswith("This Distiller has no teacher, so every batch must")
    gap = MeanFeatureGap(teacher_layer="hidden", student_layer="hidden", name="gap")
    features_only = kd_keras.Distiller(mlp(8, name="s2"), None, losses=[SoftTargetKD(2.0), gap])
    target = {"labels": y, "teacher_logits": np.zeros((4, 4), "float32")}
    with pytest.raises(ValueError) as info:
        features_only.compute_loss(x, target, features_only(x), training=False)
    assert str(info.value) == (
        "Feature terms (teacher_layer=...) need the teacher model: cached "
        "teacher_logits hold only the logits."
    )


def test_term_labels_of_token_logits_one_hot_labels_and_a_single_teacher():
    rng = np.random.default_rng(4)
    # Teachers of different confidence per position: normalising over any
    # axis but the classes' changes the ensemble's top-1.
    za = rng.normal(size=(3, TIME, 4)) * rng.uniform(0.2, 6.0, (3, TIME, 1))
    zb = rng.normal(size=(3, TIME, 4)) * rng.uniform(0.2, 6.0, (3, TIME, 1))
    distiller = dkd_distiller([mlp(16, name="a", seed=1), mlp(16, name="b", seed=2)])
    logits = [ops.convert_to_tensor(z.astype("float32")) for z in (za, zb)]
    top1 = (softmax(za) + softmax(zb)).argmax(-1)
    got = distiller._labels_for_terms(None, None, logits)
    assert keras.backend.standardize_dtype(got.dtype) == "int32"
    np.testing.assert_array_equal(np_(got), top1)
    labels = rng.integers(0, 4, (3, TIME))
    one_hot = np.eye(4, dtype="float32")[labels]
    np.testing.assert_array_equal(np_(distiller._labels_for_terms(one_hot, None, logits)), labels)
    single = dkd_distiller(mlp(16, name="c", seed=1))
    x, y = data(6)
    t = [ops.convert_to_tensor(za[:, 0].astype("float32"))]
    np.testing.assert_array_equal(np_(single._labels_for_terms(None, None, t)), za[:, 0].argmax(-1))
    got = single._labels_for_terms(np.eye(4, dtype="float32")[y[:3]], None, t)
    np.testing.assert_array_equal(np_(got), y[:3])
    assert keras.backend.standardize_dtype(got.dtype) == "int32"


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # JAX without x64
def test_loss_and_teacher_logits_stay_float32_under_float64_floatx():
    keras.config.set_floatx("float64")
    try:
        x, y = data(8)
        teacher, student = mlp(16, name="t", seed=1), mlp(8, name="s", seed=2)
        distiller = kd_keras.Distiller(student, teacher, losses=[SoftTargetKD(2.0)], alpha=0.5)
        (logits,), _ = distiller.teacher_forward(x)
        assert keras.backend.standardize_dtype(logits.dtype) == "float32"
        (cached,), _ = distiller._teacher_outputs(x, np_(teacher(x)))
        assert keras.backend.standardize_dtype(cached.dtype) == "float32"
        weights = combine_weights(np.ones(8), np.ones((8, 3), "int32"))
        assert keras.backend.standardize_dtype(weights.dtype) == "float32"
        t, s = np_(teacher(x)), np_(student(x))
        kd = np_soft_target(t, s, 2.0)
        for target, expected in ((None, 0.5 * kd), (y, 0.5 * np_sparse_ce(y, s).mean() + 0.5 * kd)):
            got = distiller.compute_loss(x, target, distiller(x), training=False)
            if keras.backend.backend() != "torch":
                # (torch turns the Python float of `1.0 - alpha` into floatx.)
                assert keras.backend.standardize_dtype(got.dtype) == "float32"
            assert float(np_(got)) == pytest.approx(expected, rel=1e-5)
    finally:
        keras.config.set_floatx("float32")
