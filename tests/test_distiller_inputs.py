"""The Distiller on the inputs users actually have: dict targets with
sample weights, multi-output teachers, a softmax hidden in a teacher's call,
one-hot labels, and the mistakes it must refuse before the first step (or,
for data after the first batch, stop at the bad batch without learning
from it). Losses are checked against NumPy on the `fit` path itself: one
full-batch epoch reports the loss at the initial weights."""

import keras
import numpy as np
import pytest
from keras import ops

import kd_keras
from kd_keras.losses import DKD, SoftTargetKD
from tiny import NUM_CLASSES, data, mlp, np_soft_target, np_sparse_ce

FEATURES = 6


def numpy_of(x):
    return ops.convert_to_numpy(x)


def first_step_loss(distiller, x, y, **kwargs):
    """The loss `fit` reports for one full batch: the loss at the weights
    before the update."""
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0, **kwargs)
    return history.history["loss"][0]


def distiller_for(teacher, alpha=0.3, temperature=2.0, **kwargs):
    student = mlp(8, name="student", seed=2)
    distiller = kd_keras.Distiller(
        student, teacher, losses=[SoftTargetKD(temperature)], alpha=alpha, **kwargs
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    return distiller


def expected_loss(t_logits, s_logits, y, alpha=0.3, temperature=2.0, w=None, mask=None):
    ce_weights = np.ones(len(y)) if w is None else w
    if mask is not None:
        ce_weights = ce_weights * mask
    ce = (np_sparse_ce(y, s_logits) * ce_weights).sum() / ce_weights.sum()
    return alpha * ce + (1 - alpha) * np_soft_target(t_logits, s_logits, temperature, w)


# -- dict targets with sample weights -------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True], ids=["labels", "label_mask"])
def test_sample_weight_with_dict_targets_matches_numpy(with_mask):
    x, y = data(32)
    teacher = mlp(32, name="teacher", seed=1)
    distiller = distiller_for(None)
    t, s = numpy_of(teacher(x)), numpy_of(distiller.student(x))
    w = np.linspace(0.1, 2.0, 32).astype("float32")
    target = {"labels": y, "teacher_logits": t}
    mask = None
    if with_mask:
        mask = (np.arange(32) % 3 != 0).astype("float32")
        target["label_mask"] = mask
    got = first_step_loss(distiller, x, target, sample_weight=w)
    np.testing.assert_allclose(got, expected_loss(t, s, y, w=w, mask=mask), rtol=1e-5)


# -- teachers with several outputs -----------------------------------------------


def two_head_teacher(as_dict=False):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    aux = keras.layers.Dense(NUM_CLASSES, name="aux")(h)
    main = keras.layers.Dense(NUM_CLASSES, name="main")(h)
    outputs = {"aux": aux, "main": main} if as_dict else [main, aux]
    return keras.Model(inputs, outputs, name="two_heads")


@pytest.mark.parametrize(
    "as_dict, choice", [(False, 0), (False, "main"), (True, "main")], ids=["index", "name", "dict"]
)
def test_multi_output_teacher_distils_the_chosen_head(as_dict, choice):
    x, y = data(32)
    teacher = two_head_teacher(as_dict)
    distiller = distiller_for(teacher, teacher_output=choice)
    outputs = teacher(x)
    main = numpy_of(outputs["main"] if as_dict else outputs[0])
    s = numpy_of(distiller.student(x))
    expected = expected_loss(main, s, y)
    np.testing.assert_allclose(first_step_loss(distiller, x, y), expected, rtol=1e-5)
    cached = kd_keras.cache_teacher_outputs(teacher, x, verbose=0, teacher_output=choice)
    np.testing.assert_allclose(cached, main, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_multi_output_teacher_without_a_choice_is_refused(as_dict):
    teacher = two_head_teacher(as_dict)
    with pytest.raises(ValueError, match=r"has 2 outputs .*teacher_output=<name or index>"):
        distiller_for(teacher)
    with pytest.raises(ValueError, match=r"has 2 outputs .*teacher_output="):
        kd_keras.cache_teacher_outputs(teacher, data(8)[0], verbose=0)
    with pytest.raises(ValueError, match=r"teacher_output='head' is not an output .*'main'"):
        distiller_for(teacher, teacher_output="head")


def test_teacher_output_survives_the_keras_round_trip(tmp_path):
    x, y = data(16)
    distiller = distiller_for(two_head_teacher(), teacher_output="main")
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.save(tmp_path / "d.keras")
    restored = keras.saving.load_model(tmp_path / "d.keras")
    assert restored.teacher_output == "main"


# -- a softmax the layers do not show ----------------------------------------------


class SoftmaxInCall(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(NUM_CLASSES)

    def call(self, x):
        return ops.softmax(self.dense(x))


def functional_with_softmax_op():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((FEATURES,))
    logits = keras.layers.Dense(NUM_CLASSES)(keras.layers.Dense(16, activation="relu")(inputs))
    return keras.Model(inputs, ops.softmax(logits), name="softmax_op")


@pytest.mark.parametrize(
    "make_teacher",
    [lambda: SoftmaxInCall(name="subclassed"), functional_with_softmax_op],
    ids=["subclassed", "functional-op"],
)
def test_teacher_with_softmax_inside_call_is_read_as_probabilities(make_teacher):
    x, y = data(32)
    teacher = make_teacher()
    probabilities = numpy_of(teacher(x))
    distiller = distiller_for(teacher)
    s = numpy_of(distiller.student(x))
    # log-probabilities soften exactly like the logits they came from.
    expected = expected_loss(np.log(probabilities), s, y)
    np.testing.assert_allclose(first_step_loss(distiller, x, y), expected, rtol=1e-5)
    cached = kd_keras.cache_teacher_outputs(teacher, x, verbose=0)
    np.testing.assert_allclose(cached, np.log(probabilities), rtol=1e-5, atol=1e-6)


# -- labels ----------------------------------------------------------------------


def test_one_hot_labels_with_the_default_loss_match_numpy():
    x, y = data(32)
    teacher = mlp(32, name="teacher", seed=1)
    distiller = distiller_for(teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    t, s = numpy_of(teacher(x)), numpy_of(distiller.student(x))
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[y]
    history = distiller.fit(x, one_hot, batch_size=32, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], expected_loss(t, s, y), rtol=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(np.mean(s.argmax(-1) == y))


def test_dkd_with_one_hot_labels_equals_dkd_with_class_indices():
    x, y = data(32)
    teacher = mlp(32, name="teacher", seed=1)
    losses = []
    for labels in (y, np.eye(NUM_CLASSES, dtype="float32")[y]):
        student = mlp(8, name="student", seed=2)
        distiller = kd_keras.Distiller(student, teacher, losses=[DKD(temperature=2.0)], alpha=0.0)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        losses.append(first_step_loss(distiller, x, labels))
    term = DKD(temperature=2.0)
    reference = numpy_of(term([teacher(x)], mlp(8, name="student", seed=2)(x), labels=y))
    np.testing.assert_allclose(losses, [reference, reference], rtol=1e-5)


def test_string_labels_are_refused_with_the_mapping_to_use():
    x, _ = data(8)
    distiller = distiller_for(mlp(16, name="teacher", seed=1))
    with pytest.raises(ValueError, match=r"labels are strings .*np.unique"):
        distiller.fit(x, np.array(["cat", "dog"] * 4), verbose=0)


def test_empty_data_is_refused_before_training():
    distiller = distiller_for(mlp(16, name="teacher", seed=1))
    x = np.zeros((0, FEATURES), "float32")
    with pytest.raises(ValueError, match=r"training data is empty \(0 samples\)"):
        distiller.fit(x, np.zeros((0,), "int32"), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data is empty"):
        distiller.fit(*data(8), validation_data=(x, np.zeros((0,), "int32")), verbose=0)


def test_empty_dataset_is_refused_before_training():
    tf = pytest.importorskip("tensorflow")
    x, y = data(8)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b > 99).batch(4)
    with pytest.raises(ValueError, match=r"training data is empty"):
        distiller_for(mlp(16, name="teacher", seed=1)).fit(ds, verbose=0)


# -- losses the Distiller would otherwise ignore or misread ------------------------


def test_compile_loss_is_refused_with_where_the_loss_goes():
    distiller = kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"))
    with pytest.raises(ValueError, match=r"compile\(loss=.*student_loss=.*losses="):
        distiller.compile(optimizer="adam", loss="mse")


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.CategoricalCrossentropy(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        keras.losses.categorical_crossentropy,
    ],
    ids=["categorical", "sparse", "function"],
)
def test_probability_losses_on_a_logits_student_are_refused(loss):
    with pytest.raises(ValueError, match=r"student outputs logits.*from_logits=True"):
        kd_keras.Distiller(mlp(8, name="s"), mlp(16, name="t"), student_loss=loss)


def test_categorical_loss_from_logits_matches_numpy():
    x, y = data(32)
    teacher = mlp(32, name="teacher", seed=1)
    distiller = distiller_for(
        teacher, student_loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    t, s = numpy_of(teacher(x)), numpy_of(distiller.student(x))
    got = first_step_loss(distiller, x, np.eye(NUM_CLASSES, dtype="float32")[y])
    np.testing.assert_allclose(got, expected_loss(t, s, y), rtol=1e-5)


# -- bad data after the first batch -------------------------------------------------


def stream(x, y, batch):
    """A tf.data stream: `fit` can check only its first batch up front."""
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


@pytest.mark.parametrize("problem", ["label", "nan-label", "nan-input"])
def test_a_bad_batch_later_in_a_stream_stops_training_and_teaches_nothing(problem):
    x, y = data(16)
    y = y.astype("float32") if problem == "nan-label" else y
    bad_x, bad_y = x.copy(), y.copy()
    if problem == "label":
        bad_y[12] = NUM_CLASSES + 7
    elif problem == "nan-label":
        bad_y[12] = np.nan
    else:
        bad_x[12, 2] = np.nan
    teacher = mlp(16, name="teacher", seed=1)

    clean = distiller_for(teacher)  # the reference: the first batch alone
    clean.fit(stream(x[:8], y[:8], 8), epochs=1, shuffle=False, verbose=0)
    distiller = distiller_for(teacher)
    message = "inputs contain NaN" if problem == "nan-input" else "labels are out of range"
    with pytest.raises(ValueError, match=rf"Batch 1 of epoch 0: its {message}"):
        distiller.fit(stream(bad_x, bad_y, 8), epochs=1, shuffle=False, verbose=0)
    for a, b in zip(distiller.student.weights, clean.student.weights):
        np.testing.assert_allclose(numpy_of(a), numpy_of(b), rtol=1e-6, atol=1e-7)


def test_the_batch_check_flag_stays_out_of_history_and_evaluate():
    x, y = data(32)
    distiller = distiller_for(mlp(16, name="teacher", seed=1))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y))
    assert not any("invalid" in key for key in history.history)
    assert not any("invalid" in k for k in distiller.evaluate(x, y, verbose=0, return_dict=True))
