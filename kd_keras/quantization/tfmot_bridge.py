"""TFMOT bridge: tf_keras models go through the real TensorFlow Model
Optimization Toolkit.

TFMOT (`tensorflow-model-optimization`) only accepts tf_keras (Keras 2)
models. When `quantize_model`, `cluster_weights` or `strip_clustering` from
`kd_keras.quantization` receive a tf_keras model, they call TFMOT's function
of the same name here and say so with a `TFMOTBridgeNotice` warning; `convert`
converts the result with `TFLiteConverter.from_keras_model`. Keras 3 models
use kd_keras' native implementation instead.
"""

from __future__ import annotations

import warnings


class TFMOTBridgeNotice(UserWarning):
    """Emitted when a tf_keras model is handed to TFMOT."""


def is_tf_keras_model(model) -> bool:
    """True for a tf_keras (Keras 2) model, without importing tf_keras."""
    return any(cls.__module__.split(".")[0] == "tf_keras" for cls in type(model).__mro__)


def _tfmot(what: str):
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as err:
        raise ImportError(
            "tf_keras models are quantized and clustered by TFMOT: "
            "pip install tensorflow-model-optimization tf_keras"
        ) from err
    warnings.warn(
        f"kd_keras: this is a tf_keras model, so it goes through TFMOT's {what} "
        f"(tensorflow_model_optimization {tfmot.__version__}), not kd_keras' Keras 3 "
        f"implementation.",
        TFMOTBridgeNotice,
        stacklevel=3,
    )
    return tfmot


def tfmot_quantize_model(model):
    """`tfmot.quantization.keras.quantize_model` on a tf_keras model.

    Example:

    ```python
    qat = tfmot_quantize_model(tf_keras_model)  # then compile / fit / convert
    ```
    """
    return _tfmot("quantize_model").quantization.keras.quantize_model(model)


def tfmot_cluster_weights(
    model, number_of_clusters, cluster_centroids_init=None, preserve_sparsity=False
):
    """`tfmot.clustering.keras.cluster_weights` on a tf_keras model.

    `cluster_centroids_init` is a kd_keras or TFMOT `CentroidInitialization`
    (both use the same string values).
    """
    tfmot = _tfmot("cluster_weights")
    init = tfmot.clustering.keras.CentroidInitialization
    value = getattr(cluster_centroids_init, "value", cluster_centroids_init)
    chosen = init(value) if value is not None else init.KMEANS_PLUS_PLUS
    return tfmot.clustering.keras.cluster_weights(
        model,
        number_of_clusters=number_of_clusters,
        cluster_centroids_init=chosen,
        preserve_sparsity=preserve_sparsity,
    )


def tfmot_strip_clustering(model):
    """`tfmot.clustering.keras.strip_clustering` on a tf_keras model."""
    return _tfmot("strip_clustering").clustering.keras.strip_clustering(model)


def is_tfmot_quantized(model) -> bool:
    """True when a tf_keras model holds TFMOT `QuantizeWrapper` layers."""
    return any(type(layer).__name__.startswith("QuantizeWrapper") for layer in model.layers)
