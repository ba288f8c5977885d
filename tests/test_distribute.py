"""Distribution: tf.distribute.MirroredStrategy on 2 logical CPUs and
keras.distribution.DataParallel on 2 JAX host devices, for the Distiller and
for pruning / QAT (whose steps assign variables). Each runs in a fresh
interpreter, since device counts are fixed when the framework starts."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMON = """
import numpy as np, keras, kd_keras
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32"); y = rng.integers(0, 4, 64).astype("int32")
def mlp(units, name):
    i = keras.Input((6,)); h = keras.layers.Dense(units, activation="relu")(i)
    return keras.Model(i, keras.layers.Dense(4)(h), name=name)

def compress(scope):  # scope: a context manager factory
    # Pruning masks and QAT ranges are variables assigned inside the step.
    from kd_keras import pruning
    from kd_keras.models import cnn_student
    from kd_keras.quantization import quantize_model
    xi = rng.random((64, 8, 8, 1)).astype("float32"); yi = rng.integers(0, 4, 64)
    schedule = pruning.ConstantSparsity(0.5, 0, frequency=1)
    for name, wrap in (("prune", lambda m: pruning.prune_low_magnitude(m, schedule)),
                       ("qat", quantize_model)):
        with scope():
            m = wrap(cnn_student(input_shape=(8, 8, 1), num_classes=4))
            m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(xi, yi, epochs=1, batch_size=16, verbose=0,
              callbacks=[pruning.UpdatePruningStep()] if name == "prune" else [])
        if name == "prune":
            wrappers = [l for l in m._flatten_layers() if isinstance(l, pruning.PruneLowMagnitude)]
            masks = [w.masks[0] for w in wrappers]
            print("ZEROS", *[float((keras.ops.convert_to_numpy(v) == 0).mean()) for v in masks])
        else:
            ranges = {v.name: v for v in m.get_layer("conv2").non_trainable_weights}
            print("RANGE", *[float(keras.ops.convert_to_numpy(ranges[k])) for k in
                             ("output_initialized", "output_min", "output_max")])
"""


def check_compression(out: str) -> None:
    zeros = [float(v) for v in out.split("ZEROS")[1].splitlines()[0].split()]
    assert len(zeros) == 3 and all(z == 0.5 for z in zeros), zeros
    initialized, low, high = map(float, out.split("RANGE")[1].splitlines()[0].split())
    assert initialized == 1.0 and low == 0.0 < high  # fused ReLU: range [0, max]


def run(code: str, backend: str, env_extra: dict) -> str:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COMMON) + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def has(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not has("tensorflow"), reason="needs TensorFlow")
def test_mirrored_strategy_on_two_logical_cpus():
    out = run(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, logical)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            teacher, student = mlp(16, "t"), mlp(8, "s")
            d = kd_keras.Distiller(student, teacher, alpha=0.3)
            d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
        # The replicated loss equals the single-device loss on the same batch.
        single = float(d.compute_loss(x, y, d(x), training=False))
        h = d.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
        print("LOSS", h.history["loss"][0], single)
        compress(strategy.scope)
        """,
        "tensorflow",
        {},
    )
    fitted, single = map(float, out.split("LOSS")[1].split()[:2])
    assert abs(fitted - single) < 1e-4 * max(1.0, abs(single))
    check_compression(out)


@pytest.mark.skipif(not has("jax"), reason="needs JAX")
def test_jax_data_parallel_on_two_host_devices():
    out = run(
        """
        import jax
        assert len(jax.devices()) == 2, jax.devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        teacher, student = mlp(16, "t"), mlp(8, "s")
        d = kd_keras.Distiller(student, teacher, alpha=0.3)
        d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
        single = float(d.compute_loss(x, y, d(x), training=False))
        h = d.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
        print("LOSS", h.history["loss"][0], single)
        import contextlib
        compress(contextlib.nullcontext)
        """,
        "jax",
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    fitted, single = map(float, out.split("LOSS")[1].split()[:2])
    assert abs(fitted - single) < 1e-4 * max(1.0, abs(single))
    check_compression(out)
