"""`kd-keras run pipeline.yaml`: distill -> prune -> quantize -> export ->
benchmark into one resumable run folder (see `stages` and `config`)."""

from kd_keras.pipeline import steps
from kd_keras.pipeline.config import ConfigError, load_config, validate_config
from kd_keras.pipeline.stages import STAGES, Pipeline
from kd_keras.pipeline.steps import load_data

__all__ = [
    "STAGES",
    "ConfigError",
    "Pipeline",
    "load_config",
    "load_data",
    "steps",
    "validate_config",
]
