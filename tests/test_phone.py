"""export/phone_benchmark.py up to the device boundary: adb command
construction, benchmark_model output parsing, and the errors past it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "export" / "phone_benchmark.py"
SAMPLE = ROOT / "export" / "samples" / "benchmark_model_android_xnnpack_t4.txt"

spec = importlib.util.spec_from_file_location("phone_benchmark", SCRIPT)
phone = importlib.util.module_from_spec(spec)
sys.modules["phone_benchmark"] = phone  # dataclasses look their module up
spec.loader.exec_module(phone)


def test_parses_recorded_sample():
    parsed = phone.parse_benchmark_output(SAMPLE.read_text())
    assert parsed["num_threads"] == 4
    assert parsed["graph"] == "/data/local/tmp/kd_keras/student_int8.tflite"
    assert parsed["model_size_mb"] == 0.018424
    assert parsed["init_us"] == 3412 and parsed["first_us"] == 412
    assert parsed["warmup"] == {
        "count": 2741,
        "first": 412,
        "curr": 171,
        "min": 158,
        "max": 1288,
        "avg": 182.3,
        "std": 41,
    }
    assert parsed["inference"] == {
        "count": 5633,
        "first": 176,
        "curr": 169,
        "min": 155,
        "max": 904,
        "avg": 176.8,
        "std": 22,
    }
    assert parsed["init_mem_mb"] == 2.94141 and parsed["overall_mem_mb"] == 3.30078
    assert parsed["peak_mem_mb"] == 7.62891


def test_sample_becomes_a_report_row():
    parsed = phone.parse_benchmark_output(SAMPLE.read_text())
    result = phone.to_latency_result(
        parsed, "student int8", threads=4, delegate="xnnpack", device="Pixel 7"
    )
    assert result.mean_ms == pytest.approx(0.1768) and result.std_ms == pytest.approx(0.022)
    assert result.min_ms == pytest.approx(0.155) and result.max_ms == pytest.approx(0.904)
    assert result.init_ms == pytest.approx(3.412) and result.first_ms == pytest.approx(0.412)
    assert result.runs == 5633 and result.warmup_runs == 2741
    assert result.p50_ms is None  # benchmark_model prints no percentiles
    assert result.xnnpack is True and result.config == "threads=4 xnnpack"
    from kd_keras.bench.report import ArtifactReport, BenchReport

    report = BenchReport([ArtifactReport("student int8", "s.tflite", "tflite", latency=[result])])
    row = report.rows()[0]
    assert row["runtime"] == "tflite (benchmark_model)" and row["mean_std_ms"] == (
        result.mean_ms,
        result.std_ms,
    )
    assert "0.177±0.022" in report.to_markdown()


def test_all_same_and_older_stat_formats():
    assert phone.parse_stat_line("count=5 curr=120(all same)") == {
        "count": 5,
        "curr": 120,
        "min": 120,
        "max": 120,
        "avg": 120,
        "std": 0.0,
        "first": 120,
    }
    # Older TFLite releases print curr before count and no first=.
    old = phone.parse_stat_line("curr=99 count=50 min=90 max=130 avg=101.5 std=7")
    assert old["count"] == 50 and old["avg"] == 101.5 and old["std"] == 7


def test_incomplete_output_is_an_error():
    text = (
        SAMPLE.read_text().split("INFO: Running benchmark")[0]
        + "ERROR: Failed to apply GPU delegate.\n"
    )
    with pytest.raises(phone.PhoneBenchmarkError, match="Failed to apply GPU delegate"):
        phone.parse_benchmark_output(text)


def test_adb_command_construction():
    plan = phone.build_plan(
        "/usr/bin/adb",
        "R58M12",
        "out/student int8.tflite",
        "bin/benchmark_model",
        threads=(1, 4),
        delegates=("xnnpack", "gpu"),
        warmup_runs=5,
        num_runs=50,
        taskset="f0",
    )
    base = ["/usr/bin/adb", "-s", "R58M12"]
    remote = "/data/local/tmp/kd_keras"
    assert plan.setup == [
        base + ["shell", f"mkdir -p {remote}"],
        base + ["push", "out/student int8.tflite", f"{remote}/student int8.tflite"],
        base + ["push", "bin/benchmark_model", f"{remote}/benchmark_model"],
        base + ["shell", f"chmod +x {remote}/benchmark_model"],
    ]
    assert [(r.threads, r.delegate) for r in plan.runs] == [
        (1, "xnnpack"),
        (1, "gpu"),
        (4, "xnnpack"),
        (4, "gpu"),
    ]
    assert plan.runs[0].argv == base + [
        "shell",
        f"taskset f0 {remote}/benchmark_model '--graph={remote}/student int8.tflite' "
        "--num_threads=1 --warmup_runs=5 --num_runs=50 --report_peak_memory_footprint=true "
        "--use_xnnpack=true",
    ]
    assert plan.runs[1].argv[-1].endswith("--use_gpu=true")
    assert plan.cleanup == [base + ["shell", f"rm -rf {remote}"]]
    cpu = phone.build_plan("adb", None, "m.tflite", "bm", threads=(2,), delegates=("cpu",))
    assert cpu.runs[0].argv[:2] == ["adb", "shell"] and cpu.runs[0].argv[-1].endswith(
        "--use_xnnpack=false"
    )
    with pytest.raises(phone.PhoneBenchmarkError, match="Unknown delegate 'tpu'"):
        phone.build_plan("adb", None, "m.tflite", "bm", delegates=("tpu",))


def test_device_selection_errors():
    listing = "List of devices attached\nR58M12\tdevice\nemulator-5554\tunauthorized\n\n"
    devices = phone.parse_devices(listing)
    assert devices == {"R58M12": "device", "emulator-5554": "unauthorized"}
    assert phone.choose_device(devices, "R58M12") == "R58M12"
    with pytest.raises(phone.PhoneBenchmarkError, match="--serial"):
        phone.choose_device(devices)
    with pytest.raises(phone.PhoneBenchmarkError, match="Allow USB debugging"):
        phone.choose_device(devices, "emulator-5554")
    with pytest.raises(phone.PhoneBenchmarkError, match="USB debugging"):
        phone.choose_device(phone.parse_devices("List of devices attached\n\n"))


def test_without_adb_the_script_says_what_to_install(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    env = {k: v for k, v in os.environ.items() if k != "ADB"}
    env["PATH"] = str(tmp_path)  # no adb anywhere on it
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(model), "--benchmark-binary", str(binary)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "adb (Android platform-tools) was not found" in done.stderr
    assert "--adb" in done.stderr


def test_missing_binary_says_where_to_get_it(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    assert phone.main([str(model), "--benchmark-binary", str(tmp_path / "nope")]) == 2


def test_dry_run_prints_commands(tmp_path, capsys):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3")
    assert phone.main([str(model), "--benchmark-binary", "bm", "--threads", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--num_threads=2" in out and "adb push" in out
