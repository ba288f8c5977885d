"""`kd_keras.Distiller` (and `TextDistiller`, its former name for text) with
keras-hub models: backbones as teacher and student (dict inputs, dict
outputs), TinyBERT terms attached by the Distiller, a file saved by kd_keras
0.1.0, and the text pipeline's general distillation stage, which trains only
what its terms reach."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import kd_keras
from kd_keras import text
from kd_keras.features import record_outputs

keras_hub = pytest.importorskip("keras_hub")

from test_text import tiny_backbone, tiny_classifier, token_inputs  # noqa: E402  (the tiny BERT)
from test_text_pipeline import setup  # noqa: E402,F401  (the tiny pipeline fixture)


def numpy_(x):
    return keras.ops.convert_to_numpy(x)


def backbone(num_layers, hidden_dim, seed):
    keras.utils.set_random_seed(seed)
    return tiny_backbone(num_layers, num_heads=2, hidden_dim=hidden_dim)


def test_backbone_teacher_and_student_fit_and_evaluate_on_dict_inputs():
    teacher, student = backbone(4, 16, seed=1), backbone(2, 8, seed=2)
    terms = text.tinybert_losses(teacher, student, attention=False, embedding=False)
    distiller = text.TextDistiller(student, teacher, losses=terms, alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = token_inputs([1, 2, 3, 4, 5, 6], seed=3)
    history = distiller.fit(x, epochs=3, batch_size=6, verbose=0).history
    assert history["hidden_1_loss"][-1] < history["hidden_1_loss"][0]

    result = distiller.evaluate(x, batch_size=6, verbose=0, return_dict=True)
    # The hidden-state MSE from the recorded layer outputs, in NumPy.
    term = distiller.distillation_terms[1]
    with record_outputs(teacher, [term.teacher_layer]) as t_feat:
        teacher(x)
    with record_outputs(student, [term.student_layer]) as s_feat:
        student(x)
    h_t, h_s = numpy_(t_feat[term.teacher_layer]), numpy_(s_feat[term.student_layer])
    kernel, bias = (numpy_(w) for w in term.regressor.weights)
    per_token = ((h_s @ kernel + bias - h_t) ** 2).mean(-1)
    mask = x["padding_mask"].astype("float64")
    expected = (per_token * mask).sum() / mask.sum()
    np.testing.assert_allclose(result["hidden_1_loss"], expected, rtol=1e-4)
    for t in terms:
        t.detach()


def test_general_distillation_trains_no_variable_without_gradients(setup):  # noqa: F811
    from kd_keras.pipeline import TextPipeline, validate_text_config

    config, folder = setup
    config["teacher"]["epochs"] = 0
    config["export"]["enabled"] = False
    pipeline = TextPipeline(validate_text_config(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = pipeline.run()
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]
    # The head kept its initial weights and is trainable again when saved.
    student = keras.saving.load_model(results["general"]["student"])
    assert all(layer.trainable for layer in student.layers)


# -- TextDistiller's special cases in the one Distiller --------------------------


def test_plain_distiller_attaches_text_terms_on_dict_inputs_and_after_loading(tmp_path):
    teacher = tiny_classifier()
    student = text.build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1, dropout=0.0)
    terms = text.tinybert_losses(teacher, student)
    for term in terms[1:]:
        term.detach()  # the Distiller attaches what is not attached yet
    distiller = kd_keras.Distiller(student, teacher, losses=terms, alpha=0.5)
    assert type(distiller) is kd_keras.Distiller
    assert all(t.attached for t in distiller.distillation_terms)
    assert distiller.get_config()["shared_tokenizer"] is True
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = token_inputs([1, 2, 3, 4, 5, 6] * 2, seed=3)
    y = (x["token_ids"][:, 1] % 3).astype("int32")
    history = distiller.fit(x, y, epochs=3, batch_size=6, verbose=0).history
    assert history["hidden_1_loss"][-1] < history["hidden_1_loss"][0]

    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras", safe_mode=True)
    assert type(loaded) is kd_keras.Distiller
    assert all(t.attached for t in loaded.distillation_terms)
    assert loaded.student.preprocessor.tokenizer is loaded.teacher.preprocessor.tokenizer
    np.testing.assert_array_equal(
        numpy_(loaded.compute_loss(x, y, loaded(x), training=False)),
        numpy_(distiller.compute_loss(x, y, distiller(x), training=False)),
    )
    for t in terms + loaded.distillation_terms:
        t.detach()


def test_attached_terms_need_exactly_one_teacher():
    teacher = tiny_classifier()
    student = text.build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1, dropout=0.0)
    terms = text.tinybert_losses(teacher, student)
    with pytest.raises(ValueError, match="one teacher"):
        kd_keras.Distiller(student, [teacher, tiny_classifier()], losses=terms)
    for t in terms:
        t.detach()


def test_text_distiller_file_saved_by_kd_keras_0_1_0_still_loads():
    """`data/text_distiller_0.1.0.keras` was saved by kd_keras 0.1.0, when
    `TextDistiller` was a Distiller subclass with its own logic
    (`data/make_text_distiller_fixture.py`; the `.npz` holds its inputs,
    outputs and loss then)."""
    data = Path(__file__).parent / "data"
    loaded = keras.saving.load_model(data / "text_distiller_0.1.0.keras", safe_mode=True)
    reference = np.load(data / "text_distiller_0.1.0.npz")
    x = {k: reference[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    assert isinstance(loaded, text.TextDistiller)
    names = [t.name for t in loaded.distillation_terms]
    assert names == ["embedding_mse", "hidden_0", "attention_0"]
    assert all(t.attached for t in loaded.distillation_terms)
    assert loaded.student.preprocessor.tokenizer is loaded.teacher.preprocessor.tokenizer
    np.testing.assert_allclose(numpy_(loaded(x)), reference["out"], atol=1e-5)
    loss = numpy_(loaded.compute_loss(x, reference["y"], loaded(x), training=False))
    np.testing.assert_allclose(loss, reference["loss"], rtol=1e-5)
    for t in loaded.distillation_terms:
        t.detach()
