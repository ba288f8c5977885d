"""Mutual learning and self-distillation on the Distiller's machinery."""

import keras
import numpy as np
import pytest

import kd_keras
from tiny import data, mlp, np_soft_target, np_sparse_ce


def test_mutual_loss_matches_the_dml_formula():
    x, y = data(32)
    a, b, c = mlp(8, name="a", seed=1), mlp(12, name="b", seed=2), mlp(6, name="c", seed=3)
    mutual = kd_keras.MutualDistiller([a, b, c], alpha=0.4)
    mutual.compile(optimizer="adam")
    outs = [keras.ops.convert_to_numpy(m(x)) for m in (a, b, c)]
    expected = 0.0
    for k in range(3):
        kd = np.mean([np_soft_target(outs[j], outs[k], 1.0) for j in range(3) if j != k])
        expected += 0.4 * np_sparse_ce(y, outs[k]).mean() + 0.6 * kd
    got = mutual.compute_loss(x, y, mutual(x), training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5)


def test_mutual_fit_trains_every_student_and_logs_each():
    x, y = data(64)
    a, b = mlp(8, name="a", seed=1), mlp(8, name="b", seed=2)
    before = [a.get_weights()[0].copy(), b.get_weights()[0].copy()]
    mutual = kd_keras.MutualDistiller([a, b])
    mutual.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = mutual.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for key in (
        "student_0_accuracy",
        "student_1_accuracy",
        "student_0_mutual_loss",
        "student_1_ce",
    ):
        assert key in history.history
    assert not np.allclose(before[0], a.get_weights()[0]) and not np.allclose(
        before[1], b.get_weights()[0]
    )
    assert len(mutual.predict(x, verbose=0)) == 2


def test_mutual_refuses_bad_setups():
    a = mlp(8, name="a")
    with pytest.raises(ValueError, match="at least 2 students"):
        kd_keras.MutualDistiller([a])
    with pytest.raises(ValueError, match="same model appears twice"):
        kd_keras.MutualDistiller([a, a])
    mutual = kd_keras.MutualDistiller([a, mlp(8, name="b")])
    with pytest.raises(ValueError, match="compile\\(optimizer=...\\) only"):
        mutual.compile(optimizer="adam", metrics=["accuracy"])


def test_mutual_round_trips(tmp_path):
    x, y = data(16)
    mutual = kd_keras.MutualDistiller([mlp(8, name="a"), mlp(8, name="b", seed=4)])
    mutual.compile(optimizer="adam")
    mutual.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "mutual.keras")
    mutual.save(path)
    restored = keras.saving.load_model(path)
    for p, q in zip(mutual.predict(x, verbose=0), restored.predict(x, verbose=0)):
        np.testing.assert_allclose(p, q, atol=1e-6)


def test_self_distillation_snapshots_the_student_into_the_frozen_teacher():
    x, y = data(64)
    student = mlp(8, name="s")
    distiller, snapshot = kd_keras.self_distillation(student, every=2, alpha=0.3)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    initial = [w.copy() for w in distiller.teacher.get_weights()]
    alphas = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                alphas.append(float(keras.ops.convert_to_numpy(distiller.alpha)))

    history = distiller.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[snapshot, Spy()])
    assert snapshot.snapshots == [2]
    # Labels only (alpha = 1) until the first snapshot, then the user's alpha.
    np.testing.assert_allclose(alphas, [1.0, 1.0, 0.3], atol=1e-6)
    assert not np.allclose(initial[0], distiller.teacher.get_weights()[0])
    assert distiller.teacher.trainable is False
    assert np.isfinite(history.history["soft_target_loss"]).all()


def test_the_teacher_cannot_be_the_student_itself():
    s = mlp(8, name="s")
    with pytest.raises(ValueError, match="self_distillation"):
        kd_keras.Distiller(s, s)
