"""Offline KD edge cases, against the teacher's own outputs (or their NumPy
log): explicit output kinds, zero probabilities, every element structure a
dataset may yield, ensembles, uneven batches, and each kind of random
operation the pairing check must see."""

import keras
import numpy as np
import pytest

import kd_keras
from tiny import data, mlp

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipelines")


def tf():
    import tensorflow

    return tensorflow


def probability_model():
    """Outputs [0, .5, .25, .25] for every input: relu of a constant, so one
    probability is exactly 0 (its log is floored, not -inf)."""
    inputs = keras.Input((6,))
    out = keras.layers.Dense(
        4,
        activation="relu",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant([-1.0, 0.5, 0.25, 0.25]),
    )(inputs)
    return keras.Model(inputs, out)


def test_explicit_probabilities_are_stored_as_floored_log_probabilities():
    x, _ = data(5)
    cached = kd_keras.cache_teacher_outputs(
        probability_model(), x, teacher_outputs="probabilities", verbose=0
    )
    expected = np.log(np.array([1e-30, 0.5, 0.25, 0.25], np.float32))
    assert cached.dtype == np.float32
    np.testing.assert_allclose(cached, np.tile(expected, (5, 1)), rtol=1e-6)
    assert np.isfinite(cached).all()


def test_explicit_logits_are_kept_even_after_a_softmax():
    x, _ = data(9)
    teacher = mlp(8, name="pt", activation="softmax")
    cached = kd_keras.cache_teacher_outputs(teacher, x, teacher_outputs="logits", verbose=0)
    np.testing.assert_allclose(cached, keras.ops.convert_to_numpy(teacher(x)), rtol=1e-5)
    # "auto" sees the softmax and takes the log.
    auto = kd_keras.cache_teacher_outputs(teacher, x, verbose=0)
    np.testing.assert_allclose(auto, np.log(keras.ops.convert_to_numpy(teacher(x))), rtol=1e-5)


def test_tuple_ensemble_is_one_array_per_teacher_in_order():
    x, _ = data(6)
    a, b = mlp(8, name="a", seed=1), mlp(8, name="b", seed=2)
    cached = kd_keras.cache_teacher_outputs((a, b), x, verbose=0)
    assert isinstance(cached, list) and len(cached) == 2
    for model, logits in zip((a, b), cached):
        np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(model(x)), rtol=1e-5)


def cached_elements(dataset):
    return list(dataset.unbatch())


def test_dataset_of_inputs_only_gets_teacher_logits_and_no_labels():
    x, _ = data(12)
    teacher = mlp(8, name="t")
    ds = kd_keras.cache_teacher_outputs(
        teacher, tf().data.Dataset.from_tensor_slices(x).batch(4), verbose=0
    )
    for i, (bx, target) in enumerate(cached_elements(ds)):
        assert sorted(target) == ["teacher_logits"]
        np.testing.assert_array_equal(bx.numpy(), x[i])
        np.testing.assert_allclose(
            target["teacher_logits"].numpy(),
            keras.ops.convert_to_numpy(teacher(x[i : i + 1]))[0],
            rtol=1e-5,
            atol=1e-6,
        )


def test_dataset_with_sample_weights_and_dict_targets_keeps_them():
    x, y = data(10)
    w = np.linspace(0.1, 1.0, 10).astype("float32")
    mask = (np.arange(10) % 2).astype("float32")
    teacher = mlp(8, name="t")
    source = tf().data.Dataset.from_tensor_slices(
        (x, {"labels": y, "label_mask": mask, "teacher_logits": np.zeros((10, 4), "float32")}, w)
    )
    ds = kd_keras.cache_teacher_outputs(teacher, source.batch(5), verbose=0)
    expected = keras.ops.convert_to_numpy(teacher(x))
    for i, (bx, target, bw) in enumerate(cached_elements(ds)):
        np.testing.assert_array_equal(bx.numpy(), x[i])
        assert sorted(target) == ["label_mask", "labels", "teacher_logits"]
        assert target["labels"].numpy() == y[i] and target["label_mask"].numpy() == mask[i]
        assert bw.numpy() == pytest.approx(w[i])
        # The stale teacher_logits in the source are replaced by the teacher's.
        np.testing.assert_allclose(
            target["teacher_logits"].numpy(), expected[i], rtol=1e-5, atol=1e-6
        )


