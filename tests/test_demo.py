"""The digits demo: a fast run of its pieces on every backend, and the full
demo end to end (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kd_keras import cli, demo
from kd_keras.cli import commands
from kd_keras.data import load_digits
from kd_keras.models import cnn_student, cnn_teacher

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_digits(train: int = 100, test: int = 100):
    (x_train, y_train), (x_test, y_test) = load_digits(seed=0)
    return (x_train[:train], y_train[:train]), (x_test[:test], y_test[:test])


def tiny_teacher():
    return cnn_teacher(demo.DIGITS_SHAPE, filters=(4, 8), dense_units=16)


def tiny_student():
    return cnn_student(demo.DIGITS_SHAPE, filters=(2, 4))


def test_compare_trains_three_models_and_reports_them():
    # One batch shape everywhere (100): each function compiles once on JAX.
    data = small_digits()
    results = demo.compare(
        data, tiny_teacher, tiny_student, epochs=2, teacher_epochs=1, batch_size=100,
        validate=False,
    )
    assert [r.name for r in results] == ["teacher", "student from scratch", "distilled student"]
    teacher, scratch, distilled = results
    assert teacher.params == tiny_teacher().count_params()
    assert scratch.params == distilled.params == tiny_student().count_params()
    for r, epochs in zip(results, (1, 2, 2)):
        assert 0.0 <= r.test_accuracy <= 1.0
        assert r.train_seconds > 0
        assert len(r.history["loss"]) == epochs
        assert "val_accuracy" not in r.history
    # The distilled run logs each term; caching is timed and counted.
    assert {"student_loss", "soft_target_loss"} <= set(distilled.history)
    assert 0 < distilled.cache_seconds < distilled.train_seconds
    assert scratch.cache_seconds == 0.0


def test_accuracy_is_top1_of_logits():
    import keras

    inputs = keras.Input((3,))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    x = np.array([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 3.0, 2.0]], "float32")
    assert demo.accuracy(identity, x, np.array([1, 0, 2, 2])) == 0.75


def handmade_results():
    """Results built by hand: the table and the writers only read them."""
    return [
        demo.Result("teacher", 0.99, 53290, 12.5, {"val_accuracy": [0.5, 0.99]}),
        demo.Result("student from scratch", 0.95, 1970, 3.0, {"val_accuracy": [0.4, 0.95]}),
        demo.Result(
            "distilled student", 0.97, 1970, 3.5,
            {"val_accuracy": [0.6, 0.97], "student_loss": [1.0, 0.2],
             "soft_target_loss": [9.0, 1.0]},
            cache_seconds=0.5,
        ),
    ]


def test_print_table_shows_every_model_and_the_gain(capsys):
    demo.print_table(handmade_results(), title="t")
    out = capsys.readouterr().out
    for needle in ("teacher", "student from scratch", "distilled student", "53,290", "1,970"):
        assert needle in out
    assert "99.00" in out and "95.00" in out and "97.00" in out
    assert "+2.00 points" in out


def test_write_outputs_atomically_and_refuses_to_overwrite(tmp_path):
    results = handmade_results()
    out = tmp_path / "run"
    json_path, png_path = demo.write_outputs(results, {"epochs": 2}, out)
    payload = json.loads(json_path.read_text())
    assert payload["config"] == {"epochs": 2}
    assert [r["name"] for r in payload["results"]] == [r.name for r in results]
    assert payload["results"][2]["test_accuracy"] == 0.97
    assert payload["results"][2]["history"]["soft_target_loss"] == [9.0, 1.0]
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in out.iterdir()) == [demo.JSON_NAME, demo.PNG_NAME]

    with pytest.raises(FileExistsError, match="overwrite"):
        demo.write_outputs(results, {"epochs": 3}, out)
    assert json.loads(json_path.read_text())["config"] == {"epochs": 2}
    demo.write_outputs(results, {"epochs": 3}, out, overwrite=True)
    assert json.loads(json_path.read_text())["config"] == {"epochs": 3}
    assert sorted(p.name for p in out.iterdir()) == [demo.JSON_NAME, demo.PNG_NAME]


def test_out_must_be_a_folder(tmp_path):
    file = tmp_path / "results.json"
    file.write_text("")
    with pytest.raises(FileExistsError, match="give a folder"):
        demo.output_paths(file)


def test_cli_parses_demo_arguments_into_a_runnable_call():
    args = cli.build_parser().parse_args(["demo", "--epochs", "2", "--seed", "3"])
    assert commands.COMMANDS[args.command] is commands.run_demo
    assert (args.epochs, args.seed) == (2, 3)


@pytest.mark.slow
def test_demo_end_to_end_distilled_beats_scratch(tmp_path, capsys):
    """`kd-keras demo --out DIR` with its defaults on digits."""
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "distilled student" in out
    payload = json.loads((tmp_path / demo.JSON_NAME).read_text())
    accuracy = {r["name"]: r["test_accuracy"] for r in payload["results"]}
    teacher = accuracy["teacher"]
    scratch = accuracy["student from scratch"]
    distilled = accuracy["distilled student"]
    print(f"teacher {teacher:.4f} scratch {scratch:.4f} distilled {distilled:.4f}")
    assert distilled >= scratch
    assert teacher > distilled
    assert teacher > scratch
    assert scratch > 0.85  # the student does learn on its own
    assert (tmp_path / demo.PNG_NAME).read_bytes()[:8] == PNG_SIGNATURE
