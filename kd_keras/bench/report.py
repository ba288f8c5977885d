"""Accuracy, size, MACs and latency of several artifacts side by side.

`benchmark({...})` measures; the `BenchReport` it returns prints a terminal
table (rich when installed), renders Markdown, serialises to JSON and saves
all of them with the frontier plot into a folder. The phone script
(`export/phone_benchmark.py`) fills the same `BenchReport` from
`benchmark_model` output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

from kd_keras.bench import flops as flops_lib
from kd_keras.bench.accuracy import evaluate_accuracy
from kd_keras.bench.latency import LatencyResult, sweep
from kd_keras.bench.plots import plot_frontier
from kd_keras.bench.render import bench_cells, markdown_table, print_table
from kd_keras.bench.size import SizeResult, file_size
from kd_keras.io import parity_report_path, write_text
from kd_keras.runtime import runtime_of


@dataclasses.dataclass
class ArtifactReport:
    """Everything measured about one artifact."""

    name: str
    path: str
    runtime: str
    size: SizeResult | None = None
    macs: int | None = None
    accuracy: float | None = None
    latency: list[LatencyResult] = dataclasses.field(default_factory=list)
    parity: dict[str, Any] | None = None

    def latency_for(self, threads: int | None = 1) -> LatencyResult | None:
        """The result at `threads` (XNNPACK on preferred), else the first one."""
        if not self.latency:
            return None
        matches = [r for r in self.latency if r.threads == threads] or [
            r for r in self.latency if r.threads is None
        ]
        matches = sorted(matches or self.latency, key=lambda r: r.xnnpack is False)
        return matches[0]


@dataclasses.dataclass
class BenchReport:
    """A set of `ArtifactReport`s plus the machine they were measured on.

    `cpu_peak_gflops` maps thread count -> measured float32 peak; an entry
    for 1 thread is what "% CPU peak" scales from (`threads x peak(1)`: the
    ideal a runtime could reach with perfect scaling).
    """

    artifacts: list[ArtifactReport]
    cpu_peak_gflops: dict[int, float] = dataclasses.field(default_factory=dict)
    machine: str = dataclasses.field(
        default_factory=lambda: (
            f"{platform.machine()} {platform.processor() or ''}".strip()
            + f", {os.cpu_count()} logical CPUs"
        )
    )
    command: str = ""

    def peak_fraction(self, artifact: ArtifactReport, result: LatencyResult) -> float | None:
        """Achieved FLOP/s at the p50 (else mean) latency over the peak for
        its thread count (all logical CPUs when the runtime picks)."""
        peak_one = self.cpu_peak_gflops.get(1)
        latency = result.p50_ms if result.p50_ms is not None else result.mean_ms
        if not artifact.macs or not peak_one or not latency or result.source != "python":
            return None
        threads = result.threads if result.threads else (os.cpu_count() or 1)
        return flops_lib.fraction_of_peak(
            artifact.macs, latency, peak_one * threads, result.batch_size
        )

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (artifact, runtime setting), keyed like `COLUMNS`."""
        rows = []
        for artifact in self.artifacts:
            for result in artifact.latency or [None]:
                fraction = self.peak_fraction(artifact, result) if result else None
                rows.append(
                    {
                        "model": artifact.name,
                        "runtime": artifact.runtime
                        + (
                            "" if not result or result.source == "python" else f" ({result.source})"
                        ),
                        "config": result.config if result else "",
                        "size_kb": artifact.size.raw_bytes / 1024 if artifact.size else None,
                        "gzip_kb": artifact.size.gzip_bytes / 1024 if artifact.size else None,
                        "macs": artifact.macs,
                        "p50_ms": result.p50_ms if result else None,
                        "p90_ms": result.p90_ms if result else None,
                        "p99_ms": result.p99_ms if result else None,
                        "mean_std_ms": (result.mean_ms, result.std_ms) if result else None,
                        "call_p50_ms": result.call_p50_ms if result else None,
                        "overhead_ms": result.overhead_ms if result else None,
                        "init_ms": result.init_ms if result else None,
                        "memory_mb": result.memory_delta_mb if result else None,
                        "peak_pct": None if fraction is None else 100 * fraction,
                        "accuracy": artifact.accuracy,
                    }
                )
        return rows

    def formatted_rows(self) -> list[list[str]]:
        """`rows()` as text cells, in the `bench` layout of `kd_keras.bench.render`."""
        return bench_cells(self.rows())[1]

    def to_markdown(self, title: str = "Benchmark report") -> str:
        """The report as Markdown: table, machine, method notes, parity."""
        lines = [f"# {title}", ""]
        if self.command:
            lines += ["Command:", "", "```", self.command, "```", ""]
        lines += markdown_table(*bench_cells(self.rows()))
        peaks = ", ".join(
            f"{t} thread(s): {g:.1f} GFLOP/s" for t, g in sorted(self.cpu_peak_gflops.items())
        )
        first = next((r for a in self.artifacts for r in a.latency), None)
        lines += [
            "",
            f"Machine: {self.machine}. CPU float32 peak (NumPy matmul): {peaks or 'not measured'}.",
        ]
        if first is not None:
            lines.append(
                f"Latency: batch {first.batch_size}, {first.warmup_runs} warm-up runs, "
                f"{first.runs} timed runs of invoke() alone, the input set once before "
                "them (as LiteRT's benchmark_model); p50/p90/p99 by linear interpolation; "
                "std is the population std. call p50 = median of "
                f"{first.runs} whole Python calls (set inputs, incl. int8 quantization; "
                "invoke; read and dequantize outputs); overhead = call p50 - p50. "
                f"Memory: {first.memory_method} delta over load + runs."
            )
        lines.append(
            "% CPU peak = 2 x MACs / p50 latency over threads x single-thread peak "
            "(all logical CPUs where the runtime chooses its threads)."
        )
        parity = [a for a in self.artifacts if a.parity]
        if parity:
            lines += ["", "## Export parity", ""]
            cells = []
            for a in parity:
                p = a.parity
                value = (
                    p["max_abs_diff"] if p["criterion"] == "max_abs_diff" else p["top1_agreement"]
                )
                row = [a.name, p["criterion"], f"{value:.3g}", f"{p['threshold']:g}", p["passed"]]
                cells.append([str(c) for c in row])
            lines += markdown_table(["Model", "Criterion", "Value", "Bound", "Passed"], cells)
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "command": self.command,
            "cpu_peak_gflops": {str(k): v for k, v in self.cpu_peak_gflops.items()},
            "artifacts": [
                {
                    **{k: v for k, v in dataclasses.asdict(a).items() if k != "latency"},
                    "latency": [r.to_dict() for r in a.latency],
                }
                for a in self.artifacts
            ],
        }

    def print_table(self, console=None) -> None:
        """Prints the table with rich when available, else as plain text."""
        print_table(*bench_cells(self.rows()), title="kd_keras benchmark", left=3, console=console)

    def save(
        self, folder: str | os.PathLike, overwrite: bool = False, plot: bool = True
    ) -> dict[str, Path]:
        """Writes `report.md`, `report.json` and (with `plot`) `frontier.png`
        into `folder`, atomically; returns their paths."""
        import json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": write_text(folder / "report.md", self.to_markdown(), overwrite),
            "json": write_text(
                folder / "report.json", json.dumps(self.to_dict(), indent=2) + "\n", overwrite
            ),
        }
        if plot and any(a.accuracy is not None and a.latency for a in self.artifacts):
            paths["frontier"] = plot_frontier(self, folder / "frontier.png", overwrite=overwrite)
        return paths


