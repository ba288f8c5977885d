"""`strip_pruning` and `strip_clustering` return uncompiled models, so the
saved `.keras` of a stripped student holds the model and nothing of the run
that trained it (no optimizer slots, no compile config): a pruned student's
file is no larger than the dense student's."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from kd_keras import pruning
from kd_keras.models import cnn_student
from kd_keras.pipeline import steps
from kd_keras.quantization import cluster_weights, strip_clustering
from kd_keras.uncompile import uncompile

# config.json of a stripped model may name layers differently from a fresh
# one; Adam's slots alone are twice the weights (~2 x 8 KB here), far above.
SIZE_TOLERANCE = 1024


def digits_like(n=96):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)


def student():
    return cnn_student((8, 8, 1), num_classes=10, filters=(8, 16))


def fit_compiled(model, x, y):
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    return model


def saved(model, path):
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        members = {info.filename: info.file_size for info in archive.infolist()}
    return path.stat().st_size, config, members


def assert_uncompiled(model):
    assert model.compiled is False
    assert model.optimizer is None
    assert model.get_compile_config() == {}


def test_uncompile_saves_the_same_file_as_a_model_never_compiled(tmp_path):
    x, y = digits_like()
    never = student()
    trained = keras.models.clone_model(never)
    trained.set_weights(never.get_weights())
    fit_compiled(trained, x, y)
    compiled_size, compiled_config, _ = saved(trained, tmp_path / "compiled.keras")
    assert compiled_config.get("compile_config")  # what uncompile must remove

    assert uncompile(trained) is trained
    assert_uncompiled(trained)
    _, config, members = saved(trained, tmp_path / "uncompiled.keras")
    _, _, never_members = saved(never, tmp_path / "never.keras")
    # The model's own config, with an empty compile config (as for a model
    # never compiled).
    assert config.pop("compile_config", {}) == {}
    assert config == {k: v for k, v in compiled_config.items() if k != "compile_config"}
    # The weights file holds exactly the model's variables, as for the same
    # architecture never compiled (config.json may differ in serialization ids).
    assert members["model.weights.h5"] == never_members["model.weights.h5"]
    assert set(members) == set(never_members)
    assert (tmp_path / "uncompiled.keras").stat().st_size < compiled_size
    # Still a model: predicts as before, and trains again once compiled.
    np.testing.assert_allclose(
        trained.predict(x, verbose=0),
        keras.saving.load_model(tmp_path / "uncompiled.keras").predict(x, verbose=0),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="compile"):
        trained.fit(x, y, verbose=0)
    fit_compiled(trained, x, y)


def test_uncompile_refuses_a_layer():
    with pytest.raises(TypeError, match="keras.Model"):
        uncompile(keras.layers.Dense(2))


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_stripped_pruned_student_saves_no_larger_than_the_dense_one(tmp_path, kind):
    x, y = digits_like()
    dense = student()
    if kind == "sequential":
        dense = keras.Sequential([keras.Input((8, 8, 1)), *dense.layers[1:]])
    dense_size, _, _ = saved(dense, tmp_path / "dense.keras")

    schedule = pruning.ConstantSparsity(0.8, 0, frequency=1)
    pruned = fit_compiled(pruning.prune_low_magnitude(dense, pruning_schedule=schedule), x, y)
    stripped = pruning.strip_pruning(pruned)
    assert_uncompiled(stripped)
    assert pruned.compiled  # the pruning run's own model is left as it was

    size, config, _ = saved(stripped, tmp_path / "pruned.keras")
    assert config.get("compile_config", {}) == {}
    assert size <= dense_size + SIZE_TOLERANCE, (size, dense_size)
    # The file is the pruned model: its predictions, its zeros.
    reloaded = keras.saving.load_model(tmp_path / "pruned.keras")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )
    kernel = keras.ops.convert_to_numpy(reloaded.get_layer("conv2").kernel)
    assert np.mean(kernel == 0) == pytest.approx(0.8, abs=0.01)


def test_strip_pruning_in_place_on_a_subclassed_model_uncompiles_it(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.head = keras.layers.Dense(10)

        def call(self, inputs, training=None):
            flat = keras.ops.reshape(inputs, (-1, 64))
            return self.head(self.hidden(flat, training=training), training=training)

    x, y = digits_like()
    net = Net()
    net(x[:1])
    net.save(tmp_path / "dense.keras")
    schedule = pruning.ConstantSparsity(0.5, 0, frequency=1)
    fit_compiled(pruning.prune_low_magnitude(net, pruning_schedule=schedule), x, y)
    assert pruning.strip_pruning(net) is net
    assert_uncompiled(net)
    net.save(tmp_path / "pruned.keras")
    dense_size = (tmp_path / "dense.keras").stat().st_size
    assert (tmp_path / "pruned.keras").stat().st_size <= dense_size + SIZE_TOLERANCE


def test_stripped_clustered_student_is_uncompiled_and_small(tmp_path):
    x, y = digits_like()
    dense = student()
    dense_size, _, _ = saved(dense, tmp_path / "dense.keras")
    clustered = fit_compiled(cluster_weights(dense, 4, "LINEAR"), x, y)
    stripped = strip_clustering(clustered)
    assert_uncompiled(stripped)
    size, config, _ = saved(stripped, tmp_path / "clustered.keras")
    assert config.get("compile_config", {}) == {}
    assert size <= dense_size + SIZE_TOLERANCE, (size, dense_size)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-5
    )


def test_pipeline_prune_step_saves_a_pruned_student_no_larger_than_the_dense_one(tmp_path):
    """The prune stage's own path: `prune_student` (labels, compiled by
    `steps.train`) then `save_model`, as `student_pruned.keras` is written."""
    x, y = digits_like()
    dense = student()
    steps.save_model(dense, tmp_path / "student.keras")
    _, stripped, _ = steps.prune_student(
        steps.load_model(tmp_path / "student.keras"), x, y, final_sparsity=0.8, epochs=1
    )
    assert_uncompiled(stripped)
    steps.save_model(stripped, tmp_path / "student_pruned.keras")
    dense_size = (tmp_path / "student.keras").stat().st_size
    size = (tmp_path / "student_pruned.keras").stat().st_size
    assert size <= dense_size + SIZE_TOLERANCE, (size, dense_size)
