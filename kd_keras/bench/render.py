r"""The one report renderer: report rows -> Markdown, plain text or a terminal
table.

Every report of kd_keras goes through this module: the image pipeline's
benchmark report (`BenchReport`: one column per measurement, the `bench`
layout), the text pipeline's ratio report (each figure beside its ratio to a
reference model, per-format columns: the `ratio` layout) and the demo's
comparison table. A layout only chooses the header and the cells; the tables
themselves are drawn by `markdown_table`, `plain_table` and `print_table`.

Example:

```python
rows = [
    {"model": "teacher", "accuracy": 0.9, "params": 1000, "float": {"size_mb": 4.0}},
    {"model": "student", "accuracy": 0.81, "params": 125, "float": {"size_mb": 0.5}},
]
header, cells = ratio_cells(rows)
print("\n".join(markdown_table(header, cells)))
print(plain_table(header, cells))
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BENCH_COLUMNS",
    "bench_cells",
    "format_cell",
    "markdown_table",
    "plain_table",
    "print_table",
    "ratio_cells",
    "render_ratio_report",
]

#: The `bench` layout (image pipeline, `BenchReport`): row key -> header.
BENCH_COLUMNS = (
    ("model", "Model"),
    ("runtime", "Runtime"),
    ("config", "Config"),
    ("size_kb", "Size KB"),
    ("gzip_kb", "gzip KB"),
    ("macs", "MACs"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("mean_std_ms", "mean±std ms"),
    ("call_p50_ms", "call p50 ms"),
    ("overhead_ms", "overhead ms"),
    ("init_ms", "init ms"),
    ("memory_mb", "mem Δ MB"),
    ("peak_pct", "% CPU peak"),
    ("accuracy", "Accuracy"),
)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    r"""The lines of a Markdown table: header, separator, one line per row.

    Example:

    ```python
    print("\n".join(markdown_table(["model", "accuracy"], [["student", "0.97"]])))
    ```
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width text table: header, a dashed rule, one line per row."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str,
    left: int = 1,
    notes: Sequence[str] = (),
    console=None,
) -> None:
    """Prints a table to the terminal: with rich when it is installed, else
    as `plain_table`; the first `left` columns are left-aligned (names), the
    others right-aligned (figures); `notes` follow the table line by line."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(plain_table(header, rows))
        for note in notes:
            print(note)
        return
    table = Table(title=title, show_lines=False)
    for i, label in enumerate(header):
        table.add_column(label, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*row)
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: do not squeeze to 80 columns
            console = Console(width=200)
    console.print(table)
    for note in notes:
        console.print(note)


# -- the `bench` layout --------------------------------------------------------------


def bench_cells(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """`(header, cells)` of `BenchReport.rows()`: one column per
    `BENCH_COLUMNS` entry, each figure formatted by `format_cell`."""
    header = [label for _, label in BENCH_COLUMNS]
    cells = [[format_cell(key, row[key]) for key, _ in BENCH_COLUMNS] for row in rows]
    return header, cells


def format_cell(key: str, value: Any) -> str:
    """One figure of the `bench` layout as text (`–` when not measured)."""
    if value is None:
        return "–"
    if key == "mean_std_ms":
        return f"{value[0]:.3f}±{value[1]:.3f}"
    if key == "macs":
        return _si(value)
    if key == "accuracy":
        return f"{100 * value:.2f}%"
    if key == "peak_pct":
        return f"{value:.2f}"
    if key in ("size_kb", "gzip_kb", "memory_mb"):
        return f"{value:.1f}"
    if key.endswith("_ms"):
        return f"{value:.3f}"
    return str(value)


def _si(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


# -- the `ratio` layout --------------------------------------------------------------


def ratio_cells(
    rows: Sequence[Mapping[str, Any]],
    modes: Sequence[str] | None = None,
    reference: str = "teacher",
) -> tuple[list[str], list[list[str]]]:
    """`(header, cells)` of the text pipeline's rows: per model its accuracy
    and parameters beside their ratio to the `reference` model's; per
    exported format in `modes` (default: as the rows list them) its size,
    accuracy (not for ONNX, whose parity is checked instead), parity and p50
    latency at each sequence length and thread count, the latency beside its
    speed-up over the reference."""
    ref = next((r for r in rows if r["model"] == reference), None)
    columns = ["model", f"accuracy (× {reference})", f"params ({reference} ÷)"]
    cells = []
    for row in rows:
        line = [
            row["model"],
            _ratio(row["accuracy"], ref and ref["accuracy"], "{:.4f}", invert=False),
            _ratio(row["params"], ref and ref["params"], "{:,}", invert=True),
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
            columns.append(f"{mode} p50 ms, L={length}, {threads} thr ({reference} ÷)")
            base = ref and ref.get(mode, {}).get("p50_ms", {})
            base = base and base.get(str(length), {}).get(str(threads))
            for row, line in cells:
                value = row.get(mode, {}).get("p50_ms", {}).get(str(length), {}).get(str(threads))
                line.append("-" if value is None else _ratio(value, base, "{:.2f}", True))
    return columns, [line for _, line in cells]


def render_ratio_report(report: Mapping[str, Any], modes: Sequence[str] | None = None) -> str:
    """The Markdown report of a text pipeline's `report.json`: a heading
    with the command, data and stage times, then the `ratio` layout of its
    rows (ratios to the teacher).

    Example:

    ```python
    report = {
        "command": "kd-keras run examples/text_bbc_news.yaml", "backend": "tensorflow",
        "data": {"name": "bbc", "train": 10, "test": 5, "classes": 5},
        "sequence_length": 128, "stage_seconds": {"teacher": 12.0},
        "rows": [{"model": "teacher", "accuracy": 0.9, "params": 1000},
                 {"model": "student", "accuracy": 0.81, "params": 125}],
    }
    print(render_ratio_report(report, modes=("float", "dynamic", "onnx")))
    ```
    """
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
    lines += markdown_table(*ratio_cells(report["rows"], modes))
    return "\n".join(lines) + "\n"


def _ratio(value, reference, fmt: str, invert: bool) -> str:
    text = fmt.format(value)
    if not reference or not value:
        return text
    ratio = reference / value if invert else value / reference
    return f"{text} ({ratio:.2f}×)" if not invert else f"{text} ({ratio:.1f}×)"


def _parity(parity: Mapping | None) -> str:
    if not parity:
        return "-"
    verdict = "PASS" if parity["passed"] else "FAIL"
    if parity["criterion"] == "max_abs_diff":
        return f"{verdict} {parity['max_abs_diff']:.1e}"
    return f"{verdict} top-1 {parity['top1_agreement']:.3f}"
