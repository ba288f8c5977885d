"""Offline KD: cached logits pair with the right images, and random
pipelines are refused instead of silently mispaired."""

import keras
import numpy as np
import pytest

import kd_keras
from tiny import data, mlp

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipelines")


def batches(x, y):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y))


def test_numpy_cache_equals_teacher_outputs_and_softmax_teachers_give_log_probs():
    x, _ = data(40)
    teacher = mlp(16, name="t")
    np.testing.assert_allclose(
        kd_keras.cache_teacher_outputs(teacher, x, batch_size=7, verbose=0),
        keras.ops.convert_to_numpy(teacher(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    prob_teacher = mlp(16, name="pt", activation="softmax")
    cached = kd_keras.cache_teacher_outputs(prob_teacher, x, verbose=0)
    np.testing.assert_allclose(
        cached, np.log(keras.ops.convert_to_numpy(prob_teacher(x))), rtol=1e-5
    )


def test_ensemble_cache_is_one_array_per_teacher():
    x, _ = data(16)
    cached = kd_keras.cache_teacher_outputs([mlp(8, name="a"), mlp(12, name="b")], x, verbose=0)
    assert isinstance(cached, list) and [c.shape for c in cached] == [(16, 4), (16, 4)]


def test_dataset_cache_pairs_each_image_with_its_own_logits_even_after_shuffling():
    x, y = data(50)
    teacher = mlp(16, name="t")
    ds = kd_keras.cache_teacher_outputs(teacher, batches(x, y).batch(8), verbose=0)
    ds = ds.unbatch().shuffle(50, seed=1).batch(10)  # shuffling after caching keeps pairs
    seen = 0
    for bx, target in ds:
        expected = keras.ops.convert_to_numpy(teacher(bx))
        np.testing.assert_allclose(target["teacher_logits"].numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            target["labels"].numpy(), y[[np.flatnonzero((x == r).all(1))[0] for r in bx.numpy()]]
        )
        seen += len(bx)
    assert seen == 50


@pytest.mark.parametrize(
    "make_random",
    [
        lambda ds: ds.shuffle(10),
        lambda ds: ds.map(lambda a, b: (a + __import__("tensorflow").random.normal(a.shape), b)),
        lambda ds: ds.map(lambda a, b: (a, b), num_parallel_calls=2, deterministic=False),
    ],
    ids=["shuffle", "random-augmentation", "nondeterministic-map"],
)
def test_random_pipelines_are_refused(make_random):
    x, y = data(20)
    ds = make_random(batches(x, y)).batch(5)
    with pytest.raises(ValueError, match="random operations .*cache on the deterministic part"):
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, verbose=0)


def test_deterministic_pipeline_has_no_random_ops():
    x, y = data(20)
    ds = batches(x, y).map(lambda a, b: (a * 2.0, b)).batch(5).prefetch(2)
    assert kd_keras.random_ops_in_dataset(ds) == []


def test_distiller_trains_from_a_cached_dataset():
    x, y = data(48)
    teacher = mlp(16, name="t")
    ds = kd_keras.cache_teacher_outputs(teacher, batches(x, y).batch(8), verbose=0)
    distiller = kd_keras.Distiller(mlp(8, name="s"), None)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(ds.unbatch().shuffle(48, seed=0).batch(8), epochs=2, verbose=0)
    assert np.isfinite(history.history["soft_target_loss"]).all()


NOISE = np.random.default_rng(0)


def numpy_noise(a):
    return (a + NOISE.normal(size=a.shape)).astype("float32")


@pytest.mark.parametrize(
    "make_opaque",
    [
        lambda ds: ds.map(
            lambda a, b: (__import__("tensorflow").numpy_function(numpy_noise, [a], "float32"), b)
        ),
        lambda ds: __import__("tensorflow").data.Dataset.from_generator(
            lambda: iter(list(ds.as_numpy_iterator())[::-1]),
            output_signature=ds.element_spec,
        ),
    ],
    ids=["numpy_function-augmentation", "from_generator"],
)
def test_python_ops_are_refused_unless_vouched_for(make_opaque):
    x, y = data(20)
    ds = make_opaque(batches(x, y)).batch(5)
    with pytest.raises(ValueError, match="random operations .*Python ops.*assume_deterministic"):
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, verbose=0)


def test_a_vouched_for_generator_pairs_each_sample_with_its_logits():
    import tensorflow as tf

    x, y = data(20)
    teacher = mlp(8, name="t")
    ds = tf.data.Dataset.from_generator(
        lambda: iter(zip(x, y)),
        output_signature=(tf.TensorSpec((6,), "float32"), tf.TensorSpec((), "int32")),
    ).batch(5)
    cached = kd_keras.cache_teacher_outputs(teacher, ds, verbose=0, assume_deterministic=True)
    for bx, target in cached:
        np.testing.assert_allclose(
            target["teacher_logits"].numpy(), keras.ops.convert_to_numpy(teacher(bx)), atol=1e-6
        )


@pytest.mark.parametrize(
    "augment",
    [
        lambda a: a + __import__("tensorflow").random.normal(__import__("tensorflow").shape(a)),
        lambda a: __import__("tensorflow").numpy_function(numpy_noise, [a], "float32"),
    ],
    ids=["tf.random", "numpy_function"],
)
def test_augmenting_after_caching_is_refused_by_fit(augment):
    x, y = data(24)
    teacher = mlp(16, name="t")
    ds = kd_keras.cache_teacher_outputs(teacher, batches(x, y).batch(8), verbose=0)
    augmented = ds.map(lambda a, target: (augment(a), target))
    distiller = kd_keras.Distiller(mlp(8, name="s"), None)
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"changes its images after caching .*Shuffling after"):
        distiller.fit(augmented, epochs=1, verbose=0)


def test_the_refusal_no_longer_suggests_augmenting_after_caching():
    x, y = data(20)
    ds = batches(x, y).shuffle(10).batch(5)
    with pytest.raises(ValueError) as error:
        kd_keras.cache_teacher_outputs(mlp(8, name="t"), ds, verbose=0)
    assert "augment after" not in str(error.value) and "only shuffle after" in str(error.value)