def test_dataset_ensemble_yields_one_logits_tensor_per_teacher():
    x, y = data(8)
    a, b = mlp(8, name="a", seed=1), mlp(8, name="b", seed=2)
    ds = kd_keras.cache_teacher_outputs(
        [a, b], tf().data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0
    )
    bx, target = next(iter(ds))
    logits = target["teacher_logits"]
    # Not one stacked (2, batch, classes) tensor, which reads as one teacher.
    assert isinstance(logits, tuple) and len(logits) == 2
    for model, t in zip((a, b), logits):
        np.testing.assert_allclose(
            t.numpy(), keras.ops.convert_to_numpy(model(bx)), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(target["labels"].numpy(), y[:4])


def test_distiller_on_an_ensemble_cached_dataset_equals_the_online_ensemble():
    x, y = data(16)
    a, b = mlp(8, name="a", seed=1), mlp(8, name="b", seed=2)
    source = tf().data.Dataset.from_tensor_slices((x, y)).batch(8)
    ds = kd_keras.cache_teacher_outputs([a, b], source, verbose=0)
    results = []
    for teacher, data_ in (([a, b], source), (None, ds)):
        distiller = kd_keras.Distiller(mlp(8, name="s", seed=3), teacher, alpha=0.0)
        distiller.compile(optimizer="sgd")
        results.append(distiller.evaluate(data_, verbose=0, return_dict=True))
    online, cached = results
    # The KL to the ensemble's average distribution, not the average of KLs.
    assert cached["soft_target_loss"] == pytest.approx(online["soft_target_loss"], rel=1e-5)
    assert cached["loss"] == pytest.approx(online["loss"], rel=1e-5)


def test_single_batch_and_short_last_batch_are_accepted():
    x, y = data(7)
    for batch in (7, 3):
        ds = kd_keras.cache_teacher_outputs(
            mlp(8, name="t"), tf().data.Dataset.from_tensor_slices((x, y)).batch(batch), verbose=0
        )
        assert sum(int(bx.shape[0]) for bx, _ in ds) == 7


@pytest.mark.parametrize("sizes", [[4, 2, 4], [2, 4], [3, 3, 5]], ids=["middle", "first", "last"])
def test_uneven_batches_are_refused(sizes):
    x, y = data(sum(sizes))
    parts, start = [], 0
    for size in sizes:
        parts.append(
            tf().data.Dataset.from_tensor_slices((x[start : start + size], y[start : start + size]))
            .batch(size)
        )
        start += size
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    expected = sorted(set(sizes))
    with pytest.raises(ValueError) as info:
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, verbose=0)
    assert str(info.value) == (
        f"The dataset's batches have uneven sizes {expected}; batch it with ds.batch(n) "
        "(the last batch may be smaller) before caching."
    )


def test_random_pipeline_error_says_how_to_fix():
    x, y = data(10)
    ds = tf().data.Dataset.from_tensor_slices((x, y)).shuffle(10).batch(5)
    with pytest.raises(ValueError) as info:
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, verbose=0)
    assert str(info.value) == (
        f"The dataset has random operations {kd_keras.random_ops_in_dataset(ds)} (or Python "
        "ops, whose output cannot be checked): its images and order may change from one pass "
        "to the next, so cached teacher logits would be paired with other images. Either cache "
        "on the deterministic part of the pipeline and only shuffle after "
        "(`ds = cache_teacher_outputs(teacher, ds_plain).shuffle(...)`; augmenting after "
        "caching would pair augmented images with the logits of un-augmented ones), or train "
        "with the teacher online (kd_keras.Distiller(student, teacher) without cached logits), "
        "which recomputes every step. A Python op (tf.numpy_function, from_generator) that "
        "yields the same elements every pass can be vouched for with assume_deterministic=True."
    )


def test_each_kind_of_random_op_is_named():
    t = tf()
    x = np.zeros((8, 4), "float32")
    base = t.data.Dataset.from_tensor_slices(x)
    found = kd_keras.random_ops_in_dataset

    assert any(op.startswith("ShuffleDataset") for op in found(base.shuffle(4)))
    assert "RandomDataset" in found(t.data.Dataset.random(seed=1).take(3))
    sampled = t.data.Dataset.sample_from_datasets([base, base], seed=1)
    assert any(op.startswith("DirectedInterleaveDataset") for op in found(sampled))
    assert "Multinomial" in found(
        base.map(lambda v: (v, t.random.categorical(t.zeros((1, 3)), 1)))
    )
    assert "TruncatedNormal" in found(base.map(lambda v: v + t.random.truncated_normal((4,))))
    assert "ParallelMapDatasetV2(deterministic=False)" in found(
        base.map(lambda v: v, num_parallel_calls=2, deterministic=False)
    )
    # Deterministic parallel maps are fine.
    assert found(base.map(lambda v: v, num_parallel_calls=2, deterministic=True)) == []


