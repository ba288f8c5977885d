"""kd_keras.pipeline with `task: text` (`kd-keras run`) on a tiny BERT
teacher saved as a keras-hub preset and a tiny corpus in the BBC folder
layout, and the `.keras` round trip of a `TextDistiller` with TinyBERT terms."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import yaml

from kd_keras import pruning, text
from kd_keras.bench.render import render_ratio_report
from kd_keras.pipeline import (
    ConfigError,
    TextPipeline,
    load_text_config,
    run_text_pipeline,
    validate_text_config,
)
from kd_keras.pipeline.text_config import TEXT_STAGES
from kd_keras.pipeline.text_task import load_text_data

pytest.importorskip("keras_hub")

from test_text import SEQ, VOCAB, tiny_classifier, token_inputs  # noqa: E402  (the tiny BERT)

TF = keras.backend.backend() == "tensorflow"
CLASSES = ("business", "sport", "tech")


def numpy_(x):
    return keras.ops.convert_to_numpy(x)


def numbered(n: int) -> str:
    return f"w{n}"


def lettered(n: int) -> str:
    """`w` + two letters: a whole word to augmentation (which skips digits)."""
    return "w" + chr(97 + n // 26) + chr(97 + n % 26)


def write_corpus(folder, per_class=12, seed=0, word=numbered):
    """A corpus in the BBC layout (`<class>/<n>.txt`) made of the tiny
    vocabulary: class c draws 2-4 words from w{10c}..w{10c+9}, plus one
    word shared by all classes, so the label is learnable from the words."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            words = [word(10 * c + k) for k in rng.integers(0, 10, rng.integers(2, 5))]
            words.append(word(rng.integers(60, 95)))
            rng.shuffle(words)
            (folder / name / f"{i:03d}.txt").write_text(" ".join(words))
    return folder


@pytest.fixture
def setup(tmp_path):
    """(config dict, folder): a tiny teacher preset, a tiny corpus and a
    config with 1 epoch per stage; export only on TensorFlow."""
    preset = str(tmp_path / "tiny_bert")
    tiny_classifier(num_classes=len(CLASSES)).save_to_preset(preset)
    corpus = write_corpus(tmp_path / "corpus")
    config = {
        "task": "text",
        "run_dir": str(tmp_path / "run"),
        "data": {"name": "bbc", "path": str(corpus), "test_fraction": 0.25},
        "teacher": {"preset": preset, "sequence_length": SEQ, "epochs": 1, "batch_size": 8},
        "student": {"num_layers": 2, "hidden_dim": 8, "num_heads": 1, "dropout": 0.0},
        "general": {"epochs": 1, "batch_size": 8},
        "distill": {"epochs": 1, "batch_size": 8, "temperature": 2.0, "alpha": 0.5},
        # Conversions dominate the test's time: the student only.
        "export": {"enabled": TF, "models": ["student"], "parity_samples": 8},
        "bench": {"sequence_lengths": [6, SEQ], "runs": 3, "warmup": 1},
    }
    return config, tmp_path


