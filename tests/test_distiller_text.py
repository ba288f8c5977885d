"""`TextDistiller` with keras-hub models: backbones as teacher and student
(dict inputs, dict outputs), and the text pipeline's general distillation
stage, which trains only what its terms reach."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from kd_keras import text
from kd_keras.features import record_outputs

keras_hub = pytest.importorskip("keras_hub")

from test_text import SEQ, VOCAB, token_inputs  # noqa: E402  (the tiny BERT)
from test_text_pipeline import setup  # noqa: E402,F401  (the tiny pipeline fixture)


def numpy_(x):
    return keras.ops.convert_to_numpy(x)


def backbone(num_layers, hidden_dim, seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=SEQ,
        dropout=0.0,
    )


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
