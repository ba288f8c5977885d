"""kd_keras.pipeline: YAML validation, and a run killed mid-distillation that
resumes without redoing finished stages."""

import os
import re
import signal
import subprocess
import sys
import time

import keras
import pytest

from kd_keras.pipeline import STAGES, ConfigError, validate_config

MINIMAL = {
    "data": {"name": "digits"},
    "teacher": {"builder": "cnn_teacher"},
    "student": {"builder": "cnn_student"},
}


def _with(**sections):
    config = {k: dict(v) for k, v in MINIMAL.items()}
    for key, value in sections.items():
        config[key] = value
    return config


def test_defaults_fill_in():
    config = validate_config(_with())
    assert config["distill"]["temperature"] == 2.0 and config["distill"]["alpha"] == 0.5
    assert config["bench"]["threads"] == [1, 2]
    assert config["quantize"]["modes"] == ["int8"] and config["prune"]["enabled"] is True
    assert config["quantize"]["method"] == "ptq" and config["quantize"]["distill"] is False
    assert config["prune"]["final_sparsity"] == 0.5 and config["prune"]["m_by_n"] is None
    assert config["prune"]["distill"] is False and config["task"] == "image"
    m_by_n = validate_config(_with(prune={"m_by_n": "2:4"}))["prune"]
    assert m_by_n["final_sparsity"] is None and m_by_n["m_by_n"] == "2:4"


def test_each_stage_distills_with_its_own_or_the_distill_settings():
    from kd_keras.pipeline import Pipeline
    from kd_keras.pipeline.steps import DEFAULT_QAT_ALPHA, DEFAULT_QAT_TEMPERATURE

    config = validate_config(
        _with(
            distill={"temperature": 3.0, "alpha": 0.4},
            prune={"distill": True, "alpha": 0.7},
            quantize={"method": "qat", "distill": True},
        )
    )
    pipeline = Pipeline(config)
    teacher = keras.Sequential()  # any object: only passed through
    picked = {
        stage: pipeline.fit_args(config[stage], teacher=teacher)
        for stage in ("distill", "prune", "quantize")
    }
    assert (picked["distill"]["temperature"], picked["distill"]["alpha"]) == (3.0, 0.4)
    # prune sets alpha and inherits the temperature from distill
    assert (picked["prune"]["temperature"], picked["prune"]["alpha"]) == (3.0, 0.7)
    assert (picked["quantize"]["temperature"], picked["quantize"]["alpha"]) == (
        DEFAULT_QAT_TEMPERATURE,
        DEFAULT_QAT_ALPHA,
    )
    assert "temperature" not in pipeline.fit_args(config["prune"], teacher=None)


def test_every_schema_key_is_documented():
    from kd_keras.pipeline import config

    for section, keys in config.SCHEMA.items():
        assert f"{section}:" in config.__doc__, section
        for key in keys if isinstance(keys, dict) else ():
            assert f"{key}:" in config.__doc__, f"{section}.{key}"


def test_examples_validate():
    from pathlib import Path

    from kd_keras.pipeline import load_config, load_text_config

    for path in sorted(Path(__file__).parent.parent.glob("examples/*.yaml")):
        (load_text_config if "task: text" in path.read_text() else load_config)(path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _with(distill={"epoch": 3}),
            r"unknown key 'distill.epoch'; did you mean 'distill.epochs'",
        ),
        (_with(distil={"epochs": 3}), r"unknown key 'distil'; did you mean 'distill'"),
        (
            _with(distill={"epochs": "five"}),
            r"'distill.epochs' must be an integer >= 1, got 'five'",
        ),
        (_with(distill={"alpha": 1.5}), r"'distill.alpha' must be a number in \[0, 1\]"),
        (_with(quantize={"modes": ["int4"]}), r"'quantize.modes' must be a list of dynamic"),
        (_with(data={"name": "cifar"}), r"'data.name' must be one of"),
        (_with(data={"name": "npz"}), r"'data.path' must name a .npz"),
        (
            _with(teacher={"builder": "cnn_teacher", "path": "t.keras"}),
            r"exactly one of 'teacher.path'",
        ),
        (
            {"data": {"name": "digits"}, "student": {"builder": "cnn_student"}},
            r"missing section 'teacher'",
        ),
        (
            _with(prune={"m_by_n": "2:4", "final_sparsity": 0.5}),
            r"'prune.m_by_n' and 'prune.final_sparsity' exclude each other",
        ),
        (_with(prune={"m_by_n": "4:2"}), r"'prune.m_by_n' must be 'M:N' with 1 <= M < N"),
        (_with(prune={"distill": "yes"}), r"'prune.distill' must be true or false"),
        (_with(quantize={"method": "aqt"}), r"'quantize.method' must be ptq or qat"),
        (
            _with(quantize={"method": "qat", "modes": ["dynamic"]}),
            r"'quantize.modes' is \['dynamic'\], but quantize.method qat",
        ),
        (
            _with(quantize={"method": "qat"}, export={"formats": ["onnx"]}),
            r"add tflite to 'export.formats'",
        ),
        (_with(quantize={"epoch": 2}), r"unknown key 'quantize.epoch'; did you mean"),
        (
            _with(prune={"temperature": 4.0}),
            r"'prune.temperature' applies when prune.distill is true",
        ),
        (
            _with(quantize={"method": "qat", "alpha": 0.3}),
            r"'quantize.alpha' applies when quantize.distill is true",
        ),
        (_with(quantize={"temperature": 0}), r"'quantize.temperature' must be a number > 0"),
        (_with(task="audio"), r"'task' must be image"),
    ],
)
def test_bad_config_names_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config, source="pipeline.yaml")


