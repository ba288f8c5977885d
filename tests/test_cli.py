"""The `kd-keras` command line: parsing, validation, version, help, user errors
without tracebacks, start-up cost."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

import kd_keras
from kd_keras import cli, demo
from kd_keras.cli import commands

ROOT = Path(__file__).resolve().parents[1]


def test_demo_defaults_come_from_the_demo_module():
    args = cli.build_parser().parse_args(["demo"])
    assert args.command == "demo"
    assert commands.COMMANDS[args.command] is commands.run_demo
    assert (args.epochs, args.teacher_epochs, args.seed) == (
        demo.EPOCHS,
        demo.TEACHER_EPOCHS,
        demo.SEED,
    )
    assert (args.temperature, args.alpha, args.batch_size) == (
        demo.TEMPERATURE,
        demo.ALPHA,
        demo.BATCH_SIZE,
    )
    assert args.out is None
    assert args.overwrite is False


def test_qat_distills_with_its_tuned_soft_target_defaults():
    from kd_keras.pipeline import steps

    parser = cli.build_parser()
    quantize = parser.parse_args(["quantize", "m.keras", "--data", "digits", "--out", "q.tflite"])
    assert (quantize.temperature, quantize.alpha) == (
        steps.DEFAULT_QAT_TEMPERATURE,
        steps.DEFAULT_QAT_ALPHA,
    )
    distill = parser.parse_args(
        ["distill", "--teacher", "t.keras", "--student", "s.keras", "--data", "digits",
         "--out", "d.keras"]
    )  # fmt: skip
    assert (distill.temperature, distill.alpha) == (steps.DEFAULT_TEMPERATURE, steps.DEFAULT_ALPHA)


def test_demo_options_parse():
    args = cli.build_parser().parse_args(
        "demo --epochs 3 --teacher-epochs 4 --seed 7 --temperature 2.5 --alpha 0.5 "
        "--batch-size 16 --out runs/x --overwrite".split()
    )
    assert (args.epochs, args.teacher_epochs, args.seed) == (3, 4, 7)
    assert (args.temperature, args.alpha, args.batch_size) == (2.5, 0.5, 16)
    assert (args.out, args.overwrite) == ("runs/x", True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "must be an integer >= 1, got 0"),
        (["demo", "--temperature", "0"], "must be a number > 0, got 0"),
        (["demo", "--temperature", "nan"], "must be a number > 0, got nan"),
        (["demo", "--alpha", "1.5"], r"must be a number in \[0, 1\], got 1.5"),
        (["demo", "--alpha", "-0.1"], r"must be a number in \[0, 1\], got -0.1"),
        (["demo", "--epochs", "two"], "must be an integer >= 1, got two"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kd-keras {kd_keras.__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: kd-keras" in err
    assert "demo" in err


def test_demo_refuses_existing_output_before_training(tmp_path, capsys):
    (tmp_path / demo.JSON_NAME).write_text("{}")
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    assert (tmp_path / demo.JSON_NAME).read_text() == "{}"
    assert not (tmp_path / demo.PNG_NAME).exists()


def test_console_script_points_at_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "kd-keras"]
    assert entry.value == "kd_keras.cli:main"
    assert entry.load() is cli.main


@pytest.mark.slow  # a fresh interpreter imports the whole stack again
def test_module_entry_point_runs_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, "-m", "kd_keras.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kd-keras {kd_keras.__version__}"


def test_registered_sub_commands():
    parser = cli.build_parser()
    for command in ("run", "distill", "prune", "quantize", "export", "bench"):
        assert parser.parse_args([command, *_minimal(command)]).command == command


def _minimal(command):
    return {
        "run": ["p.yaml"],
        "distill": ["--teacher", "t.keras", "--student-builder", "cnn_student",
                    "--data", "digits", "--out", "s.keras"],
        "prune": ["s.keras", "--data", "digits", "--sparsity", "0.5", "--out", "p.keras"],
        "quantize": ["s.keras", "--data", "digits", "--out", "q.tflite"],
        "export": ["s.keras", "--out", "s.tflite"],
        "bench": ["s.tflite"],
    }[command]  # fmt: skip


def test_text_task_is_handed_to_the_text_pipeline(tmp_path, monkeypatch, capsys):
    from kd_keras.pipeline import pipeline as text_pipeline

    def run_text_pipeline(config_path, run_dir, rerun_from):
        (tmp_path / "called.json").write_text(
            json.dumps([str(config_path), str(run_dir), rerun_from])
        )
        return {"bench": {"markdown": "report.md"}}

    monkeypatch.setattr(text_pipeline, "run_text_pipeline", run_text_pipeline)
    config = tmp_path / "text.yaml"
    # Not an image config at all: the text pipeline validates its own keys.
    config.write_text("task: text\ndata: {name: bbc}\nstudent: {num_layers: 2}\n")
    argv = ["run", str(config), "--run-dir", str(tmp_path), "--rerun-from", "distill"]
    assert cli.main(argv) == 0
    assert (tmp_path / "called.json").read_text() == f'["{config}", "{tmp_path}", "distill"]'
    assert "report: report.md" in capsys.readouterr().err


def test_run_reports_a_bad_key_and_exits_2(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text("data: {name: digits}\nteacher: {builder: cnn_teacher}\n"
                      "student: {builder: cnn_student}\nprune: {m_by_n: '3:2'}\n")  # fmt: skip
    assert cli.main(["run", str(config)]) == 2
    assert "'prune.m_by_n' must be 'M:N'" in capsys.readouterr().err


def _one_line(err: str) -> str:
    """The single line a user error prints (no traceback, no usage block)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _walk(parser, path=("kd-keras",)):
    """(command path, parser) for the parser and every sub-command's parser."""
    yield path, parser
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_command_has_a_description_and_every_option_has_help():
    commands_seen = []
    for path, parser in _walk(cli.build_parser()):
        assert parser.description, f"{' '.join(path)} has no description"
        commands_seen.append(" ".join(path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                summaries = {a.dest: a.help for a in action._choices_actions}
                assert set(summaries) == set(action.choices)
                assert all(summaries.values()), summaries
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help != argparse.SUPPRESS, (
                f"{' '.join(path)} {name} has no help"
            )
    assert len(commands_seen) == 1 + len(commands.COMMANDS)


def test_cli_defaults_are_the_librarys():
    """`kd_keras.cli.args` repeats the library's defaults so that `--help`
    needs no import of them; these must never drift apart."""
    from kd_keras.cli import args
    from kd_keras.export import onnx
    from kd_keras.pipeline import steps

    assert args.DEMO_OUTPUTS == (demo.JSON_NAME, demo.PNG_NAME)
    assert (args.DEMO_EPOCHS, args.DEMO_TEACHER_EPOCHS, args.DEMO_SEED) == (
        demo.EPOCHS,
        demo.TEACHER_EPOCHS,
        demo.SEED,
    )
    assert (args.DEMO_TEMPERATURE, args.DEMO_ALPHA, args.DEMO_BATCH_SIZE) == (
        demo.TEMPERATURE,
        demo.ALPHA,
        demo.BATCH_SIZE,
    )
    assert (args.BUILDERS, args.PTQ_MODES, args.LR_SCHEDULES) == (
        tuple(steps.BUILDERS),
        tuple(steps.PTQ_MODES),
        tuple(steps.LR_SCHEDULES),
    )
    assert (args.DEFAULT_TEMPERATURE, args.DEFAULT_ALPHA) == (
        steps.DEFAULT_TEMPERATURE,
        steps.DEFAULT_ALPHA,
    )
    assert (args.DEFAULT_QAT_TEMPERATURE, args.DEFAULT_QAT_ALPHA) == (
        steps.DEFAULT_QAT_TEMPERATURE,
        steps.DEFAULT_QAT_ALPHA,
    )
    assert args.DEFAULT_OPSET == onnx.DEFAULT_OPSET


@pytest.mark.parametrize(
    "text", ["2:4", "1:2", "3:8", "4:2", "2:2", "0:4", "2", "a:b", "2:4:8", ":"]
)
def test_m_by_n_argument_follows_the_pipeline_rule(text):
    from kd_keras.cli import args
    from kd_keras.pipeline import steps

    try:
        expected = steps.parse_m_by_n(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match="m_by_n must be 'M:N'"):
            args.m_by_n(text)
    else:
        assert args.m_by_n(text) == tuple(expected)


@pytest.fixture
def files(tmp_path):
    """An existing .tflite / .keras name, a file that is not a Keras archive,
    an existing output and a bench folder that already holds a report."""
    (tmp_path / "m.tflite").write_bytes(b"not run: the command stops before")
    # Shaped like a .keras archive; never loaded, the commands stop before.
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    (tmp_path / "corrupt.keras").write_text("<html>a download error page</html>")
    (tmp_path / "exists.tflite").write_bytes(b"old")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("old report")
    (tmp_path / "a_file").write_text("")
    return tmp_path


USER_ERRORS = [
    # (argv, the one line's pattern)
    (["export", "/nope.keras", "--out", "{t}/x.tflite"], "model /nope.keras: no such file"),
    (["bench", "/nope.tflite"], "artifact /nope.tflite: no such file"),
    (["bench", "{t}/m.txt"], "artifact .*no such file"),
    (["bench", "{t}/a_file"], r"expected a \.tflite / \.onnx / \.keras file"),
    (["bench", "{t}/m.tflite", "--runs", "0"], "--runs: must be an integer >= 1, got 0"),
    (["bench", "{t}/m.tflite", "--threads", "0"], "--threads: must be an integer >= 1, got 0"),
    (["bench", "{t}/m.tflite", "--threads", "1", "0"], "--threads: must be an integer >= 1"),
    (["bench", "{t}/m.tflite", "--warmup", "-1"], "--warmup: must be an integer >= 0, got -1"),
    (
        ["export", "{t}/m.keras", "--format", "onnx", "--opset", "5", "--out", "{t}/m.onnx"],
        "--opset: must be an ONNX opset >= 9",
    ),
    (
        ["distill", "--teacher", "{t}/corrupt.keras", "--student-builder", "cnn_student",
         "--data", "digits", "--out", "{t}/s.keras"],
        r"--teacher .*corrupt.keras: not a Keras archive",
    ),
    (["bench", "{t}/m.tflite", "--out", "{t}/report"], "already holds report.md; pass --overwrite"),
    (["bench", "{t}/m.tflite", "--out", "{t}/a_file"], "is a file; give a folder"),
    (["demo", "--out", "{t}/a_file"], "is a file; give a folder"),
    (["export", "{t}/m.keras", "--out", "{t}/exists.tflite"], "exists; pass --overwrite"),
    (["export", "{t}/m.keras", "--out", "{t}/m.onnx"], r"must be a \.tflite file"),
    (
        ["export", "{t}/m.keras", "--format", "onnx", "--quantization", "int8", "--out",
         "{t}/m.onnx"],
        "--quantization only apply to --format tflite",
    ),
    (["export", "{t}/m.keras", "--quantization", "int8", "--out", "{t}/q.tflite"], "add --data"),
    (
        ["prune", "{t}/m.keras", "--sparsity", "0.5", "--data", "digits", "--out",
         "{t}/no_folder/p.keras"],
        "folder .*no_folder does not exist",
    ),
    (
        ["quantize", "{t}/m.tflite", "--data", "digits", "--out", "{t}/q.tflite"],
        r"expected a \.keras file",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS)
def test_user_errors_are_one_line_and_exit_2(files, argv, message, capsys):
    argv = [a.format(t=files) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("kd-keras")
    assert re.search(message, line), line
    assert "overwrite=True" not in line
    # Nothing was written or replaced.
    assert (files / "exists.tflite").read_bytes() == b"old"
    assert (files / "report" / "report.md").read_text() == "old report"
    assert sorted(p.name for p in (files / "report").iterdir()) == ["report.md"]
    assert not (files / "x.tflite").exists() and not (files / "s.keras").exists()


def _probe(script: str, env_update: dict | None = None) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter, from the repository root (the
    kd_keras under test), with TensorFlow's log level left unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(env_update or {})
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


FRAMEWORKS = ("tensorflow", "keras", "jax", "torch")


def test_help_and_user_errors_import_no_framework(files):
    """`build_parser()`, every `--help` and every user error above answer
    without TensorFlow, Keras, JAX or torch being imported."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        sys.argv[0] = "kd-keras"  # what the console script's process has
        from kd_keras.cli import build_parser, main
        build_parser()
        codes = []
        for argv in [["--help"]] + [[c, "--help"] for c in {list(commands.COMMANDS)!r}] + {[
            [a.format(t=files) for a in argv] for argv, _ in USER_ERRORS
        ]!r}:
            with contextlib.redirect_stdout(io.StringIO()), \\
                    contextlib.redirect_stderr(io.StringIO()):
                try:
                    codes.append(main(argv))
                except SystemExit as exit_:
                    codes.append(exit_.code)
        frameworks = [m for m in {FRAMEWORKS!r} if m in sys.modules]
        print(json.dumps({{"codes": codes, "frameworks": frameworks}}))
        """
    )
    result = _probe(script)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    probe = json.loads(result.stdout)
    assert probe["frameworks"] == []
    help_count = 1 + len(commands.COMMANDS)
    assert probe["codes"] == [0] * help_count + [2] * len(USER_ERRORS)


def test_help_answers_within_its_time_budget():
    """`kd-keras --help` and `kd-keras CMD --help` in a fresh interpreter each.

    The budget (1.5 s) is on CPU time, which a busy machine does not inflate;
    wall time only gets a loose bound for the same reason.
    """
    for argv in [["--help"]] + [[name, "--help"] for name in commands.COMMANDS]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "kd_keras.cli", *argv],
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: kd-keras"), result.stdout
        assert result.stderr == ""
        assert cpu < 1.5, f"kd-keras {' '.join(argv)}: {cpu:.2f} s of CPU"
        assert wall < 10, f"kd-keras {' '.join(argv)}: {wall:.2f} s"


def test_import_kd_keras_registers_its_classes_quietly_and_respects_the_users_log_level():
    """A plain `import kd_keras` registers every kd_keras Keras class (so
    `keras.saving.load_model` reads pruning / QAT / Distiller files) without
    TensorFlow's C++ start-up lines; a user's own log level wins."""
    script = textwrap.dedent(
        """
        import json, os
        import kd_keras
        import keras
        names = sorted(k for k in keras.saving.get_custom_objects() if k.startswith("kd_keras>"))
        level = os.environ["TF_CPP_MIN_LOG_LEVEL"]
        print(json.dumps({"level": level, "registered": names}))
        """
    )
    result = _probe(script)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["level"] == "2"
    for name in ("Distiller", "PruneLowMagnitude", "QuantizeWrapper", "SoftTargetKD"):
        assert f"kd_keras>{name}" in probe["registered"]
    assert result.stderr == ""
    user = _probe("import os, kd_keras; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])",
                  {"TF_CPP_MIN_LOG_LEVEL": "0"})  # fmt: skip
    assert user.returncode == 0, user.stderr
    assert user.stdout.strip().splitlines()[-1] == "0"


@pytest.mark.slow  # three fresh TensorFlow imports
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow")
def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    """A command that loads TensorFlow and then stops at a bad config key
    prints that one line; `--verbose` shows whatever TensorFlow itself prints
    on import (measured here as the reference)."""
    config = tmp_path / "p.yaml"
    config.write_text("data: {name: digits}\nteacher: {builder: cnn_teacher}\nbogus: 1\n")
    env = {"KERAS_BACKEND": "tensorflow"}
    # As in the console script's process (where `import kd_keras` defers the API).
    run = "import sys; sys.argv[0] = 'kd-keras'; from kd_keras.cli import main; sys.exit(main({}))"
    quiet = _probe(run.format(["run", str(config)]), env)
    assert quiet.returncode == 2
    assert "unknown key 'bogus'" in _one_line(quiet.stderr)
    reference = _probe("import tensorflow", env).stderr.strip()
    verbose = _probe(run.format(["--verbose", "run", str(config)]), env)
    assert verbose.returncode == 2
    if reference:  # this TensorFlow build announces itself on import
        assert reference.splitlines()[0] in verbose.stderr
        assert len(verbose.stderr.strip().splitlines()) > 1
        # Each line TensorFlow printed is one the quiet filter recognises.
        from kd_keras.native_logs import NATIVE_NOISE

        for line in reference.splitlines():
            assert NATIVE_NOISE.match(line.encode()), line


def test_bench_out_never_mixes_old_and_new_report_files(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "m.keras")
    out = tmp_path / "report"
    out.mkdir()
    (out / "frontier.png").write_bytes(b"the plot of an earlier run")
    argv = ["bench", str(tmp_path / "m.keras"), "--threads", "1", "--runs", "2",
            "--warmup", "0", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    assert "already holds frontier.png" in _one_line(capsys.readouterr().err)
    assert (out / "frontier.png").read_bytes() == b"the plot of an earlier run"
    # Replaced: without --data there is no accuracy, so no frontier is drawn,
    # and the earlier plot must not stay beside the new report.
    assert cli.main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    assert json.loads((out / "report.json").read_text())["artifacts"][0]["name"] == "m.keras"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None
    or __import__("keras").backend.backend() != "tensorflow",
    reason="TFLite conversion needs the TensorFlow backend",
)
def test_export_float_tflite_with_data_for_parity(tmp_path, capsys):
    """`--data` without `--quantization` gives parity inputs only (no
    calibration set for a float model, which the converter refuses)."""
    import keras

    layers = [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    keras.Sequential(layers).save(tmp_path / "m.keras")
    out = tmp_path / "m.tflite"
    argv = ["export", str(tmp_path / "m.keras"), "--data", "digits", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "[PASS] tflite parity" in capsys.readouterr().out
    assert out.exists() and out.with_name("m.tflite.parity.json").exists()


def test_pipeline_loads_kd_keras_layers_in_a_fresh_interpreter(tmp_path):
    """`import kd_keras` no longer loads the API, so a loader reached without
    any public name (`kd-keras run` resuming at the export stage) must still
    find kd_keras's registered classes."""
    path = tmp_path / "wrapped.keras"
    saved = _probe(
        "import keras, kd_keras\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])\n"
        f"kd_keras.pruning.prune_low_magnitude(m).save({str(path)!r})"
    )
    assert saved.returncode == 0, saved.stderr
    loaded = _probe(
        "from kd_keras.pipeline import steps\n"
        f"print(type(steps.load_model({str(path)!r}).layers[0]).__name__)"
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split()[-1] == "PruneLowMagnitude"
