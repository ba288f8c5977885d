"""`kd-keras run pipeline.yaml`: distill -> prune -> quantize -> export ->
benchmark into one resumable run folder (see `stages` and `config`); `task:
text` files run TinyBERT's recipe through `text_task`."""

from kd_keras.pipeline import steps
from kd_keras.pipeline.config import ConfigError, load_config, validate_config
from kd_keras.pipeline.stages import STAGES, Pipeline
from kd_keras.pipeline.steps import load_data
from kd_keras.pipeline.text_task import (
    TextPipeline,
    is_text_config,
    load_text_config,
    run_text_pipeline,
    validate_text_config,
)

__all__ = [
    "STAGES",
    "ConfigError",
    "Pipeline",
    "TextPipeline",
    "is_text_config",
    "load_config",
    "load_data",
    "load_text_config",
    "run_text_pipeline",
    "steps",
    "validate_config",
    "validate_text_config",
]
