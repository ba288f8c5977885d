"""The frontier plot's labels: measured with matplotlib's renderer, no two
overlap, none covers another artifact's marker, all stay inside the axes."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("matplotlib")

from matplotlib.text import Text  # noqa: E402

from kd_keras.bench import plots  # noqa: E402
from kd_keras.bench.latency import LatencyResult  # noqa: E402
from kd_keras.bench.report import ArtifactReport, BenchReport  # noqa: E402
from kd_keras.bench.size import SizeResult  # noqa: E402

# The Fashion-MNIST pipeline run of benchmarks/RESULTS.md, section 5 (batch 1,
# 1 thread, XNNPACK): name, runtime, size KB, p50 ms, accuracy. Its PNG had
# "student float32" and "student onnx" written over each other, and the
# pruned models' labels nearly so.
FASHION_MNIST = [
    ("teacher (keras)", "keras", 14441.8, 2.651, 0.9045),
    ("teacher float32", "tflite", 4798.0, 0.162, 0.9045),
    ("student (keras)", "keras", 76.9, 1.052, 0.8941),
    ("student float32", "tflite", 39.1, 0.014, 0.8941),
    ("student onnx", "onnx", 38.4, 0.042, 0.8941),
    ("student_pruned (keras)", "keras", 76.6, 0.848, 0.8616),
    ("student_pruned float32", "tflite", 39.1, 0.014, 0.8616),
    ("student_pruned onnx", "onnx", 38.4, 0.022, 0.8616),
    ("student_pruned qat_int8", "tflite", 13.8, 0.041, 0.8636),
]

# Eight variants within 0.02 ms and 0.3 pt of each other, and a teacher far
# away that sets the axes' scale: at the plot's resolution, a crowd.
CROWD = [
    (
        f"student_variant_{k} float32",
        "tflite" if k % 2 else "onnx",
        30 + k,
        0.040 + 0.003 * (k % 4),
        0.890 + 0.001 * (k // 2),
    )
    for k in range(8)
] + [("teacher (keras)", "keras", 4800.0, 3.0, 0.93)]


def report_of(rows) -> BenchReport:
    artifacts = []
    for name, runtime, size_kb, p50, accuracy in rows:
        latency = LatencyResult(
            name=name,
            runtime=runtime,
            threads=1,
            xnnpack=True,
            batch_size=1,
            warmup_runs=1,
            runs=1,
            init_ms=None,
            first_ms=None,
            mean_ms=p50,
            std_ms=0.0,
            min_ms=p50,
            max_ms=p50,
            p50_ms=p50,
        )
        size = SizeResult(path=name, raw_bytes=int(size_kb * 1024), gzip_bytes=int(size_kb * 1024))
        artifacts.append(
            ArtifactReport(
                name=name,
                path=name,
                runtime=runtime,
                size=size,
                accuracy=accuracy,
                latency=[latency],
            )
        )
    return BenchReport(artifacts=artifacts)


def overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


@pytest.mark.parametrize("rows", [FASHION_MNIST, CROWD], ids=["fashion_mnist", "crowd"])
def test_frontier_labels_do_not_overlap(rows):
    import matplotlib.pyplot as plt

    fig = plots.frontier_figure(report_of(rows))
    try:
        fig.canvas.draw()  # the figure as it will be saved
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        labels = [a for a in ax.texts if a.get_text() != ax.get_title()]
        assert len(labels) == len(rows)
        # Text extents alone (an Annotation's own extent includes its leader line).
        boxes = {a.get_text(): Text.get_window_extent(a, renderer) for a in labels}
        for name, _, size_kb, _, _ in rows:
            assert f"{name} ({size_kb:.1f} KB)" in boxes
        for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
            assert overlap(box_a, box_b) == 0, f"labels {a!r} and {b!r} overlap"
        frame = ax.get_window_extent(renderer)
        for text, box in boxes.items():
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text
        # No leader line (the arrow matplotlib drew) runs through another label.
        for annotation in labels:
            if annotation.arrow_patch is None:
                continue
            path = annotation.arrow_patch.get_path()
            for text, box in boxes.items():
                if text != annotation.get_text():
                    assert not path.intersects_bbox(box, filled=False), (
                        f"the leader of {annotation.get_text()!r} crosses {text!r}"
                    )
        # No label covers another artifact's marker (its centre, in pixels).
        for collection in ax.collections:
            for centre in collection.get_offset_transform().transform(collection.get_offsets()):
                for text, box in boxes.items():
                    if not box.contains(*centre):
                        continue
                    pytest.fail(f"label {text!r} covers a marker at {centre}")
    finally:
        plt.close(fig)


def test_plot_frontier_writes_the_png(tmp_path):
    path = plots.plot_frontier(report_of(FASHION_MNIST), tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        plots.plot_frontier(report_of(FASHION_MNIST), tmp_path / "frontier.png")
