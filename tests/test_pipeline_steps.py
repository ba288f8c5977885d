"""`kd-keras distill / prune / quantize` end to end on digits, through
`kd_keras.cli.main`, with the written files checked by number; and their
argument errors, reported before any training."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from kd_keras import cli
from kd_keras.data import load_digits
from kd_keras.models import cnn_teacher

TF_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFLite conversion needs TensorFlow"
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits):
    """A trained digits teacher and a distilled student, shared by the tests
    (module scope: each is trained once)."""
    folder = tmp_path_factory.mktemp("steps")
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    teacher = cnn_teacher((8, 8, 1), filters=(8, 16), dense_units=32)
    teacher.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=6, batch_size=16, verbose=0)
    teacher.save(folder / "teacher.keras")
    code = cli.main(
        [
            "distill",
            "--teacher", str(folder / "teacher.keras"),
            "--student-builder", "cnn_student",
            "--data", "digits",
            "--epochs", "8",
            "--batch-size", "16",
            "--learning-rate", "3e-3",
            "--temperature", "2",
            "--alpha", "0.5",
            "--out", str(folder / "student.keras"),
        ]
    )  # fmt: skip
    assert code == 0
    return folder


def _accuracy(model, data):
    _, (xe, ye) = data
    logits = keras.ops.convert_to_numpy(model.predict(xe, verbose=0))
    return float(np.mean(logits.argmax(-1) == ye))


def test_distill_writes_an_accurate_student(workdir, digits, capsys):
    student = keras.saving.load_model(workdir / "student.keras")
    assert student.name == "student" and student.output_shape == (None, 10)
    assert _accuracy(student, digits) >= 0.85


def test_existing_output_is_refused_and_kept(workdir, capsys):
    before = (workdir / "student.keras").read_bytes()
    code = cli.main(
        [
            "distill", "--teacher", str(workdir / "teacher.keras"),
            "--student-builder", "cnn_student", "--data", "digits",
            "--out", str(workdir / "student.keras"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (workdir / "student.keras").read_bytes() == before


def _kept(size, sparsity):
    # TFMOT's rule, in float32: k = max(round(size * (1 - s)), 1), half to even.
    return max(int(np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))), 1)


def test_prune_reaches_the_exact_sparsity(workdir, digits, capsys):
    out = workdir / "pruned.keras"
    code = cli.main(
        [
            "prune", str(workdir / "student.keras"), "--data", "digits",
            "--sparsity", "0.5", "--epochs", "2", "--batch-size", "16", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"conv2 \*\s+Conv2D\s+1152\s+576\s+50\.00%", printed), printed
    pruned = keras.saving.load_model(out)
    for name in ("conv1", "conv2", "logits"):
        kernel = keras.ops.convert_to_numpy(pruned.get_layer(name).kernel)
        assert np.count_nonzero(kernel) == _kept(kernel.size, 0.5), name
    assert _accuracy(pruned, digits) >= 0.7


@pytest.mark.parametrize("lr_schedule", ["hold-cosine", "constant"])
def test_prune_student_ramps_then_holds_sparsity_and_rate(lr_schedule):
    from kd_keras.pipeline import steps
    from tiny import data, mlp

    x, y = data(n=256)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            wrapper = self.model.get_layer("prune_low_magnitude_hidden")
            seen.append(
                (
                    float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                    float(np.mean(keras.ops.convert_to_numpy(wrapper.masks[0]) == 0)),
                )
            )

    _, stripped, _ = steps.prune_student(
        mlp(),
        x,
        y,
        final_sparsity=0.75,
        epochs=4,
        batch_size=32,
        learning_rate=1e-3,
        ramp=0.5,
        lr_schedule=lr_schedule,
        callbacks=[Record()],
        verbose=0,
    )
    rates, zeros = np.array(seen).T
    t = np.arange(32)  # 8 steps per epoch, ramp to step 16 (16 mask updates)
    decay = np.clip(t - 16, 0, 16) / 16
    expected = 1e-3 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * decay)))
    if lr_schedule == "constant":
        expected = np.full(32, 1e-3)
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    # The mask seen at step t was set by the update at step t - 1.
    assert zeros[17:].min() == zeros[17:].max() == pytest.approx(0.75, abs=0.01)
    assert zeros[8] < 0.75
    for name in ("hidden", "logits"):
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(name).kernel)
        assert np.count_nonzero(kernel) == _kept(kernel.size, 0.75), name


def test_prune_m_by_n_while_distilling(workdir, digits, capsys):
    out = workdir / "pruned_2_4.keras"
    code = cli.main(
        [
            "prune", str(workdir / "student.keras"), "--data", "digits", "--m-by-n", "2:4",
            "--teacher", str(workdir / "teacher.keras"), "--epochs", "2",
            "--batch-size", "16", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "soft_target_loss" in captured.out + captured.err  # trained by the Distiller
    assert "keeping ['conv1'] dense" in captured.err
    pruned = keras.saving.load_model(out)
    # Groups of 4 consecutive weights along the input axis: exactly 2 zeros.
    for name, axis in (("conv2", 2), ("logits", 0)):
        kernel = keras.ops.convert_to_numpy(pruned.get_layer(name).kernel)
        groups = np.moveaxis(kernel, axis, -1).reshape(-1, 4)
        assert np.all((groups == 0).sum(-1) == 2), name
    conv1 = keras.ops.convert_to_numpy(pruned.get_layer("conv1").kernel)
    assert np.count_nonzero(conv1) == conv1.size
    assert _accuracy(pruned, digits) >= 0.7


@TF_ONLY
def test_quantize_qat_with_teacher_gives_a_fully_int8_tflite(workdir, digits, capsys):
    from kd_keras.bench import evaluate_accuracy
    from kd_keras.export import load_report
    from kd_keras.quantization.convert import tflite_ops, tflite_tensor_types

    out = workdir / "student_int8.tflite"
    code = cli.main(
        [
            "quantize", str(workdir / "student.keras"), "--data", "digits",
            "--method", "qat", "--mode", "int8", "--teacher", str(workdir / "teacher.keras"),
            "--epochs", "1", "--batch-size", "16", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "[PASS] tflite parity" in printed
    content = out.read_bytes()
    assert set(tflite_tensor_types(content).values()) <= {"int8", "int32"}
    assert "QUANTIZE" not in {op["op"] for op in tflite_ops(content)}
    report = load_report(out)
    assert report.quantization == "qat" and report.top1_agreement >= 0.99
    _, (xe, ye) = digits
    assert evaluate_accuracy(str(out), xe, ye) >= 0.85


@TF_ONLY
def test_quantize_ptq_dynamic_keeps_float_activations(workdir, capsys):
    from kd_keras.quantization.convert import tflite_tensor_types

    out = workdir / "student_dynamic.tflite"
    code = cli.main(
        [
            "quantize", str(workdir / "student.keras"), "--data", "digits",
            "--method", "ptq", "--mode", "dynamic", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    types = set(tflite_tensor_types(out.read_bytes()).values())
    assert {"int8", "float32"} <= types

    # The phone layout: batch 1, static shapes, no tensor names.
    from ai_edge_litert.interpreter import Interpreter

    small = workdir / "student_dynamic_b1.tflite"
    argv = ["quantize", str(workdir / "student.keras"), "--data", "digits", "--mode", "dynamic"]
    assert cli.main([*argv, "--out", str(small), "--tflite-batch", "1", "--strip-strings"]) == 0
    interpreter = Interpreter(model_path=str(small))
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 8, 8, 1]
    assert not any(d["name"] for d in interpreter.get_tensor_details())
    assert small.stat().st_size < out.stat().st_size


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "qat", "--mode", "dynamic"], "--method qat trains int8 ranges"),
        (["--method", "ptq", "--teacher", "{t}"], "--teacher distills during QAT"),
        (["--data", "cifar"], "--data 'cifar' is not digits, fashion_mnist"),
        (["--out", "{w}/x.keras"], "--out .*must be a .tflite file"),
        (["--method", "qat", "--teacher", "{w}/none.keras"], "--teacher .*no such file"),
    ],
)
@TF_ONLY
def test_quantize_argument_errors(workdir, argv, message, capsys):
    base = ["quantize", str(workdir / "student.keras"), "--data", "digits"]
    out = ["--out", str(workdir / "never.tflite")]
    argv = [a.format(t=workdir / "teacher.keras", w=workdir) for a in argv]
    if "--out" in argv:
        out = []
    if "--data" in argv:
        base = base[:2]
    assert cli.main(base + argv + out) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (workdir / "never.tflite").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sparsity", "0.5", "--m-by-n", "2:4"], "not allowed with argument"),
        (["--m-by-n", "4:2"], r"m_by_n must be 'M:N' with 1 <= M < N"),
        (["--sparsity", "1.0"], r"must be a fraction of zeros in \[0, 1\)"),
        ([], "one of the arguments --sparsity --m-by-n --filters is required"),
    ],
)
def test_prune_argument_errors_exit_2(workdir, argv, message, capsys):
    base = ["prune", str(workdir / "student.keras"), "--data", "digits", "--out", "p.keras"]
    with pytest.raises(SystemExit) as info:
        cli.main(base + argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_distill_needs_exactly_one_student(workdir, capsys):
    base = ["distill", "--teacher", str(workdir / "teacher.keras"), "--data", "digits"]
    with pytest.raises(SystemExit):
        cli.main([*base, "--out", "s.keras"])
    assert "one of the arguments --student --student-builder is required" in (
        capsys.readouterr().err
    )
    missing = str(Path(workdir) / "missing.keras")
    code = cli.main([*base, "--student", missing, "--out", str(workdir / "s2.keras")])
    assert code == 2
    assert f"--student {missing}: no such file" in capsys.readouterr().err


def test_data_argument_forms(tmp_path, capsys):
    from kd_keras.pipeline import steps

    assert steps.data_spec("digits") == {"name": "digits", "test_fraction": 0.25}
    assert steps.data_spec(str(tmp_path))["name"] == "image_folder"
    np.savez(tmp_path / "d.npz", x_train=np.zeros((2, 3)), y_train=[0, 1], x_test=[], y_test=[])
    assert steps.data_spec(str(tmp_path / "d.npz")) == {
        "name": "npz",
        "path": str(tmp_path / "d.npz"),
    }
    with pytest.raises(ValueError, match="no such .npz file"):
        steps.data_spec(str(tmp_path / "missing.npz"))
    # An existing artifact: the command line checks its files first.
    (tmp_path / "model.tflite").write_bytes(b"")
    assert cli.main(["bench", str(tmp_path / "model.tflite"), "--data", "cifar"]) == 2
    assert "kd-keras bench: --data 'cifar' is not digits" in capsys.readouterr().err


def test_stage_fingerprints_chain_through_later_stages():
    """A changed section invalidates its stage and every later one, not earlier ones."""
    from kd_keras.pipeline import Pipeline, TextPipeline

    config = {
        "seed": 0,
        "data": {"name": "digits"},
        "teacher": {"epochs": 1},
        "student": {},
        "distill": {"epochs": 1},
        "prune": {"final_sparsity": 0.5},
        "quantize": {},
        "export": {},
        "bench": {"runs": 10},
    }
    before = Pipeline(config, run_dir="unused").fingerprints()
    for section, first in [("prune", "prune"), ("bench", "bench"), ("seed", "teacher")]:
        changed = dict(config, **{section: {"changed": True}})
        after = Pipeline(changed, run_dir="unused").fingerprints()
        index = Pipeline.stages.index(first)
        assert [before[s] == after[s] for s in Pipeline.stages] == (
            [True] * index + [False] * (len(Pipeline.stages) - index)
        ), section
    text = dict(config, general={}, augment=None)
    base = TextPipeline(text, run_dir="unused").fingerprints()
    augmented = TextPipeline(dict(text, augment={"copies": 2}), run_dir="unused").fingerprints()
    assert [base[s] == augmented[s] for s in TextPipeline.stages] == [True] + [False] * (
        len(TextPipeline.stages) - 1
    )