class _RetracingHint(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" hint. Each Keras
    model benchmarked traces its own predict step (batch 1 for latency, the
    evaluation batches for accuracy); TensorFlow counts the traces of all
    those models together, as if one function were rebuilt in a loop, and
    suggests fixes that do not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _without_retracing_hint():
    logger = logging.getLogger("tensorflow")
    hint = _RetracingHint()
    logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


@_without_retracing_hint()
def benchmark(
    artifacts: Mapping[str, Any],
    x_eval=None,
    y_eval=None,
    threads: Iterable[int] = (1, 2, 4),
    xnnpack: Iterable[bool] = (True, False),
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    macs: Mapping[str, int] | None = None,
    measure_peak: bool = True,
    command: str = "",
) -> BenchReport:
    """Measures size, MACs, latency and accuracy of each artifact.

    Args:
        artifacts: name -> `.tflite` / `.onnx` / `.keras` path, SavedModel
            folder or `keras.Model`.
        x_eval, y_eval: evaluation set for accuracy (skipped when `None`);
            `x_eval[:batch_size]` is also the latency input.
        threads, xnnpack: runtime settings swept for LiteRT / onnxruntime.
        runs, warmup, batch_size: see `measure_latency`.
        macs: name -> MAC count, overriding the count from the graph (for a
            SavedModel, which is not counted).
        measure_peak: measure the CPU peak for "% CPU peak".

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(
        student, "out/student_int8.tflite", quantization="dynamic", sample_inputs=x
    )
    report = benchmark(
        {"student": student, "student int8": "out/student_int8.tflite"},
        x, y, threads=(1,), xnnpack=(True,), runs=5, warmup=1, measure_peak=False)

    report.print_table()
    report.save("out/report")
    ```
    """
    threads = list(threads)
    macs = dict(macs or {})
    reports = []
    for name, artifact in artifacts.items():
        runtime = runtime_of(artifact)
        is_path = isinstance(artifact, (str, os.PathLike))
        count = macs.get(name)
        if count is None and runtime != "saved_model":
            count = flops_lib.count_macs_artifact(artifact)
        parity = None
        if is_path and parity_report_path(artifact).exists():
            import json

            parity = json.loads(parity_report_path(artifact).read_text())
        latency = sweep(
            artifact,
            threads=threads,
            xnnpack=xnnpack,
            runs=runs,
            warmup=warmup,
            batch_size=batch_size,
            inputs=x_eval,
            name=name,
        )
        reports.append(
            ArtifactReport(
                name=name,
                path=str(artifact) if is_path else f"<keras.Model {getattr(artifact, 'name', '')}>",
                runtime=runtime,
                size=file_size(artifact) if is_path else None,
                macs=count,
                accuracy=None if x_eval is None else evaluate_accuracy(artifact, x_eval, y_eval),
                latency=latency,
                parity=parity,
            )
        )
    peaks = {}
    if measure_peak:
        peaks = {t: flops_lib.cpu_peak_gflops(t) for t in sorted({1, *threads})}
    return BenchReport(reports, cpu_peak_gflops=peaks, command=command)
