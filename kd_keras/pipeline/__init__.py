"""`kd-keras run pipeline.yaml`: distill -> prune -> quantize -> export ->
benchmark into one resumable run folder, for images (`task: image`) and
texts (`task: text`, TinyBERT's recipe) alike: one `Pipeline`, generic over a
`Task` (`image_task`, `text_task`); configs in `config` / `text_config`."""

from kd_keras.pipeline import steps
from kd_keras.pipeline.config import ConfigError, load_config, validate_config
from kd_keras.pipeline.data_sources import load_data
from kd_keras.pipeline.image_task import ImageTask
from kd_keras.pipeline.pipeline import STAGES, TASKS, Pipeline, TextPipeline, run_text_pipeline
from kd_keras.pipeline.task import Task
from kd_keras.pipeline.text_config import (
    is_text_config,
    load_text_config,
    validate_text_config,
)
from kd_keras.pipeline.text_task import TextTask

__all__ = [
    "STAGES",
    "TASKS",
    "ConfigError",
    "ImageTask",
    "Pipeline",
    "Task",
    "TextPipeline",
    "TextTask",
    "is_text_config",
    "load_config",
    "load_data",
    "load_text_config",
    "run_text_pipeline",
    "steps",
    "validate_config",
    "validate_text_config",
]
