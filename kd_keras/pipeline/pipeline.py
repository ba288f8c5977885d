"""`Pipeline`: one resumable run of teacher -> distill -> prune -> quantize
-> export -> bench for any task (`task: image`, the default, or `task:
text`), inside the run folder of `kd_keras.pipeline.runfolder`.

The compression stages are the same code for every task
(`kd_keras.pipeline.stages`); the others are the task's
(`kd_keras.pipeline.image_task`, `kd_keras.pipeline.text_task`).

Example:

```python
from kd_keras.pipeline import Pipeline, load_config

outputs = Pipeline(load_config("examples/digits.yaml")).run()
print(outputs["bench"]["markdown"])
```
"""

from __future__ import annotations

import os
from typing import Any, Callable

from kd_keras.pipeline.config import ConfigError
from kd_keras.pipeline.image_task import STAGES, ImageTask
from kd_keras.pipeline.runfolder import RunFolder
from kd_keras.pipeline.stages import COMPRESSION_STAGES
from kd_keras.pipeline.task import Task
from kd_keras.pipeline.text_config import load_text_config
from kd_keras.pipeline.text_task import TextTask

__all__ = ["STAGES", "TASKS", "Pipeline", "TextPipeline", "run_text_pipeline"]

#: `task:` value -> its `Task` class.
TASKS: dict[str, type[Task]] = {ImageTask.name: ImageTask, TextTask.name: TextTask}


class Pipeline(RunFolder):
    """Runs the stages of a validated config inside its run folder.

    The task is the config's `task` (image when absent), or `task` when given.

    Example:

    ```python
    # Not run: trains a teacher and a student on digits (minutes).
    from kd_keras.pipeline import Pipeline, load_config
    outputs = Pipeline(load_config("examples/digits.yaml")).run()
    ```
    """

    # The image task's, as class attributes; an instance has its task's.
    stages = ImageTask.stages
    stage_sections = ImageTask.stage_sections
    #: The task of every instance, whatever the config says (`None`: the config's).
    fixed_task: type[Task] | None = None

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
        task: type[Task] | None = None,
    ):
        super().__init__(config, run_dir=run_dir, log=log)
        task = task or self.fixed_task
        if task is None:
            name = config.get("task", ImageTask.name)
            if name not in TASKS:
                raise ConfigError(f"'task' must be one of {list(TASKS)}, got {name!r}.")
            task = TASKS[name]
        self.task = task(self)
        self.stages = self.task.stages
        self.stage_sections = self.task.stage_sections

    @property
    def data(self):
        """The task's `(x_train, y_train), (x_test, y_test)`."""
        return self.task.data

    def run(self, rerun_from: str | None = None) -> dict[str, dict[str, Any]]:
        """Runs every unfinished stage in order (from `rerun_from` again, if
        given); returns each stage's outputs."""
        self.task.check()
        return super().run(rerun_from)

    def run_stage(self, stage: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if stage in COMPRESSION_STAGES:
            return COMPRESSION_STAGES[stage](self, results)
        return getattr(self.task, f"stage_{stage}")(results)

    def fit_args(self, spec: dict[str, Any], teacher=None) -> dict[str, Any]:
        """Training arguments of a stage's section `spec`; distillation
        settings from the `distill` section unless `spec` sets its own."""
        args = {
            "epochs": spec["epochs"],
            "batch_size": spec["batch_size"],
            "learning_rate": spec["learning_rate"],
            "teacher": teacher,
        }
        if teacher is not None:
            for key in ("temperature", "alpha"):
                value = spec.get(key)
                args[key] = self.config["distill"][key] if value is None else value
        return args


class TextPipeline(Pipeline):
    """The `Pipeline` of the text task, whatever the config's `task` says.

    Example:

    ```python
    import os
    import keras_hub

    # A tiny teacher preset saved by keras-hub (a real run names a preset such as
    # "bert_tiny_en_uncased", or leaves the default MiniLM-L6).
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + ["a", "good", "bad", "fine", "dull", "film"]
    keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    ).save_to_preset("tiny_bert")

    # A corpus in the BBC News layout: <class>/<n>.txt.
    for label, words in [("neg", ["bad", "dull"]), ("pos", ["good", "fine"])]:
        os.makedirs(f"reviews/{label}")
        for i in range(8):
            with open(f"reviews/{label}/{i}.txt", "w") as f:
                f.write(f"a {words[i % 2]} film")

    with open("text.yaml", "w") as f:
        f.write(
            '''
    task: text
    run_dir: runs/tiny
    data: {name: bbc, path: reviews, test_fraction: 0.25}
    teacher: {preset: tiny_bert, sequence_length: 8, epochs: 0}
    student: {num_layers: 1, hidden_dim: 8, num_heads: 1}
    general: {epochs: 0}
    distill: {epochs: 1, batch_size: 4}
    export: {enabled: false}
    bench: {sequence_lengths: [8], runs: 3, warmup: 1}
    '''
        )

    pipeline = TextPipeline(load_text_config("text.yaml"))
    results = pipeline.run()  # a second run() skips every finished stage
    x_train, x_test = pipeline.tokens  # the texts, tokenized once by the teacher
    ```
    """

    stages = TextTask.stages
    stage_sections = TextTask.stage_sections
    fixed_task = TextTask

    @property
    def tokens(self) -> tuple[dict, dict]:
        """Train and test texts tokenized once by the teacher's preprocessor."""
        return self.task.tokens

    @property
    def transfer_set(self):
        """What the distillation stages train on (see `TextTask.transfer_set`)."""
        return self.task.transfer_set


def run_text_pipeline(
    config_path: str | os.PathLike, run_dir: str | None = None, rerun_from: str | None = None
) -> dict:
    """Runs every unfinished stage of a `task: text` YAML file; returns each
    stage's outputs (`["bench"]["markdown"]` is the report).

    Example:

    ```python
    import os
    import keras_hub

    # A tiny teacher preset saved by keras-hub (a real run names a preset such as
    # "bert_tiny_en_uncased", or leaves the default MiniLM-L6).
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + ["a", "good", "bad", "fine", "dull", "film"]
    keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    ).save_to_preset("tiny_bert")

    # A corpus in the BBC News layout: <class>/<n>.txt.
    for label, words in [("neg", ["bad", "dull"]), ("pos", ["good", "fine"])]:
        os.makedirs(f"reviews/{label}")
        for i in range(8):
            with open(f"reviews/{label}/{i}.txt", "w") as f:
                f.write(f"a {words[i % 2]} film")

    with open("text.yaml", "w") as f:
        f.write(
            '''
    task: text
    run_dir: runs/tiny
    data: {name: bbc, path: reviews, test_fraction: 0.25}
    teacher: {preset: tiny_bert, sequence_length: 8, epochs: 0}
    student: {num_layers: 1, hidden_dim: 8, num_heads: 1}
    general: {epochs: 0}
    distill: {epochs: 1, batch_size: 4}
    export: {enabled: false}
    bench: {sequence_lengths: [8], runs: 3, warmup: 1}
    '''
        )

    results = run_text_pipeline("text.yaml", run_dir="runs/reviews")
    print(open(results["bench"]["markdown"]).read())
    ```
    """
    return TextPipeline(load_text_config(config_path), run_dir=run_dir).run(rerun_from)


