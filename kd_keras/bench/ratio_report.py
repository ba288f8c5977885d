"""The ratio report of the text pipeline: each model's accuracy, size and
latency beside its ratio to the teacher, in the one Markdown table format of
`kd_keras.bench.report.markdown_table`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kd_keras.bench.report import markdown_table

__all__ = ["render_ratio_report"]


def render_ratio_report(report: dict[str, Any], modes: Sequence[str] | None = None) -> str:
    """The Markdown report of a text pipeline's `report.json`: one row per
    model, figures beside their ratio to the teacher; per exported format in
    `modes` (default: as the rows list them) its size, accuracy, parity and
    p50 latency at each sequence length and thread count.

    Example:

    ```python
    report = json.loads(Path("runs/bbc_news/report.json").read_text())
    print(render_ratio_report(report, modes=("float", "dynamic", "onnx")))
    ```
    """
    rows = report["rows"]
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    data = report["data"]
    lines = [
        f"# Text distillation: {data['name']}",
        "",
        f"Command: `{report['command']}`  ",
        f"{data['train']} train / {data['test']} test texts, {data['classes']} classes, "
        f"sequence length {report['sequence_length']}, backend {report['backend']}.  ",
        "Stage seconds: "
        + ", ".join(
            f"{stage} {seconds:.0f}"
            for stage, seconds in report["stage_seconds"].items()
            if seconds is not None
        )
        + ".",
        "",
    ]
    columns = ["model", "accuracy (× teacher)", "params (teacher ÷)"]
    cells = []
    for row in rows:
        line = [
            row["model"],
            _ratio(row["accuracy"], teacher and teacher["accuracy"], "{:.4f}", invert=False),
            _ratio(row["params"], teacher and teacher["params"], "{:,}", invert=True),
        ]
        cells.append((row, line))
    if modes is None:
        fixed = ("model", "accuracy", "params")
        modes = list(dict.fromkeys(k for row in rows for k in row if k not in fixed))
    for mode in modes:
        if not any(mode in row for row in rows):
            continue
        columns.append(f"{mode} MB")
        if mode != "onnx":
            columns.append(f"{mode} accuracy")
        columns.append(f"{mode} parity")
        for row, line in cells:
            figures = row.get(mode, {})
            line.append(f"{figures['size_mb']:.2f}" if "size_mb" in figures else "-")
            if mode != "onnx":
                acc = figures.get("accuracy")
                line.append("-" if acc is None else f"{acc:.4f}")
            line.append(_parity(figures.get("parity")))
        timings = sorted(
            {
                (int(length), int(threads))
                for row in rows
                for length, by_thread in row.get(mode, {}).get("p50_ms", {}).items()
                for threads in by_thread
            }
        )
        for length, threads in timings:
            columns.append(f"{mode} p50 ms, L={length}, {threads} thr (teacher ÷)")
            reference = teacher and teacher.get(mode, {}).get("p50_ms", {})
            reference = reference and reference.get(str(length), {}).get(str(threads))
            for row, line in cells:
                value = row.get(mode, {}).get("p50_ms", {}).get(str(length), {}).get(str(threads))
                line.append("-" if value is None else _ratio(value, reference, "{:.2f}", True))
    lines += markdown_table(columns, [line for _, line in cells])
    return "\n".join(lines) + "\n"


def _ratio(value, reference, fmt: str, invert: bool) -> str:
    text = fmt.format(value)
    if not reference or not value:
        return text
    ratio = reference / value if invert else value / reference
    return f"{text} ({ratio:.2f}×)" if not invert else f"{text} ({ratio:.1f}×)"


def _parity(parity: dict | None) -> str:
    if not parity:
        return "-"
    verdict = "PASS" if parity["passed"] else "FAIL"
    if parity["criterion"] == "max_abs_diff":
        return f"{verdict} {parity['max_abs_diff']:.1e}"
    return f"{verdict} top-1 {parity['top1_agreement']:.3f}"
