"""A saved `.keras` Distiller loads back compiled: the same optimizer (with
its state), metrics and terms, and without Keras's warning that `compile()`
was skipped."""

import warnings

import keras
import numpy as np
from keras import ops

import kd_keras
from kd_keras.losses import DKD, SoftTargetKD
from tiny import data, mlp


def test_reloaded_distiller_is_compiled_like_the_saved_one_and_trains_on_identically(tmp_path):
    x, y = data(32)
    distiller = kd_keras.Distiller(
        mlp(8, name="student", seed=2),
        mlp(16, name="teacher", seed=1),
        losses=[SoftTargetKD(3.0), DKD(beta=2.0, temperature=2.0, weight=0.5)],
        alpha=0.25,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3, beta_1=0.8), metrics=["accuracy"])
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.saving.load_model(path, safe_mode=True)
    messages = [str(w.message) for w in caught]
    assert not any("was not called as part of model loading" in m for m in messages)

    assert restored.compiled and isinstance(restored.optimizer, keras.optimizers.Adam)
    config, saved = restored.optimizer.get_config(), distiller.optimizer.get_config()
    assert (config["learning_rate"], config["beta_1"]) == (saved["learning_rate"], 0.8)
    assert int(ops.convert_to_numpy(restored.optimizer.iterations)) == 4
    terms = restored.distillation_terms
    assert [type(t).__name__ for t in terms] == ["SoftTargetKD", "DKD"]
    assert (terms[1].beta, terms[1].weight) == (2.0, 0.5)
    assert float(ops.convert_to_numpy(restored.alpha)) == 0.25

    # Adam's moments came back: the next epoch is the same step by step.
    for model in (restored, distiller):
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        assert "accuracy" in history.history
    for a, b in zip(restored.student.weights, distiller.student.weights):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-6)
