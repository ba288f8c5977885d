"""kd_keras: knowledge distillation and model compression for Keras 3."""

from kd_keras import losses

__version__ = "0.1.0"
__all__ = ["losses"]