def test_assume_deterministic_vouches_for_python_ops_only():
    """A generator source is vouched for; a shuffle or a random map next to
    it is still refused, and named without the Python op."""
    t = tf()
    x, y = data(10)
    source = t.data.Dataset.from_generator(
        lambda: iter(zip(x, y)),
        output_signature=(t.TensorSpec((6,), "float32"), t.TensorSpec((), "int32")),
    )
    noisy = source.map(lambda a, b: (a + t.random.normal((6,)), b))
    for ds in (source.shuffle(10).batch(5), noisy.batch(5)):
        random_ops = kd_keras.random_ops_in_dataset(ds)
        assert any("PyFunc" in op for op in random_ops)
        with pytest.raises(ValueError) as info:
            kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, assume_deterministic=True)
        named = [op for op in random_ops if "PyFunc" not in op]
        assert named and str(info.value).startswith(f"The dataset has random operations {named} (")


def test_teacher_output_picks_the_logits_of_a_two_output_teacher():
    """By name or position, the cache holds exactly that output of the
    teacher's own `predict`; softmax probabilities in the other head are not
    what it reads."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    logits = keras.layers.Dense(4, name="logits")(hidden)
    teacher = keras.Model(inputs, [probabilities, logits])
    x, _ = data(12)
    want = teacher.predict(x, verbose=0)[1]
    for choice in ("logits", 1):
        got = kd_keras.cache_teacher_outputs(teacher, x, verbose=0, teacher_output=choice)
        assert got.shape == (12, 4)
        np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match=r"has 2 outputs \['probs', 'logits'\]"):
        kd_keras.cache_teacher_outputs(teacher, x, verbose=0)


def test_auto_detects_probabilities_by_their_values_without_a_softmax_layer():
    """The relu teacher's rows are in [0, 1] and sum to 1: "auto" stores their
    floored log, as "probabilities" does."""
    x, _ = data(5)
    cached = kd_keras.cache_teacher_outputs(probability_model(), x, verbose=0)
    expected = np.log(np.array([1e-30, 0.5, 0.25, 0.25], np.float32))
    np.testing.assert_allclose(cached, np.tile(expected, (5, 1)), rtol=1e-6)


def test_numpy_inputs_run_in_batches_of_256_with_a_progress_bar_unless_verbose_0(capsys):
    """Each output row is the size of the batch it was predicted in."""
    inputs = keras.Input((6,))
    batch = keras.layers.Lambda(
        lambda v: keras.ops.zeros_like(v[:, :2]) + keras.ops.cast(keras.ops.shape(v)[0], v.dtype)
    )(inputs)
    x, _ = data(300)
    cached = kd_keras.cache_teacher_outputs(keras.Model(inputs, batch), x, teacher_outputs="logits")
    np.testing.assert_array_equal(cached[:, 0], [256.0] * 256 + [44.0] * 44)
    assert "2/2" in capsys.readouterr().out
    kd_keras.cache_teacher_outputs(keras.Model(inputs, batch), x[:8], verbose=0)
    assert capsys.readouterr().out == ""


def test_bad_teacher_outputs_message_is_exact():
    with pytest.raises(ValueError) as info:
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), data(4)[0], teacher_outputs="softmax")
    assert str(info.value) == (
        "teacher_outputs must be 'auto', 'logits' or 'probabilities', got 'softmax'."
    )


def test_dataset_of_two_input_tuples_feeds_both_inputs_to_the_teacher():
    """`((a, b), y)` batches: the teacher sees the pair `(a, b)`, not `a` as
    the inputs and `b` as labels."""
    a_in, b_in = keras.Input((6,)), keras.Input((3,))
    merged = keras.layers.Concatenate()([a_in, b_in])
    teacher = keras.Model([a_in, b_in], keras.layers.Dense(4)(merged))
    x, y = data(10)
    b = np.random.default_rng(1).normal(size=(10, 3)).astype("float32")
    ds = tf().data.Dataset.from_tensor_slices(((x, b), y)).batch(5)
    cached = kd_keras.cache_teacher_outputs(teacher, ds, verbose=0)
    logits = np.concatenate([target["teacher_logits"].numpy() for _, target in cached])
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(teacher([x, b])), atol=1e-5)
