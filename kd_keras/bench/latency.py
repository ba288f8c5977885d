"""Latency the way LiteRT's `benchmark_model` measures it, from Python.

Methodology (after `tensorflow/lite/tools/benchmark/benchmark_model.cc`):
the artifact is loaded and prepared (`init`), run once (`first`), run
`warmup` more times untimed-for-statistics, then `runs` timed runs of
`invoke()` alone, each timed with `time.perf_counter`. As in
`benchmark_model`, the input is set once before the timed loop: resizing,
converting and (for an int8-input file) quantizing it are not timed, nor is
reading and dequantizing the output. Statistics are the mean, the population
standard deviation (as `benchmark_model`'s `std=`), min, max and the
50/90/99th percentiles with linear interpolation between order statistics
(NumPy's default `method="linear"`). `invoke()` is the interpreter's
`invoke` for LiteRT, `session.run` for onnxruntime (which also copies the
inputs in; its Python API has no separate step), the serving function for a
SavedModel and `predict_on_batch` for Keras.

What a Python application pays per call is more: `set_inputs` + `invoke` +
`get_outputs`. That is timed separately, in `runs` more calls made in
blocks alternating with the blocks of invoke runs (so that load from other
processes falls on both alike), and reported as `call_p50_ms` with
`overhead_ms = call_p50_ms - p50_ms`. The overhead is not negligible for
small models: for the 9.2 k parameter Fashion-MNIST student at batch 1
(Intel Xeon, 1 thread) a whole call takes 8-12 us more than its 12-38 us
invoke, +30 to +70 %, and an int8-input file pays the NumPy float -> int8
input quantization on top, which a float file does not; timing the whole
call would tilt every int8-vs-float ratio against int8
(`benchmarks/latency_invoke_only.py`).

Peak memory is the process's resident-set high-water mark (`VmHWM` in
`/proc/self/status`) over load + runs, after resetting it through
`/proc/self/clear_refs` (Linux); `memory_delta_mb` is that peak minus the
resident set before loading (like `benchmark_model`'s "footprint delta"). Elsewhere it falls back to
`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the lifetime peak, which can
only grow; `memory_method` says which one a result used. tracemalloc is not
used: it sees Python allocations only, not the runtimes' C++ arenas.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kd_keras.runtime import load_runner, runtime_of

THREADED_RUNTIMES = ("tflite", "onnx")


@dataclasses.dataclass
class LatencyResult:
    """One latency measurement (all times in milliseconds).

    The statistics (`mean_ms` ... `p99_ms`, `timings_ms`) are of `invoke()`
    alone. `call_p50_ms` is the median of a whole Python call (set the
    inputs, invoke, read the outputs) and `overhead_ms` its excess over
    `p50_ms`. `p50_ms`/`p90_ms`/`p99_ms` and the call figures are `None`
    when only aggregate figures exist (results parsed from
    `benchmark_model`, which prints no percentiles and makes no Python
    calls).
    """

    name: str
    runtime: str
    threads: int | None
    xnnpack: bool | None
    batch_size: int
    warmup_runs: int
    runs: int
    init_ms: float | None
    first_ms: float | None
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    call_p50_ms: float | None = None
    overhead_ms: float | None = None
    peak_memory_mb: float | None = None
    memory_delta_mb: float | None = None
    memory_method: str = ""
    source: str = "python"
    device: str = ""
    delegate: str | None = None
    timings_ms: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def config(self) -> str:
        """`"threads=2 xnnpack"` style label of the runtime settings."""
        parts = [] if self.threads is None else [f"threads={self.threads}"]
        if self.delegate is not None:
            parts.append(self.delegate)
        elif self.xnnpack is not None:
            parts.append("xnnpack" if self.xnnpack else "no-xnnpack")
        return " ".join(parts) or "default"

    def to_dict(self, include_timings: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not include_timings:
            data.pop("timings_ms")
        return data


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation between the
    closest ranks: rank `q/100 * (n-1)` of the sorted values.

    Example:

    ```python
    percentile([1.0, 2.0, 3.0, 4.0], 50)  # 2.5
    ```
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}.")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of an empty list of timings.")
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(timings_ms: Sequence[float]) -> dict[str, float]:
    """mean, population std, min, max, p50, p90, p99 of `timings_ms`."""
    values = [float(t) for t in timings_ms]
    if not values:
        raise ValueError("No timings to summarize: runs must be >= 1.")
    mean = math.fsum(values) / len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return {
        "mean_ms": mean,
        "std_ms": math.sqrt(variance),
        "min_ms": min(values),
        "max_ms": max(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
    }


class PeakMemory:
    """Resident-set high-water mark over a `with` block, in MB (see module doc)."""

    def __enter__(self):
        self.method = "VmHWM"
        self.start_mb = _status_mb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc):
        self.peak_mb = _status_mb("VmHWM") if self.method == "VmHWM" else _ru_maxrss_mb()
        if self.peak_mb is None:
            self.method, self.peak_mb = "ru_maxrss", _ru_maxrss_mb()
        # Like benchmark_model's "footprint delta from the start of the tool".
        self.delta_mb = (
            None
            if self.start_mb is None or self.peak_mb is None or self.method != "VmHWM"
            else max(0.0, self.peak_mb - self.start_mb)
        )
        return False


def measure_latency(
    artifact,
    threads: int | None = None,
    xnnpack: bool = True,
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    inputs=None,
    name: str | None = None,
) -> LatencyResult:
    """Measures the latency of one artifact under one runtime setting.

    Args:
        artifact: `.tflite` / `.onnx` / `.keras` path, SavedModel folder, or a
            `keras.Model`.
        threads: LiteRT / onnxruntime threads (ignored by the others).
        xnnpack: LiteRT only: apply XNNPACK.
        runs: timed runs.
        warmup: runs after the first one before timing starts.
        batch_size: samples per call.
        inputs: a batch to feed (its first `batch_size` samples): an array,
            or `{input name: array}`; default: uniform noise of the model's
            input shape (float inputs only).
        name: label in reports (default: the file name).

    Example:

    ```python
    x_train = np.random.rand(64, 8).astype("float32")
    x_test = np.random.rand(16, 8).astype("float32")
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student.tflite")
    result = measure_latency("student.tflite", threads=2, runs=20)
    print(result.p50_ms, result.p99_ms)  # invoke() alone
    print(result.call_p50_ms, result.overhead_ms)  # a whole Python call
    ```
    """
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"Need runs >= 1, warmup >= 0, batch_size >= 1; got runs={runs}, "
            f"warmup={warmup}, batch_size={batch_size}."
        )
    runtime = runtime_of(artifact)
    with PeakMemory() as memory:
        runner = load_runner(
            artifact,
            threads=threads if runtime in THREADED_RUNTIMES else None,
            xnnpack=xnnpack,
        )
        x = _batch(runner, inputs, batch_size)
        start = time.perf_counter()
        runner(x)
        first = time.perf_counter() - start
        # Set once, as benchmark_model does: the timed loop is the invoke alone.
        runner.set_inputs(x)
        invoke = runner.invoke
        for _ in range(warmup):
            invoke()
        timings, calls = [], []
        # Invoke runs and whole calls alternate in blocks, so that load from
        # other processes falls on both alike and their difference (the
        # overhead) stays meaningful. A call leaves the same input set.
        blocks = np.array_split(np.arange(runs), min(10, runs))
        for block in blocks:
            for _ in block:
                start = time.perf_counter()
                invoke()
                timings.append((time.perf_counter() - start) * 1e3)
            for _ in block:
                start = time.perf_counter()
                runner(x)
                calls.append((time.perf_counter() - start) * 1e3)
    stats = summarize(timings)
    call_p50 = percentile(calls, 50)
    return LatencyResult(
        name=name or _label(artifact),
        runtime=runtime,
        threads=runner.threads,
        xnnpack=runner.xnnpack,
        batch_size=batch_size,
        warmup_runs=warmup,
        runs=runs,
        init_ms=runner.init_seconds * 1e3,
        first_ms=first * 1e3,
        peak_memory_mb=memory.peak_mb,
        memory_delta_mb=memory.delta_mb,
        memory_method=memory.method,
        timings_ms=timings,
        call_p50_ms=call_p50,
        overhead_ms=call_p50 - stats["p50_ms"],
        **stats,
    )


def sweep(
    artifact,
    threads: Iterable[int] = (1, 2, 4),
    xnnpack: Iterable[bool] = (True, False),
    **kwargs,
) -> list[LatencyResult]:
    """`measure_latency` over thread counts (LiteRT, onnxruntime) and XNNPACK
    on/off (LiteRT); other runtimes are measured once.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(student, "student.tflite")
    for r in sweep("student.tflite", threads=(1, 2), runs=10):
        print(r.config, r.p50_ms)
    ```
    """
    runtime = runtime_of(artifact)
    thread_options = list(threads) if runtime in THREADED_RUNTIMES else [None]
    xnnpack_options = list(xnnpack) if runtime == "tflite" else [True]
    return [
        measure_latency(artifact, threads=t, xnnpack=x, **kwargs)
        for t in thread_options
        for x in xnnpack_options
    ]


def _batch(runner, inputs, batch_size: int):
    """The first `batch_size` samples of `inputs` (an array or named inputs,
    repeated when shorter), else uniform noise of the model's input shapes."""
    if inputs is not None:
        # Slice before converting: `inputs` may be a whole evaluation set.
        if isinstance(inputs, Mapping):
            inputs = {name: np.asarray(a)[:batch_size] for name, a in inputs.items()}
        elif isinstance(inputs, (list, tuple)) and len(runner.inputs) > 1:
            inputs = [np.asarray(a)[:batch_size] for a in inputs]
        else:
            inputs = np.asarray(inputs)[:batch_size]
        feed = runner.feed(inputs)
        out = {}
        for name, x in feed.items():
            x = x[:batch_size]
            if len(x) < batch_size:
                x = np.concatenate([x] * math.ceil(batch_size / len(x)))[:batch_size]
            out[name] = x
        return out
    rng = np.random.default_rng(0)
    out = {}
    for spec in runner.inputs:
        shape = tuple(spec.shape[1:])
        if not spec.shape or any(d is None for d in shape):
            raise ValueError(
                f"The {runner.runtime} model's input {spec.name!r} has shape {spec.shape}, "
                "not fully known; pass inputs=<a sample batch>."
            )
        if not np.issubdtype(np.dtype(spec.dtype), np.floating) and spec.quantization is None:
            raise ValueError(
                f"The {runner.runtime} model's input {spec.name!r} takes "
                f"{np.dtype(spec.dtype).name} values (token ids?); pass inputs=<a sample batch>."
            )
        out[spec.name] = rng.random((batch_size,) + shape, dtype=np.float32)
    return out


def _label(artifact) -> str:
    if isinstance(artifact, (str, Path)):
        return Path(artifact).name
    return getattr(artifact, "name", type(artifact).__name__)


def _status_mb(field: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+)\s+kB", status)
    return int(match.group(1)) / 1024.0 if match else None


def _ru_maxrss_mb() -> float | None:
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
