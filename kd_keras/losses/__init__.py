"""Distillation terms, each a serializable layer (see `base.DistillationLoss`)."""

from kd_keras.losses.base import DistillationLoss, weighted_mean
from kd_keras.losses.soft_target import SoftTargetKD

__all__ = ["DistillationLoss", "SoftTargetKD", "weighted_mean"]
