#!/usr/bin/env python
"""Benchmark a `.tflite` on an Android phone with LiteRT's `benchmark_model`.

Pushes the model and the `benchmark_model` binary to the device over `adb`,
runs it once per (threads, delegate) pair, parses what it prints and writes
the same report kd_keras's desktop benchmark writes (table, report.md,
report.json), so phone and desktop figures sit in one format.

    python export/phone_benchmark.py out/student_int8.tflite \
        --benchmark-binary ~/Downloads/android_aarch64_benchmark_model \
        --threads 1 2 4 --delegate xnnpack cpu gpu --output-dir out/phone

Needs: `adb` (Android platform-tools) on PATH or via --adb / $ADB, a phone
with USB debugging enabled, and a `benchmark_model` binary built for the
phone's ABI. `--dry-run` prints the commands without touching a device.
Percentiles: `benchmark_model` prints mean/std/min/max only, so p50/p90/p99
stay empty in phone rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# Run from a checkout without installing: make `kd_keras` importable.
_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "kd_keras").is_dir() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

DEVICE_DIR = "/data/local/tmp/kd_keras"
# benchmark_model flags per delegate (see tensorflow/lite/tools/delegates/README.md).
DELEGATE_FLAGS = {
    "cpu": ["--use_xnnpack=false"],  # builtin kernels, XNNPACK explicitly off
    "xnnpack": ["--use_xnnpack=true"],
    "gpu": ["--use_gpu=true"],
    "nnapi": ["--use_nnapi=true"],
}
INSTALL_ADB = (
    "adb (Android platform-tools) was not found. Install it "
    "(Debian/Ubuntu: `sudo apt install adb`; macOS: `brew install "
    "android-platform-tools`; or unzip platform-tools from "
    "https://developer.android.com/tools/releases/platform-tools) and put it on "
    "PATH, or pass --adb /path/to/adb (or set $ADB)."
)
CONNECT_DEVICE = (
    "No Android device is connected. Connect a phone by USB, enable Developer "
    "options > USB debugging, accept the 'Allow USB debugging' prompt on the "
    "phone, and check that `adb devices` lists it as 'device'."
)
GET_BINARY = (
    "Get LiteRT's benchmark_model for the phone's ABI: the prebuilt nightly "
    "`android_aarch64_benchmark_model` linked from "
    "https://ai.google.dev/edge/litert/models/measurement, or build it with "
    "`bazel build -c opt --config=android_arm64 "
    "tensorflow/lite/tools/benchmark:benchmark_model`."
)


class PhoneBenchmarkError(RuntimeError):
    """A problem past which the phone benchmark cannot go; the message says
    what to install, connect or pass."""


# --------------------------------------------------------------------- adb


def find_adb(adb: str | None = None) -> str:
    """The adb executable: `adb`, else $ADB, else `adb` on PATH."""
    candidate = adb or os.environ.get("ADB")
    if candidate:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        found = shutil.which(candidate)
        if found:
            return found
        raise PhoneBenchmarkError(f"{candidate} is not an executable adb. {INSTALL_ADB}")
    found = shutil.which("adb")
    if not found:
        raise PhoneBenchmarkError(INSTALL_ADB)
    return found


def parse_devices(text: str) -> dict[str, str]:
    """`adb devices` output -> {serial: state} ('device', 'unauthorized', ...)."""
    devices = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue
        parts = line.split()
        if len(parts) >= 2:
            devices[parts[0]] = parts[1]
    return devices


def choose_device(devices: dict[str, str], serial: str | None = None) -> str:
    """The serial to use, or an error saying how to get a usable device."""
    if serial is not None:
        if serial not in devices:
            raise PhoneBenchmarkError(
                f"Device {serial!r} is not connected; `adb devices` lists "
                f"{sorted(devices) or 'nothing'}."
            )
        chosen = serial
    else:
        if not devices:
            raise PhoneBenchmarkError(CONNECT_DEVICE)
        if len(devices) > 1:
            raise PhoneBenchmarkError(
                f"Several devices are connected ({', '.join(sorted(devices))}); "
                "pass --serial SERIAL to pick one."
            )
        chosen = next(iter(devices))
    state = devices[chosen]
    if state == "unauthorized":
        raise PhoneBenchmarkError(
            f"Device {chosen} is unauthorized: unlock it and accept the 'Allow USB "
            "debugging' prompt, then run again."
        )
    if state != "device":
        raise PhoneBenchmarkError(
            f"Device {chosen} is '{state}', not ready; reconnect it or run "
            "`adb kill-server && adb start-server`."
        )
    return chosen


@dataclasses.dataclass
class Run:
    """One benchmark_model invocation."""

    threads: int
    delegate: str
    argv: list[str]


@dataclasses.dataclass
class Plan:
    """Every adb command of a phone benchmark, in order."""

    setup: list[list[str]]
    runs: list[Run]
    cleanup: list[list[str]]

    def describe(self) -> str:
        lines = [shlex.join(c) for c in self.setup]
        lines += [shlex.join(r.argv) for r in self.runs]
        lines += [shlex.join(c) for c in self.cleanup]
        return "\n".join(lines)


def build_plan(
    adb: str,
    serial: str | None,
    model: str | os.PathLike,
    binary: str | os.PathLike,
    threads=(1, 2, 4),
    delegates=("xnnpack",),
    warmup_runs: int = 10,
    num_runs: int = 100,
    device_dir: str = DEVICE_DIR,
    taskset: str | None = None,
    extra_flags=(),
    cleanup: bool = True,
) -> Plan:
    """The adb commands that push, run (one per threads x delegate) and clean up.

    Example:

    ```python
    plan = build_plan("adb", "R58M", "student.tflite", "benchmark_model", threads=(1, 4))
    print(plan.describe())
    ```
    """
    for delegate in delegates:
        if delegate not in DELEGATE_FLAGS:
            raise PhoneBenchmarkError(
                f"Unknown delegate {delegate!r}; choose from {sorted(DELEGATE_FLAGS)}."
            )
    threads = [int(t) for t in threads]
    if not threads or min(threads) < 1:
        raise PhoneBenchmarkError(f"threads must be positive integers, got {threads}.")
    if warmup_runs < 0 or num_runs < 1:
        raise PhoneBenchmarkError("Need --warmup-runs >= 0 and --num-runs >= 1.")
    base = [adb] + (["-s", serial] if serial else [])
    remote_model = f"{device_dir}/{Path(model).name}"
    remote_binary = f"{device_dir}/benchmark_model"
    setup = [
        base + ["shell", f"mkdir -p {shlex.quote(device_dir)}"],
        base + ["push", str(model), remote_model],
        base + ["push", str(binary), remote_binary],
        base + ["shell", f"chmod +x {shlex.quote(remote_binary)}"],
    ]
    runs = []
    for t in threads:
        for delegate in delegates:
            flags = [
                f"--graph={remote_model}",
                f"--num_threads={t}",
                f"--warmup_runs={warmup_runs}",
                f"--num_runs={num_runs}",
                "--report_peak_memory_footprint=true",
                *DELEGATE_FLAGS[delegate],
                *extra_flags,
            ]
            command = ([f"taskset {taskset}"] if taskset else []) + [shlex.quote(remote_binary)]
            command += [shlex.quote(f) for f in flags]
            # `adb shell` takes one string, run by the phone's shell.
            runs.append(Run(t, delegate, base + ["shell", " ".join(command)]))
    clean = [base + ["shell", f"rm -rf {shlex.quote(device_dir)}"]] if cleanup else []
    return Plan(setup, runs, clean)


# ------------------------------------------------------------------ parsing

_STAT = re.compile(r"count=(?P<count>\d+)(?P<rest>.*)")
_FIELD = re.compile(r"(first|curr|min|max|avg|std)=([-+0-9.eE]+)")
_TIMINGS = re.compile(
    r"Inference timings in us: Init: (?P<init>[0-9.eE+-]+), First inference: "
    r"(?P<first>[0-9.eE+-]+), Warmup \(avg\): (?P<warmup>[0-9.eE+-]+|nan), "
    r"Inference \(avg\): (?P<inference>[0-9.eE+-]+|nan)"
)


def parse_stat_line(line: str) -> dict[str, float]:
    """`count=.. first=.. curr=.. min=.. max=.. avg=.. std=..` -> dict (us).

    Handles the `count=N curr=X(all same)` form, where every run took X.
    """
    match = _STAT.search(line)
    if not match:
        raise ValueError(f"Not a benchmark_model statistics line: {line!r}")
    stats = {"count": float(match.group("count"))}
    stats.update({k: float(v) for k, v in _FIELD.findall(match.group("rest"))})
    if "(all same)" in line or "min" not in stats:
        value = stats.get("curr", float("nan"))
        stats.update(min=value, max=value, avg=value, std=0.0)
        stats.setdefault("first", value)
    return stats


def parse_benchmark_output(text: str) -> dict:
    """Parses benchmark_model's log into a dict (times in microseconds).

    Keys: `warmup` and `inference` (stat dicts), `init_us`, `first_us`,
    `num_threads`, `graph`, `model_size_mb`, `init_mem_mb`,
    `overall_mem_mb`, `peak_mem_mb` (those it printed).
    """
    result: dict = {}
    stats = []
    lines = [re.sub(r"^(INFO|WARN|WARNING|ERROR):\s*", "", ln.strip()) for ln in text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("Running benchmark for at least"):
            following = next((ln for ln in lines[i + 1 :] if ln.startswith("count=")), None)
            if following is not None:
                stats.append(parse_stat_line(following))
        elif m := _TIMINGS.search(line):
            result["init_us"] = float(m.group("init"))
            result["first_us"] = float(m.group("first"))
        elif m := re.match(r"Num threads: \[(-?\d+)\]", line):
            result["num_threads"] = int(m.group(1))
        elif m := re.match(r"Graph: \[(.*)\]", line):
            result["graph"] = m.group(1)
        elif m := re.match(r"The input model file size \(MB\): ([0-9.eE+-]+)", line):
            result["model_size_mb"] = float(m.group(1))
        elif m := re.search(r"init=([0-9.eE+-]+) overall=([0-9.eE+-]+)", line):
            result["init_mem_mb"], result["overall_mem_mb"] = float(m.group(1)), float(m.group(2))
        elif m := re.match(
            r"Overall peak memory footprint \(MB\) via periodic monitoring: ([0-9.eE+-]+)", line
        ):
            result["peak_mem_mb"] = float(m.group(1))
    if len(stats) < 2 or "init_us" not in result:
        error = next((ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()), None)
        raise PhoneBenchmarkError(
            "benchmark_model did not finish a benchmark"
            + (f": {error}" if error else "")
            + ". Check that the binary matches the phone's ABI and the model's ops "
            "are supported by the chosen delegate."
        )
    result["warmup"], result["inference"] = stats[0], stats[1]
    return result


def to_latency_result(parsed: dict, name: str, threads: int, delegate: str, device: str = ""):
    """A `kd_keras.bench.LatencyResult` (milliseconds) from parsed output."""
    from kd_keras.bench.latency import LatencyResult

    inference, warmup = parsed["inference"], parsed["warmup"]
    return LatencyResult(
        name=name,
        runtime="tflite",
        threads=parsed.get("num_threads", threads),
        xnnpack={"xnnpack": True, "cpu": False}.get(delegate),
        batch_size=1,
        warmup_runs=int(warmup["count"]),
        runs=int(inference["count"]),
        init_ms=parsed["init_us"] / 1e3,
        first_ms=parsed["first_us"] / 1e3,
        mean_ms=inference["avg"] / 1e3,
        std_ms=inference["std"] / 1e3,
        min_ms=inference["min"] / 1e3,
        max_ms=inference["max"] / 1e3,
        peak_memory_mb=parsed.get("peak_mem_mb"),
        memory_delta_mb=parsed.get("overall_mem_mb"),
        memory_method="benchmark_model",
        source="benchmark_model",
        device=device,
        delegate=delegate,
    )


# --------------------------------------------------------------------- main


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip() or done.stdout.strip()
        raise PhoneBenchmarkError(f"`{shlex.join(argv)}` failed ({done.returncode}):\n{message}")
    return done.stdout + done.stderr  # benchmark_model logs to stderr


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark a .tflite on an Android phone with LiteRT's benchmark_model.",
    )
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument(
        "--benchmark-binary", required=True, help="benchmark_model built for the phone"
    )
    parser.add_argument("--name", help="label in the report (default: file name)")
    parser.add_argument("--adb", help="adb executable (default: $ADB or adb on PATH)")
    parser.add_argument("--serial", help="device serial when several are connected")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--delegate", nargs="+", default=["xnnpack"], choices=sorted(DELEGATE_FLAGS)
    )
    parser.add_argument("--warmup-runs", type=int, default=10)
    parser.add_argument("--num-runs", type=int, default=100)
    parser.add_argument("--device-dir", default=DEVICE_DIR)
    parser.add_argument("--taskset", help="CPU affinity mask, e.g. f0 for big cores")
    parser.add_argument("--output-dir", help="write report.md / report.json here")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--save-raw", action="store_true", help="keep benchmark_model's output")
    parser.add_argument("--dry-run", action="store_true", help="print the adb commands only")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return _main(args)
    except PhoneBenchmarkError as err:
        print(f"phone_benchmark: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    model, binary = Path(args.model), Path(args.benchmark_binary)
    if model.suffix != ".tflite" or not model.is_file():
        raise PhoneBenchmarkError(
            f"{model} is not a .tflite file; export one with kd_keras.export.to_tflite."
        )
    if args.dry_run:
        plan = build_plan(
            "adb",
            args.serial,
            model,
            binary,
            args.threads,
            args.delegate,
            args.warmup_runs,
            args.num_runs,
            args.device_dir,
            args.taskset,
        )
        print(plan.describe())
        return 0
    if not binary.is_file():
        raise PhoneBenchmarkError(f"{binary} does not exist. {GET_BINARY}")
    adb = find_adb(args.adb)
    serial = choose_device(parse_devices(_run([adb, "devices"])), args.serial)
    device = _run([adb, "-s", serial, "shell", "getprop ro.product.model"]).strip() or serial
    plan = build_plan(
        adb,
        serial,
        model,
        binary,
        args.threads,
        args.delegate,
        args.warmup_runs,
        args.num_runs,
        args.device_dir,
        args.taskset,
    )
    name = args.name or model.name
    results, raw = [], []
    try:
        for command in plan.setup:
            _run(command)
        for run in plan.runs:
            print(f"running threads={run.threads} {run.delegate} on {device} ...", file=sys.stderr)
            output = _run(run.argv)
            raw.append(output)
            results.append(
                to_latency_result(
                    parse_benchmark_output(output), name, run.threads, run.delegate, device
                )
            )
    finally:
        for command in plan.cleanup:
            subprocess.run(command, capture_output=True)
    _report(args, model, name, device, results, raw)
    return 0


def _report(args, model, name, device, results, raw) -> None:
    from kd_keras.bench.report import ArtifactReport, BenchReport
    from kd_keras.bench.size import file_size

    macs = None
    try:
        from kd_keras.bench.flops import count_macs_tflite

        macs = count_macs_tflite(model)
    except ImportError:
        pass
    artifact = ArtifactReport(
        name, str(model), "tflite", size=file_size(model), macs=macs, latency=results
    )
    report = BenchReport([artifact], machine=f"Android: {device}", command=shlex.join(sys.argv))
    report.print_table()
    if args.output_dir:
        paths = report.save(args.output_dir, overwrite=args.overwrite, plot=False)
        if args.save_raw:
            from kd_keras.io import write_text

            write_text(
                Path(args.output_dir) / "benchmark_model.log", "\n\n".join(raw), args.overwrite
            )
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
