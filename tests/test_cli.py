"""The `kd-keras` command line: parsing, validation, version, plug-in commands."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap

import pytest

import kd_keras
from kd_keras import cli, demo


def test_demo_defaults_come_from_the_demo_module():
    args = cli.build_parser().parse_args(["demo"])
    assert args.command == "demo"
    assert args.func is cli._run_demo
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


def test_demo_refuses_existing_output_before_training(tmp_path):
    (tmp_path / demo.JSON_NAME).write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        cli.main(["demo", "--out", str(tmp_path)])
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


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A real module on sys.path that registers a `hello` sub-command, in the
    shape `kd_keras.pipeline.cli_commands` is expected to have."""
    (tmp_path / "kdk_test_commands.py").write_text(
        textwrap.dedent(
            """
            def _hello(args):
                print(f"hello {args.who}")
                return 3

            def register(subparsers):
                parser = subparsers.add_parser("hello", help="say hello")
                parser.add_argument("--who", default="world")
                parser.set_defaults(func=_hello)
            """
        )
    )
    (tmp_path / "kdk_test_broken.py").write_text("import kdk_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "kdk_test_commands"


def test_pipeline_commands_are_registered_and_dispatched(plugin_module, monkeypatch, capsys):
    monkeypatch.setattr(cli, "PIPELINE_COMMANDS", plugin_module)
    assert cli.main(["hello", "--who", "kd"]) == 3
    assert capsys.readouterr().out.strip() == "hello kd"
    # The built-in command is still there.
    assert cli.build_parser().parse_args(["demo"]).command == "demo"


def test_missing_pipeline_module_is_ignored_but_broken_one_raises(plugin_module, monkeypatch):
    monkeypatch.setattr(cli, "PIPELINE_COMMANDS", "kd_keras.no_such_package.cli_commands")
    assert cli.build_parser().parse_args(["demo"]).command == "demo"
    monkeypatch.setattr(cli, "PIPELINE_COMMANDS", "kdk_test_broken")
    with pytest.raises(ModuleNotFoundError, match="kdk_no_such_dependency"):
        cli.build_parser()


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
    from kd_keras.pipeline import cli_commands

    (tmp_path / "kdk_text_pipeline.py").write_text(
        textwrap.dedent(
            """
            import json, pathlib

            def run_text_pipeline(config_path, run_dir, rerun_from):
                pathlib.Path(run_dir, "called.json").write_text(
                    json.dumps([str(config_path), str(run_dir), rerun_from]))
                return {"bench": {"markdown": "report.md"}}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_commands, "TEXT_PIPELINE", "kdk_text_pipeline")
    config = tmp_path / "text.yaml"
    # Not an image config at all: the text pipeline validates its own keys.
    config.write_text("task: text\ndata: {name: bbc}\nstudent: {num_layers: 2}\n")
    argv = ["run", str(config), "--run-dir", str(tmp_path), "--rerun-from", "distill"]
    assert cli.main(argv) == 0
    assert (tmp_path / "called.json").read_text() == f'["{config}", "{tmp_path}", "distill"]'
    assert "report: report.md" in capsys.readouterr().err


def test_text_task_without_the_text_pipeline_says_so(tmp_path, monkeypatch, capsys):
    from kd_keras.pipeline import cli_commands

    monkeypatch.setattr(cli_commands, "TEXT_PIPELINE", "kd_keras.no_such_text.pipeline")
    config = tmp_path / "text.yaml"
    config.write_text("task: text\n")
    assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "has 'task: text'" in err and "kd_keras.no_such_text.pipeline" in err


def test_run_reports_a_bad_key_and_exits_2(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text("data: {name: digits}\nteacher: {builder: cnn_teacher}\n"
                      "student: {builder: cnn_student}\nprune: {m_by_n: '3:2'}\n")  # fmt: skip
    assert cli.main(["run", str(config)]) == 2
    assert "'prune.m_by_n' must be 'M:N'" in capsys.readouterr().err
