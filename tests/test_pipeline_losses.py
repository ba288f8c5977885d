"""`distill.losses`: the distillation terms of a pipeline YAML, read with
`kd_keras.losses.get_terms`, validated before anything trains, and the same
training as a `Distiller` built by hand with those terms."""

import json

import keras
import numpy as np
import pytest

from kd_keras import Distiller, losses
from kd_keras.losses import DKD, SoftTargetKD
from kd_keras.pipeline import ConfigError, steps, validate_config
from tiny import data, mlp

MINIMAL = {
    "data": {"name": "digits"},
    "teacher": {"builder": "cnn_teacher"},
    "student": {"builder": "cnn_student"},
}


def _with_distill(**distill):
    return {**MINIMAL, "distill": distill}


def test_default_is_soft_targets_at_the_distill_temperature():
    config = validate_config(_with_distill(temperature=3.0))
    assert config["distill"]["losses"] == ["soft_target"]
    (term,) = losses.get_terms(config["distill"]["losses"], temperature=3.0)
    assert type(term) is SoftTargetKD
    assert float(keras.ops.convert_to_numpy(term.temperature)) == 3.0


def test_terms_take_the_distill_temperature_unless_they_set_their_own():
    terms = losses.get_terms(
        ["soft_target", {"dkd": {"beta": 2}}, {"dkd": {"temperature": 5.0, "name": "dkd5"}}],
        temperature=2.0,
    )
    assert [type(t) for t in terms] == [SoftTargetKD, DKD, DKD]
    temperatures = [float(keras.ops.convert_to_numpy(t.temperature)) for t in terms]
    assert temperatures == [2.0, 2.0, 5.0]
    assert terms[1].beta == 2.0 and terms[1].alpha == 1.0
    # No pipeline temperature: each term keeps its own default.
    assert float(keras.ops.convert_to_numpy(losses.get_terms(["dkd"])[0].temperature)) == 4.0


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["dkdd"], r"'distill.losses\[0\]' \('dkdd'\): Unknown distillation loss 'dkdd'; "
                   r"did you mean 'dkd'\?"),
        (["soft_target", {"dkd": {"betaa": 2}}],
         r"'distill.losses\[1\]'.*DKD takes no argument 'betaa'; did you mean 'beta'\?"),
        ([{"dkd": {"beta": -1}}], r"'distill.losses\[0\]'.*alpha and beta must be >= 0"),
        ([{"hint": {"teacher_layer": "conv2"}}], r"student_layer must name a layer"),
        ([], r"'distill.losses' must be a non-empty list of distillation terms"),
        ("dkd", r"'distill.losses' must be a non-empty list"),
        ([{"dkd": 2}], r"'distill.losses' must be a non-empty list"),
    ],
)  # fmt: skip
def test_bad_terms_are_named_before_training(terms, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_with_distill(losses=terms), source="pipeline.yaml")


def test_misspelt_key_beside_losses_gets_a_close_match():
    with pytest.raises(ConfigError, match=r"unknown key 'distill.loss'; did you mean"):
        validate_config(_with_distill(loss=["dkd"]), source="pipeline.yaml")


def _one_step(fit):
    """One full-batch Adam step from fixed weights: `fit(student, teacher, x, y)`."""
    x, y = data(n=32)
    teacher = mlp(name="teacher", seed=1)
    student = mlp(units=8, name="student", seed=2)
    fit(student, teacher, x, y)
    return [keras.ops.convert_to_numpy(w) for w in student.weights]


def test_steps_train_with_yaml_terms_matches_a_hand_built_distiller():
    """The YAML's `[{dkd: {beta: 2}}]` at distill.temperature 3 trains exactly
    like `Distiller(losses=[DKD(beta=2, temperature=3)])`, and not like the
    default soft targets."""

    def from_yaml(student, teacher, x, y):
        history = steps.train(
            student, x, y, teacher=teacher, epochs=1, batch_size=32, learning_rate=0.01,
            temperature=3.0, alpha=0.5, losses=[{"dkd": {"beta": 2}}], verbose=0,
        )  # fmt: skip
        (term,) = history.model.distillation_terms
        assert type(term) is DKD and term.beta == 2.0
        assert float(keras.ops.convert_to_numpy(term.temperature)) == 3.0
        assert "dkd_loss" in history.history

    def by_hand(student, teacher, x, y, term=None):
        term = term or DKD(beta=2.0, temperature=3.0)
        distiller = Distiller(student, teacher, losses=[term], alpha=0.5)
        distiller.compile(optimizer=keras.optimizers.Adam(0.01))
        distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)

    yaml_weights = _one_step(from_yaml)
    reference = _one_step(by_hand)
    soft = _one_step(lambda *a: by_hand(*a, term=SoftTargetKD(temperature=3.0)))
    for got, want in zip(yaml_weights, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert max(np.abs(g - s).max() for g, s in zip(yaml_weights, soft)) > 1e-4


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the pipeline exports TFLite")
def test_tiny_pipeline_distills_with_dkd_from_yaml(tmp_path):
    from kd_keras.pipeline import Pipeline, load_config

    config_path = tmp_path / "dkd.yaml"
    config_path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data: {name: digits, max_train: 256, max_test: 128}\n"
        "teacher: {builder: cnn_teacher, epochs: 1, kwargs: {filters: [4, 8], dense_units: 16}}\n"
        "student: {builder: cnn_student, kwargs: {filters: [4, 8]}}\n"
        "distill: {epochs: 1, temperature: 2.0, losses: [{dkd: {beta: 2}}]}\n"
        "prune: {enabled: false}\n"
        "export: {formats: [tflite]}\n"
        "bench: {threads: [1], runs: 2, warmup: 1}\n"
    )
    config = load_config(config_path)
    assert config["distill"]["losses"] == [{"dkd": {"beta": 2}}]
    Pipeline(config, log=[].append).run()
    history = json.loads((tmp_path / "run" / "distill" / "history.json").read_text())
    assert "dkd_loss" in history and "soft_target_loss" not in history
    assert np.isfinite(history["dkd_loss"]).all()
    assert (tmp_path / "run" / "report" / "report.md").exists()
