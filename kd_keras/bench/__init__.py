"""Benchmarks: latency (LiteRT, onnxruntime, Keras), size, MACs and % of CPU
peak, accuracy, and the reports and plots that put them side by side.

Example:

```python
from kd_keras import bench
report = bench.benchmark({"student": "out/student.tflite"}, x_test, y_test)
report.print_table()
report.save("out/report")
```
"""

from kd_keras.bench.accuracy import evaluate_accuracy
from kd_keras.bench.flops import (
    LayerMACs,
    count_macs,
    count_macs_artifact,
    count_macs_onnx,
    count_macs_tflite,
    cpu_peak_gflops,
    fraction_of_peak,
    macs_by_layer,
)
from kd_keras.bench.latency import LatencyResult, measure_latency, percentile, summarize, sweep
from kd_keras.bench.plots import pareto_front, plot_frontier, plot_history
from kd_keras.bench.render import markdown_table, plain_table, ratio_cells, render_ratio_report
from kd_keras.bench.report import ArtifactReport, BenchReport, benchmark
from kd_keras.bench.size import SizeResult, file_size

__all__ = [
    "ArtifactReport",
    "BenchReport",
    "LatencyResult",
    "LayerMACs",
    "SizeResult",
    "benchmark",
    "count_macs",
    "count_macs_artifact",
    "count_macs_onnx",
    "count_macs_tflite",
    "cpu_peak_gflops",
    "evaluate_accuracy",
    "file_size",
    "fraction_of_peak",
    "macs_by_layer",
    "markdown_table",
    "measure_latency",
    "pareto_front",
    "percentile",
    "plain_table",
    "plot_frontier",
    "plot_history",
    "ratio_cells",
    "render_ratio_report",
    "summarize",
    "sweep",
]
