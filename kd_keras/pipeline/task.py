"""What the pipeline needs to know about one kind of data and model: a `Task`.

`kd_keras.pipeline.Pipeline` runs teacher -> distill -> prune -> quantize ->
export -> bench for every task. The compression stages (prune, quantize) are
written once, against this interface; the stages that depend on the data and
the models (how a teacher is made, how a student is distilled, exported and
measured) are the task's `stage_<name>` methods, and a task may add stages
of its own (text: TinyBERT's `general` distillation).

A task reads the pipeline's validated config and uses its run folder
(`pipeline.run_dir`, `pipeline.backup(stage)`, `pipeline.save_history`).

Example:

```python
from kd_keras.pipeline import Pipeline, load_config

pipeline = Pipeline(load_config("examples/digits.yaml"))
pipeline.task.name  # "image"
(x, y), (x_test, y_test) = pipeline.task.data
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # for type hints only: pipeline.py imports this module
    from kd_keras.pipeline.pipeline import Pipeline

__all__ = ["Task"]


class Task:
    """The task-specific half of a pipeline run.

    Subclasses set the class attributes and implement the methods below; a
    stage named in `stages` that is not a compression stage is run by the
    task's `stage_<name>(results)` method.
    """

    #: The `task:` value of a YAML file.
    name: ClassVar[str] = ""
    #: The stage names in order (the compression stages among them).
    stages: ClassVar[tuple[str, ...]] = ()
    #: The config sections each stage reads, beyond those of earlier stages.
    stage_sections: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The post-training quantization modes the task's export writes.
    quantize_modes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self._data = None

    @property
    def config(self) -> dict[str, Any]:
        return self.pipeline.config

    # -- data ------------------------------------------------------------------

    @property
    def data(self):
        """`(x_train, y_train), (x_test, y_test)`, loaded once."""
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def load_data(self):
        """`(x_train, y_train), (x_test, y_test)` of the config's `data`
        section; `x` is one array or named arrays `{name: array}`."""
        raise NotImplementedError

    def inputs(self) -> dict[str, tuple[tuple, str]]:
        """The students' inputs: `{name: (shape without batch, dtype)}`."""
        raise NotImplementedError

    def training_set(self):
        """`(x, y)` the compression stages fine-tune on (model inputs)."""
        raise NotImplementedError

    def evaluation_set(self):
        """`(x, y)` accuracy is measured on (model inputs)."""
        raise NotImplementedError

    # -- models ----------------------------------------------------------------

    def load_student(self, path: str):
        """A student `.keras` file saved by an earlier stage, ready to train."""
        raise NotImplementedError

    def load_teacher(self, results: dict[str, dict[str, Any]]):
        """The teacher the `teacher` stage made."""
        raise NotImplementedError

    def save_student(self, model, relative: str) -> str:
        """Saves `model` atomically as `run_dir/<relative>`; returns the path."""
        raise NotImplementedError

    def adopt(self, compressed, student):
        """The compressed copy (pruned and stripped) as this task's kind of
        model; `student` is what it was made from."""
        return compressed

    def accuracy(self, model, x, y) -> float:
        """Top-1 accuracy of `model` on `(x, y)`."""
        raise NotImplementedError

    def check(self) -> None:
        """Refuses, with a `ConfigError`, what cannot run, before any training."""