def test_load_config_uses_safe_load(tmp_path):
    from kd_keras.pipeline import load_config

    path = tmp_path / "p.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


PIPELINE = """\
run_dir: {run_dir}
seed: 0
data: {{name: digits, max_train: 256, max_test: 128}}
teacher:
  builder: cnn_teacher
  epochs: 1
  kwargs: {{filters: [4, 8], dense_units: 16}}
student: {{builder: cnn_student, kwargs: {{filters: [4, 8]}}}}
distill: {{epochs: 40, batch_size: 64}}
prune: {{epochs: 1, final_sparsity: 0.5}}
quantize: {{modes: [dynamic]}}
export: {{formats: [tflite]}}
bench: {{threads: [1], runs: 3, warmup: 1}}
"""


def _start(config_path, log_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller via the process
    process = subprocess.Popen(
        [sys.executable, "-m", "kd_keras.cli", "run", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return process, log


@pytest.mark.slow  # three TensorFlow start-ups and a kill: ~2-3 minutes on 2 cores
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the pipeline exports TFLite")
def test_killed_mid_distillation_resumes_without_rerunning_stages(tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(PIPELINE.format(run_dir=run_dir))
    process, log = _start(config, tmp_path / "first.log")
    backup = run_dir / "distill" / "backup"
    # Kill once distillation has checkpointed at least one epoch.
    checkpoint = backup / "training_metadata.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    first = (tmp_path / "first.log").read_text()
    assert checkpoint.exists(), f"distillation never checkpointed:\n{first[-2000:]}"
    assert (run_dir / ".stages" / "teacher.json").exists()
    assert not (run_dir / ".stages" / "distill.json").exists(), "killed too late"
    teacher_marker = (run_dir / ".stages" / "teacher.json").read_bytes()

    process, log = _start(config, tmp_path / "second.log")
    assert process.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log.close()
    second = (tmp_path / "second.log").read_text()
    assert "[teacher] finished earlier, skipping" in second
    assert "[teacher] running" not in second
    # BackupAndRestore: distillation resumed after the last finished epoch.
    epochs = [int(e) for e in re.findall(r"Epoch (\d+)/40", second)]
    assert epochs and epochs[0] > 1, second[-3000:]
    assert (run_dir / ".stages" / "teacher.json").read_bytes() == teacher_marker
    assert sorted(p.stem for p in (run_dir / ".stages").iterdir()) == sorted(STAGES)
    files = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and ".stages" not in p.parts and "backup" not in p.parts
    )
    assert files == sorted(
        [
            "config.json",
            "teacher/teacher.keras",
            "teacher/history.json",
            "distill/student.keras",
            "distill/history.json",
            "prune/student_pruned.keras",
            "prune/history.json",
            "prune/sparsity.json",
            "export/teacher.tflite",
            "export/teacher.tflite.parity.json",
            "export/student.tflite",
            "export/student.tflite.parity.json",
            "export/student_pruned.tflite",
            "export/student_pruned.tflite.parity.json",
            "export/student_pruned_dynamic.tflite",
            "export/student_pruned_dynamic.tflite.parity.json",
            "report/report.md",
            "report/report.json",
            "report/frontier.png",
            "report/curves.png",
        ]
    )
    # A third run has nothing left to do.
    from kd_keras.pipeline import Pipeline, load_config

    messages = []
    Pipeline(load_config(config), log=messages.append).run()
    assert messages == [
        f"[{stage}] finished earlier, skipping ({run_dir / '.stages' / (stage + '.json')})"
        for stage in STAGES
    ]


QAT_PIPELINE = """\
run_dir: {run_dir}
data: {{name: digits, max_train: 256, max_test: 128}}
teacher: {{builder: cnn_teacher, epochs: 1, kwargs: {{filters: [4, 8], dense_units: 16}}}}
student: {{builder: cnn_student, kwargs: {{filters: [4, 8]}}}}
distill: {{epochs: 1, temperature: 2.0, alpha: 0.5}}
prune: {{epochs: 1, m_by_n: "2:4", distill: true}}
quantize: {{method: qat, epochs: 1, distill: true}}
export: {{formats: [tflite], batch_size: 1, strip_strings: true}}
bench: {{threads: [1], runs: 2, warmup: 1}}
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the pipeline exports TFLite")
def test_pipeline_with_m_by_n_pruning_and_distilled_qat(tmp_path):
    import json

    import numpy as np

    from kd_keras.pipeline import Pipeline, load_config
    from kd_keras.quantization.convert import tflite_tensor_types

    config_path = tmp_path / "qat.yaml"
    config_path.write_text(QAT_PIPELINE.format(run_dir=tmp_path / "run"))
    messages = []
    results = Pipeline(load_config(config_path), log=messages.append).run()
    run = tmp_path / "run"
    assert sorted(p.stem for p in (run / ".stages").iterdir()) == sorted(STAGES)
    # Both training stages distilled: the teacher's term is in their history.
    for stage in ("prune", "quantize"):
        history = json.loads((run / stage / "history.json").read_text())
        assert "soft_target_loss" in history, stage
    # 2:4 on every layer whose input splits into groups of 4 (conv1 has 1 channel).
    sparsity = json.loads((run / "prune" / "sparsity.json").read_text())
    rows = {row["name"]: row for row in sparsity["layers"]}
    assert rows["conv1"]["pruned"] is False and rows["conv1"]["zeros"] == 0
    assert rows["conv2"]["zeros"] * 2 == rows["conv2"]["params"]
    assert results["quantize"]["method"] == "qat"
    qat = results["export"]["artifacts"]["student_pruned qat_int8"]
    assert set(tflite_tensor_types(open(qat, "rb").read()).values()) <= {"int8", "int32"}
    # export.batch_size / strip_strings: a batch-1 file without tensor names.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=qat)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 8, 8, 1]
    assert not any(d["name"] for d in interpreter.get_tensor_details())
    # The saved pruned student is exactly 2:4 sparse in conv2.
    pruned = keras.saving.load_model(results["prune"]["student"])
    kernel = keras.ops.convert_to_numpy(pruned.get_layer("conv2").kernel)
    assert np.all((np.moveaxis(kernel, 2, -1).reshape(-1, 4) == 0).sum(-1) == 2)
    report = json.loads((run / "report" / "report.json").read_text())
    benched = {row["name"]: row for row in report["artifacts"]}
    assert benched["student_pruned qat_int8"]["parity"]["quantization"] == "qat"
    # A re-run has nothing to do.
    again = []
    Pipeline(load_config(config_path), log=again.append).run()
    assert all("finished earlier, skipping" in m for m in again) and len(again) == len(STAGES)

    # A changed prune section: the finished stages made from the old config
    # are not reused silently, and nothing runs before the user decides.
    from kd_keras.pipeline.config import ConfigError

    config_path.write_text(
        QAT_PIPELINE.format(run_dir=run).replace('m_by_n: "2:4"', "final_sparsity: 0.5")
    )
    changed = load_config(config_path)
    with pytest.raises(
        ConfigError, match=r"stage 'prune' .*changed since: prune\).*--rerun-from prune"
    ):
        Pipeline(changed, log=[].append).run()
    with pytest.raises(ConfigError, match="rerun_from must be one of"):
        Pipeline(changed).run(rerun_from="pruning")
    old_pruned = (run / "prune" / "student_pruned.keras").read_bytes()
    rerun = []
    Pipeline(changed, log=rerun.append).run(rerun_from="prune")
    skipped = [m.split("]")[0][1:] for m in rerun if "finished earlier" in m]
    assert skipped == ["teacher", "distill"]
    replaced = list((run / ".replaced").iterdir())
    assert len(replaced) == 1
    assert (replaced[0] / "prune" / "student_pruned.keras").read_bytes() == old_pruned
    assert sorted(p.stem for p in (replaced[0] / ".stages").iterdir()) == sorted(STAGES[2:])
    sparsity = json.loads((run / "prune" / "sparsity.json").read_text())
    assert abs(sparsity["pruned_sparsity"] - 0.5) < 0.02