def write_yaml(folder, config, name="text.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


# -- end to end ----------------------------------------------------------------


@pytest.mark.jax_heavy
def test_pipeline_runs_end_to_end_then_skips_every_stage(setup):
    config, folder = setup
    path = write_yaml(folder, config)
    results = run_text_pipeline(str(path))
    run = folder / "run"
    for stage in TEXT_STAGES:
        assert (run / ".stages" / f"{stage}.json").is_file()
    assert (run / "teacher" / "preset" / "task.json").is_file()
    assert (run / "general" / "student.keras").is_file()
    assert (run / "report.md").is_file() and results["bench"]["markdown"] == str(run / "report.md")

    # The figures against an independent computation from the saved files.
    (x_train, _), (x_test, y_test) = load_text_data(load_text_config(path)["data"])
    assert (len(x_train), len(y_test)) == (27, 9)
    teacher = text.load_teacher(results["teacher"]["preset"], sequence_length=SEQ)
    student = keras.saving.load_model(results["distill"]["student"])
    tokens_train, tokens_test = text.tokenize(teacher, x_train), text.tokenize(teacher, x_test)
    with text.without_preprocessor(teacher), text.without_preprocessor(student):
        t_test, s_test = (numpy_(m(tokens_test, training=False)) for m in (teacher, student))
        t_train = numpy_(teacher(tokens_train, training=False))
    report = json.loads((run / "report.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert rows["teacher"]["accuracy"] == pytest.approx(np.mean(t_test.argmax(-1) == y_test))
    assert rows["student"]["accuracy"] == pytest.approx(np.mean(s_test.argmax(-1) == y_test))
    assert rows["student"]["params"] == student.count_params() < teacher.count_params()
    # The logits distillation learnt from the teacher's cached logits.
    np.testing.assert_allclose(np.load(run / "distill" / "teacher_logits.npy"), t_train, atol=1e-5)
    history = json.loads((run / "distill" / "history.json").read_text())
    assert {"loss", "soft_target_loss", "student_loss"} <= set(history)
    assert set(json.loads((run / "general" / "history.json").read_text())) >= {
        "embedding_mse_loss",
        "hidden_1_loss",
        "attention_1_loss",
    }
    markdown = (run / "report.md").read_text()
    assert "| teacher |" in markdown and "| student |" in markdown
    if TF:
        student_row = rows["student"]
        assert student_row["float"]["parity"]["passed"]
        assert student_row["float"]["parity"]["max_abs_diff"] <= 1e-4
        assert student_row["onnx"]["parity"]["max_abs_diff"] <= 1e-4
        assert (run / "export" / "student" / "preprocessor.json").is_file()
        # The float TFLite model decides like Keras on the whole test set.
        assert student_row["float"]["accuracy"] == pytest.approx(rows["student"]["accuracy"])
        assert set(student_row["float"]["p50_ms"]) == {"6", str(SEQ)}
        assert student_row["dynamic"]["p50_ms"]["6"]["1"] > 0
        assert "float p50 ms, L=6, 1 thr (teacher ÷)" in markdown
    else:
        assert results["export"] == {"skipped": True}

    # Every stage has its marker: a second run trains and writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    logs = []
    again = TextPipeline(load_text_config(path), log=logs.append).run()
    assert again == results
    assert len(logs) == len(TEXT_STAGES) and all("skipping" in line for line in logs)
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == [run / "config.json"]


@pytest.mark.jax_heavy
def test_general_stage_can_be_skipped_and_max_splits(setup):
    config, folder = setup
    config["general"] = {"epochs": 0}
    config["teacher"]["epochs"] = 0
    config["export"]["enabled"] = False
    config["data"].update(max_train=12, max_test=3)
    results = TextPipeline(validate_text_config(config)).run()
    assert results["general"] == {"skipped": True}
    assert not (folder / "run" / "general").exists()
    report = json.loads((folder / "run" / "report.json").read_text())
    assert (report["data"]["train"], report["data"]["test"]) == (12, 3)
    # max_test spreads the kept texts over the (class-ordered) test split.
    _, (_, y_test) = load_text_data(validate_text_config(config)["data"])
    assert sorted(y_test) == [0, 1, 2]


@pytest.mark.jax_heavy
def test_augmented_transfer_set_feeds_both_distillation_stages(setup):
    config, folder = setup
    vocabulary = VOCAB[:5] + [lettered(i) for i in range(95)]
    tiny_classifier(num_classes=len(CLASSES), vocabulary=vocabulary).save_to_preset(
        str(folder / "lettered_bert")
    )
    corpus = write_corpus(folder / "lettered", word=lettered)
    config["teacher"].update(preset=str(folder / "lettered_bert"), epochs=0)
    config["data"]["path"] = str(corpus)
    config["student"]["init_from_teacher"] = "pca"
    config["augment"] = {"copies": 3, "rate": 0.5, "neighbours": 4}
    config["distill"]["alpha"] = 0.0
    config["export"]["enabled"] = False
    pipeline = TextPipeline(validate_text_config(config))
    pipeline.run()
    tokens, labels = pipeline.transfer_set
    train = pipeline.tokens[0]["token_ids"]
    n = len(train)
    assert len(tokens["token_ids"]) == len(labels) == 4 * n
    np.testing.assert_array_equal(tokens["token_ids"][:n], train)
    np.testing.assert_array_equal(labels[n:], np.repeat(pipeline.data[0][1], 3))
    copies = tokens["token_ids"][n:]
    assert 0.2 < np.mean(copies != np.repeat(train, 3, axis=0)) / np.mean(train > 4) < 0.8
    logits = np.load(folder / "run" / "distill" / "teacher_logits.npy")
    assert logits.shape == (4 * n, len(CLASSES))


@pytest.mark.jax_heavy
def test_text_student_is_pruned_and_quantized_from_yaml(setup):
    """`prune` and `quantize` sections of a text YAML run the same compression
    stages as images, in the one `Pipeline` (chosen by `task: text`)."""
    from kd_keras.pipeline import Pipeline

    config, folder = setup
    config["teacher"]["epochs"] = 0
    config["general"] = {"epochs": 0}
    config["prune"] = {"final_sparsity": 0.5, "epochs": 1, "batch_size": 8, "ramp": 0.5}
    config["quantize"] = {"modes": ["dynamic"]}
    config["export"].update(tflite=["float"], onnx=False)
    config["bench"] = {"sequence_lengths": [SEQ], "runs": 2, "warmup": 1}
    pipeline = Pipeline(load_text_config(write_yaml(folder, config)))
    assert pipeline.task.name == "text" and pipeline.stages == TEXT_STAGES
    results = pipeline.run()
    run = folder / "run"

    # The pruned student is the keras-hub classifier again (its preprocessor
    # is what export saves), its pruned kernels half zeros, counted here.
    pruned = keras.saving.load_model(results["prune"]["student"], compile=False)
    student = keras.saving.load_model(results["distill"]["student"], compile=False)
    assert type(pruned) is type(student) and pruned.preprocessor is not None
    sparsity = json.loads((run / "prune" / "sparsity.json").read_text())
    names = [row["name"] for row in sparsity["layers"] if row["pruned"]]
    assert "logits" in names
    # The encoder blocks (attention and feed-forward kernels) and the
    # embedding tables are pruned too, not only the layers of the graph.
    assert {"transformer_layer_0", "transformer_layer_1", "token_embedding"} <= set(names)
    by_name = {layer.name: layer for layer in pruned._flatten_layers(include_self=False)}
    kernels = [numpy_(by_name[n].weights[0]) for n in names]
    assert np.mean(np.concatenate([k.ravel() == 0 for k in kernels])) == pytest.approx(0.5, 0.02)
    weights = [numpy_(w).ravel() for n in names for w in by_name[n].weights]
    zeros = np.mean(np.concatenate(weights) == 0)  # the biases stay dense
    assert zeros == pytest.approx(results["prune"]["sparsity"])
    # Written back weight for weight: the stripped Functional copy, its
    # weights perturbed, and the classifier it is adopted into agree.
    (_, _), (x_test, y_test) = load_text_data(pipeline.config["data"])
    tokens = text.tokenize(pipeline.task.teacher, x_test)
    with text.without_preprocessor(student):
        copy = pruning.strip_pruning(pruning.prune_low_magnitude(student))
    rng = np.random.default_rng(0)
    copy.set_weights([w + rng.normal(0, 0.1, w.shape) for w in copy.get_weights()])
    adopted = pipeline.task.adopt(copy, pipeline.task.load_student(results["distill"]["student"]))
    with text.without_preprocessor(adopted):
        np.testing.assert_allclose(
            numpy_(adopted(tokens, training=False)), numpy_(copy(tokens, training=False)), atol=1e-5
        )

    report = json.loads((run / "report.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert list(rows) == ["teacher", "student", "student_pruned"]
    with text.without_preprocessor(pruned):
        expected = np.mean(numpy_(pruned(tokens, training=False)).argmax(-1) == y_test)
    assert rows["student_pruned"]["accuracy"] == pytest.approx(expected)
    if TF:
        # quantize.modes adds the dynamic-range file of the pruned student only.
        artifacts = results["export"]["artifacts"]
        assert set(artifacts["student"]) == {"float"}
        assert set(artifacts["student_pruned"]) == {"float", "dynamic"}
        from kd_keras.runtime import TFLiteRunner

        path = artifacts["student_pruned"]["dynamic"]["path"] or pytest.fail("parity failed")
        logits = TFLiteRunner(path).predict(tokens)
        assert rows["student_pruned"]["dynamic"]["accuracy"] == pytest.approx(
            np.mean(logits.argmax(-1) == y_test)
        )
        assert "| student_pruned |" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"quantize": {"method": "qat"}}, "text student quantizes post-training only"),
        ({"quantize": {"modes": ["int8"]}}, "'quantize.modes' ['int8']: a text student"),
        ({"prune": {"filters": 0.5}}, "'prune.filters' removes convolution filters"),
        ({"prune": {"distill": True}}, "'prune.distill' is not available for text"),
        ({"prune": {"final_sparsity": 0.5, "m_by_n": "2:4"}}, "exclude each other"),
        ({"prune": {"epoch": 2}}, "unknown key 'prune.epoch'; did you mean 'prune.epochs'"),
    ],
)
def test_text_compression_sections_are_checked(tmp_path, change, message):
    config = {"task": "text", "data": {"name": "bbc"}, **change}
    with pytest.raises(ConfigError) as err:
        load_text_config(write_yaml(tmp_path, config))
    assert message in str(err.value)


def test_text_compression_defaults_leave_the_recipe_as_it_was(tmp_path):
    config = load_text_config(write_yaml(tmp_path, {"task": "text", "data": {"name": "bbc"}}))
    assert config["prune"]["enabled"] is False and config["quantize"]["modes"] == []
    given = {"task": "text", "data": {"name": "bbc"}, "prune": {"epochs": 1}}
    config = load_text_config(write_yaml(tmp_path, given))
    assert config["prune"]["enabled"] is True and config["prune"]["final_sparsity"] == 0.5


# -- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"studnet": {}}, "unknown key 'studnet'; did you mean 'student'"),
        ({"teacher": {"sequence_lenght": 8}}, "'teacher.sequence_lenght'; did you mean"),
        ({"distill": {"temperature": 0}}, "'distill.temperature' must be a number > 0"),
        ({"distill": {"alpha": 1.5}}, "'distill.alpha' must be a number in [0, 1]"),
        ({"data": {"name": "imdb"}}, "'data.name' must be one of ['bbc', 'vader']"),
        ({"data": None}, "missing section 'data'"),
        ({"task": "vision"}, "'task' must be 'text'"),
        ({"student": {"hidden_dim": 10, "num_heads": 3}}, "'student.hidden_dim' (10)"),
        ({"student": {"num_layers": 2, "layer_map": [1]}}, "'student.layer_map'"),
        ({"general": {"hidden": False, "attention": False, "embedding": False}}, "general.epochs"),
        ({"export": {"tflite": ["int8"]}}, "'export.tflite' must be a list of float / dynamic"),
        ({"bench": {"threads": []}}, "'bench.threads'"),
        ({"augment": {"copies": -1}}, "'augment.copies' must be an integer >= 0"),
        ({"augment": {"rate": 1.0}}, "'augment.rate' must be a number in (0, 1)"),
        ({"student": {"init_from_teacher": "svd"}}, "'student.init_from_teacher' must be"),
    ],
)
def test_bad_keys_are_named(tmp_path, change, message):
    config = {"task": "text", "data": {"name": "bbc"}}
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None or k != "data"}
    path = write_yaml(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_text_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_defaults_are_the_recipe(tmp_path):
    config = load_text_config(write_yaml(tmp_path, {"task": "text", "data": {"name": "bbc"}}))
    assert config["teacher"]["preset"] is None  # MiniLM-L6
    assert (config["student"]["num_layers"], config["student"]["hidden_dim"]) == (2, 96)
    assert (config["distill"]["temperature"], config["distill"]["alpha"]) == (2.0, 0.5)
    assert config["bench"]["sequence_lengths"] == [128]
    for name in ("missing.yaml", "broken.yaml"):
        (tmp_path / "broken.yaml").write_text("task: [text")
        with pytest.raises(ConfigError, match="does not exist|not valid YAML"):
            load_text_config(tmp_path / name)


def test_sizes_the_teacher_cannot_take_fail_before_training(setup):
    config, folder = setup
    config["export"]["enabled"] = False
    config["teacher"]["sequence_length"] = SEQ + 8
    with pytest.raises(ConfigError, match="'teacher.sequence_length'.*maximum sequence length 8"):
        TextPipeline(validate_text_config(config)).run()
    config["teacher"]["sequence_length"] = SEQ
    config["student"].update(hidden_dim=32, num_heads=2, init_from_teacher=True)
    with pytest.raises(ConfigError, match="'student' does not fit.*init_from_teacher=False"):
        TextPipeline(validate_text_config(config)).run()
    assert not (folder / "run" / "teacher").exists()


@pytest.mark.skipif(TF, reason="the refusal is for backends that cannot export")
def test_export_on_other_backends_is_refused_before_training(setup):
    config, folder = setup
    config["export"]["enabled"] = True
    with pytest.raises(ConfigError, match="'export.enabled'.*KERAS_BACKEND=tensorflow"):
        TextPipeline(validate_text_config(config)).run()
    assert not (folder / "run" / "teacher").exists()


def test_report_ratios_to_the_teacher():
    parity = {"passed": True, "criterion": "max_abs_diff", "max_abs_diff": 2e-6}
    report = {
        "command": "kd-keras run x.yaml",
        "backend": "tensorflow",
        "data": {"name": "bbc", "train": 10, "test": 5, "classes": 5},
        "sequence_length": 128,
        "stage_seconds": {"teacher": 12.0},
        "rows": [
            {
                "model": "teacher",
                "accuracy": 0.9,
                "params": 1000,
                "float": {"size_mb": 4.0, "parity": parity, "p50_ms": {"128": {"1": 10.0}}},
            },
            {
                "model": "student",
                "accuracy": 0.81,
                "params": 125,
                "float": {"size_mb": 0.5, "parity": parity, "p50_ms": {"128": {"1": 2.0}}},
            },
        ],
    }
    lines = render_ratio_report(report).splitlines()
    assert lines[-1] == (
        "| student | 0.8100 (0.90×) | 125 (8.0×) | 0.50 | - | PASS 2.0e-06 | 2.00 (5.0×) |"
    )
    assert "float p50 ms, L=128, 1 thr (teacher ÷)" in lines[-4]


# -- TextDistiller .keras round trip -----------------------------------------------


@pytest.mark.jax_heavy
def test_text_distiller_round_trip_keeps_outputs_loss_terms_and_training(tmp_path):
    teacher = tiny_classifier()
    student = text.build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1, dropout=0.0)
    terms = text.tinybert_losses(teacher, student)
    distiller = text.TextDistiller(student, teacher, losses=terms, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    x = token_inputs([1, 2, 3, 4, 5, 6] * 2, seed=3)
    y = (x["token_ids"][:, 1] % 3).astype("int32")
    distiller.fit(x, y, epochs=1, batch_size=6, verbose=0)
    distiller.save(tmp_path / "distiller.keras")

    loaded = keras.saving.load_model(tmp_path / "distiller.keras", safe_mode=True)
    assert isinstance(loaded, text.TextDistiller)
    np.testing.assert_array_equal(numpy_(loaded(x)), numpy_(distiller(x)))
    np.testing.assert_array_equal(
        numpy_(loaded.compute_loss(x, y, loaded(x), training=False)),
        numpy_(distiller.compute_loss(x, y, distiller(x), training=False)),
    )
    assert [t.name for t in loaded.distillation_terms] == [t.name for t in terms]
    assert all(t.attached for t in loaded.distillation_terms)
    # The projections of the hidden-state terms came back too.
    for a, b in zip(loaded.distillation_terms[1].weights, terms[1].weights):
        np.testing.assert_array_equal(numpy_(a), numpy_(b))
    # One tokenizer, as build_student made it (its vocabulary is stored once).
    assert loaded.student.preprocessor.tokenizer is loaded.teacher.preprocessor.tokenizer
    vocabulary = teacher.preprocessor.tokenizer.get_vocabulary()
    assert loaded.student.preprocessor.tokenizer.get_vocabulary() == vocabulary

    # Training goes on from the saved optimizer state: the same next epoch.
    for model in (loaded, distiller):
        model.fit(x, y, epochs=1, batch_size=6, shuffle=False, verbose=0)
    for a, b in zip(loaded.student.weights, distiller.student.weights):
        np.testing.assert_allclose(numpy_(a), numpy_(b), atol=1e-5, err_msg=a.path)

    # Saved with detached terms (as after a fit stage), it loads and re-attaches.
    for term in distiller.distillation_terms:
        term.detach()
    distiller.save(tmp_path / "detached.keras")
    again = keras.saving.load_model(tmp_path / "detached.keras")
    # atol: detached, the original runs the fused attention kernel again.
    np.testing.assert_allclose(numpy_(again(x)), numpy_(distiller(x)), atol=1e-6)
    assert all(t.attached for t in again.distillation_terms)


def test_kd_keras_run_dispatches_text_files(tmp_path, capsys):
    from kd_keras.cli import main

    path = write_yaml(tmp_path, {"task": "text", "data": {"name": "bbc"}, "distil": {}})
    assert main(["run", str(path)]) == 2
    assert "unknown key 'distil'; did you mean 'distill'" in capsys.readouterr().err
