"""The compression stages, written once for every task: `prune` (magnitude
pruning while fine-tuning the distilled student) and `quantize` (QAT
training, or nothing for post-training quantization, which the export stage
applies). Each takes the running `Pipeline` and the finished stages' outputs
and returns its own outputs; the task says how its data and models are
loaded, trained and saved (`kd_keras.pipeline.task.Task`).

Example:

```python
from kd_keras.pipeline import Pipeline, load_config
from kd_keras.pipeline.stages import COMPRESSION_STAGES

pipeline = Pipeline(load_config("examples/digits.yaml"))
results = pipeline.run()
COMPRESSION_STAGES["prune"](pipeline, results)  # runs the body again
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from kd_keras.io import write_json
from kd_keras.pipeline.prune_step import prune_student
from kd_keras.pipeline.quantize_step import quantize_aware_train
from kd_keras.pruning import sparsity_report

if TYPE_CHECKING:  # for type hints only: pipeline.py imports this module
    from kd_keras.pipeline.pipeline import Pipeline

__all__ = ["COMPRESSION_STAGES", "prune_stage", "quantize_stage"]

Results = dict[str, dict[str, Any]]


def prune_stage(pipeline: Pipeline, results: Results) -> dict[str, Any]:
    """Prunes the distilled student (`prune` section); `{"student": path,
    "sparsity": ...}`, or the distilled student with `skipped` when
    `prune.enabled` is false."""
    spec, task = pipeline.config["prune"], pipeline.task
    source = results["distill"]["student"]
    if not spec["enabled"]:
        return {"student": source, "skipped": True}
    student = task.load_student(source)
    x, y = task.training_set()
    teacher = task.load_teacher(results) if spec["distill"] else None
    pruned, stripped, history = prune_student(
        student,
        x,
        y,
        final_sparsity=spec["final_sparsity"],
        m_by_n=spec["m_by_n"],
        filters=spec["filters"],
        ramp=spec["ramp"],
        lr_schedule=spec["lr_schedule"],
        callbacks=[pipeline.backup("prune")],
        log=pipeline.log,
        **pipeline.fit_args(spec, teacher=teacher),
    )
    pipeline.save_history(history, "prune")
    report = sparsity_report(pruned)
    pipeline.log(str(report))
    write_json(pipeline.run_dir / "prune" / "sparsity.json", report.as_dict(), overwrite=True)
    return {
        "student": task.save_student(task.adopt(stripped, student), "prune/student_pruned.keras"),
        "sparsity": report.pruned_sparsity,
    }


def quantize_stage(pipeline: Pipeline, results: Results) -> dict[str, Any]:
    """Quantization-aware training of the (pruned) student with `quantize.method:
    qat`; with `ptq` only records the modes, which the export stage applies."""
    spec, task = pipeline.config["quantize"], pipeline.task
    if spec["method"] == "ptq":
        # Post-training quantization needs no training: export applies it.
        return {"method": "ptq", "modes": spec["modes"]}
    x, y = task.training_set()
    student = task.load_student(results["prune"]["student"])
    teacher = task.load_teacher(results) if spec["distill"] else None
    qat, history = quantize_aware_train(
        student,
        x,
        y,
        callbacks=[pipeline.backup("quantize")],
        **pipeline.fit_args(spec, teacher=teacher),
    )
    pipeline.save_history(history, "quantize")
    return {"method": "qat", "student": task.save_student(qat, "quantize/student_qat.keras")}


#: The stages every task runs the same way: name -> body.
COMPRESSION_STAGES: dict[str, Callable[[Pipeline, Results], dict[str, Any]]] = {
    "prune": prune_stage,
    "quantize": quantize_stage,
}
