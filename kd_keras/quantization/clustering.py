"""Weight clustering (k-means weight sharing) with TFMOT's API, in Keras 3.

`cluster_weights(model, number_of_clusters=16)` wraps every `Dense` /
`Conv*D` / `DepthwiseConv2D` so its kernel is replaced, in each forward pass,
by the nearest of `number_of_clusters` trainable centroids. Gradients reach
both the centroids (summed over the weights assigned to each, TFMOT's
`GradientAggregation.SUM`) and the original weights (straight-through), so
`fit` keeps moving weights between clusters. `strip_clustering` writes the
clustered kernels into plain layers: each kernel then holds exactly
`number_of_clusters` distinct values, which is what makes the `.tflite`
compress (gzip) and what TFLite's palettized formats store.

Biases and normalization parameters are not clustered (as in TFMOT).

`preserve_sparsity=True` (TFMOT's sparsity-preserving clustering) is for a
pruned model: the kernel's zeros are recorded in a non-trainable mask and
stay exactly zero, and as in TFMOT zero counts as one of the
`number_of_clusters` values, so `number_of_clusters - 1` trainable centroids
are fitted to the non-zero weights. Without it a pruned kernel's zeros snap
to the nearest centroid and the sparsity is lost. Prune, cluster with
`preserve_sparsity=True`, then quantize (TFMOT's collaborative optimization):
each kernel then holds at most `number_of_clusters` distinct values, 0 one
of them. Unlike TFMOT, whose zero centroid also absorbs small non-zero
weights, the zeros stay exactly the pruned ones: the sparsity the pruning
schedule chose is the sparsity that ships.
"""

from __future__ import annotations

import enum
from typing import Iterable

import keras
import numpy as np
from keras import ops

from kd_keras.quantization import _kernels, graph, tfmot_bridge
from kd_keras.uncompile import uncompile


class CentroidInitialization(str, enum.Enum):
    """How centroids start (TFMOT's names and values).

    * `LINEAR`: evenly spaced between the kernel's min and max.
    * `KMEANS_PLUS_PLUS`: k-means++ seeding, refined by Lloyd iterations
      until the assignment stops changing.
    """

    LINEAR = "CentroidInitialization.LINEAR"
    KMEANS_PLUS_PLUS = "CentroidInitialization.KMEANS_PLUS_PLUS"


def _as_init(value) -> CentroidInitialization:
    try:
        return CentroidInitialization(value)
    except ValueError:
        for member in CentroidInitialization:
            if str(value).upper() in (member.name, member.value.upper()):
                return member
    raise ValueError(
        f"cluster_centroids_init must be one of {[m.name for m in CentroidInitialization]}, "
        f"got {value!r}."
    )


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)


def init_centroids(
    weights,
    number_of_clusters: int,
    method=CentroidInitialization.KMEANS_PLUS_PLUS,
    seed: int = 0,
    max_iterations: int = 100,
) -> np.ndarray:
    """Sorted initial centroids (float32) for the values of `weights`.

    Example:

    ```python
    init_centroids(kernel, 16, CentroidInitialization.LINEAR)  # linspace(min, max, 16)
    ```
    """
    method = _as_init(method)
    values = np.asarray(weights, dtype="float64").ravel()
    if method is CentroidInitialization.LINEAR:
        return np.linspace(values.min(), values.max(), number_of_clusters).astype("float32")
    distinct = np.unique(values)
    if len(distinct) < number_of_clusters:
        raise ValueError(
            f"A kernel with {len(distinct)} distinct values cannot be split into "
            f"{number_of_clusters} k-means clusters; use fewer clusters or LINEAR init."
        )
    rng = np.random.default_rng(seed)
    centroids = [values[rng.integers(len(values))]]
    for _ in range(1, number_of_clusters):
        distance = np.min(np.abs(values[:, None] - np.array(centroids)[None, :]), axis=1) ** 2
        centroids.append(values[rng.choice(len(values), p=distance / distance.sum())])
    centroids = np.sort(np.array(centroids))
    assignment = _nearest(values, centroids)
    for _ in range(max_iterations):
        for c in range(number_of_clusters):
            members = values[assignment == c]
            if len(members):
                centroids[c] = members.mean()
        new_assignment = _nearest(values, centroids)
        if np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return np.sort(centroids).astype("float32")


@keras.saving.register_keras_serializable(package="kd_keras")
class ClusterWeights(keras.layers.Wrapper):
    """Runs a kernel layer with its kernel snapped to trainable centroids.

    Args:
        layer: a `Dense`, `Conv1D/2D/3D` or `DepthwiseConv2D` layer.
        number_of_clusters: how many distinct kernel values remain.
        cluster_centroids_init: a `CentroidInitialization`.
        preserve_sparsity: keep the kernel's zeros (as found when the
            centroids are initialized) exactly zero; zero is then one of
            the `number_of_clusters` values and the other
            `number_of_clusters - 1` centroids fit the non-zero weights.

    Example:

    ```python
    inputs = keras.Input((16,))
    x = ClusterWeights(keras.layers.Dense(64), number_of_clusters=8)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(np.random.rand(32, 16), np.random.randint(0, 10, 32), epochs=1, verbose=0)

    stripped = strip_clustering(model)  # plain Dense layers again
    assert len(np.unique(stripped.layers[1].kernel.numpy())) <= 8
    ```
    """

    def __init__(
        self,
        layer,
        number_of_clusters: int,
        cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity: bool = False,
        **kwargs,
    ):
        # Under a mixed policy, weights are assigned to their nearest centroid
        # in float32: in bfloat16 both would be rounded first, and the stripped
        # float32 kernel would not be the one trained with. So the clustered
        # layer computes in float32 (inputs cast in `call`); the wrapped
        # layer's own policy comes back with `strip_clustering`.
        kwargs["autocast"] = False
        kwargs["dtype"] = "float32"
        super().__init__(layer, **kwargs)
        if not _kernels.is_kernel_layer(layer):
            raise ValueError(
                f"ClusterWeights clusters kernel layers "
                f"({[c.__name__ for c in _kernels.KERNEL_LAYERS]}); "
                f"{layer.name!r} is a {type(layer).__name__}."
            )
        problem = _kernels.kernel_layer_problem(layer)
        if problem:
            raise ValueError(f"ClusterWeights: layer {layer.name!r} {problem}.")
        least = 3 if preserve_sparsity else 2  # zero takes one cluster
        if not isinstance(number_of_clusters, int) or number_of_clusters < least:
            raise ValueError(
                f"number_of_clusters must be an int >= {least}"
                f"{' with preserve_sparsity (0 is one of them)' if preserve_sparsity else ''}, "
                f"got {number_of_clusters!r}."
            )
        self.number_of_clusters = number_of_clusters
        self.cluster_centroids_init = _as_init(cluster_centroids_init)
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, input_shape):
        super().build(input_shape)
        self.cluster_centroids = self.add_weight(
            name="cluster_centroids",
            shape=(self.number_of_clusters - int(self.preserve_sparsity),),
            initializer="zeros",
            trainable=True,
        )
        if self.preserve_sparsity:
            self.sparsity_mask = self.add_weight(
                name="sparsity_mask",
                shape=tuple(self.layer.kernel.shape),
                initializer="ones",
                trainable=False,
            )
        self.reset_centroids()

    def reset_centroids(self):
        """Initialize the centroids (and, with `preserve_sparsity`, the mask)
        from the layer's current kernel."""
        kernel = ops.convert_to_numpy(self.layer.kernel)
        values = kernel
        if self.preserve_sparsity:
            nonzero = kernel != 0
            self.sparsity_mask.assign(nonzero.astype("float32"))
            values = kernel[nonzero]
        try:
            centroids = init_centroids(
                values, self.cluster_centroids.shape[0], self.cluster_centroids_init
            )
        except ValueError as err:
            raise ValueError(
                f"ClusterWeights {self.name!r}: {err} Or leave the layer unclustered with "
                f"cluster_weights(..., skip_layers=[{self.name!r}])."
            ) from None
        self.cluster_centroids.assign(centroids)

    def clustered_kernel(self, straight_through: bool = True):
        """The kernel with every weight replaced by its nearest centroid.

        With `straight_through` the value is computed so that the original
        weights receive gradients too (equal to the centroid up to float
        rounding); without it, it is exactly the centroid (for stripping).
        """
        kernel = self.layer.kernel
        centroids = ops.cast(self.cluster_centroids, kernel.dtype)
        distance = ops.abs(ops.expand_dims(kernel, -1) - centroids)
        assignment = ops.argmin(distance, axis=-1)
        clustered = ops.take(centroids, assignment)
        mask = ops.cast(self.sparsity_mask, kernel.dtype) if self.preserve_sparsity else None
        if mask is not None:
            clustered = clustered * mask
        if not straight_through:
            return clustered
        # Straight-through: the original weights get the clustered kernel's
        # gradient too, so weights can migrate between clusters (pruned ones
        # get none, so they cannot drift towards a centroid).
        passthrough = kernel - ops.stop_gradient(kernel)
        return clustered + (passthrough if mask is None else passthrough * mask)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        outputs = _kernels.kernel_call(self.layer, inputs, self.clustered_kernel())
        return self.layer.activation(outputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            number_of_clusters=self.number_of_clusters,
            cluster_centroids_init=self.cluster_centroids_init.value,
            preserve_sparsity=self.preserve_sparsity,
        )
        return config


def _clone_with(model, make_layer, copy_weights):
    """Clone a functional `model` layer by layer, then copy weights across."""
    originals = {layer.name: layer for layer in model.layers}
    made = {}

    def clone_function(layer):
        if layer.name not in made:
            made[layer.name] = make_layer(layer)
        return made[layer.name]

    new_model = keras.models.clone_model(model, clone_function=clone_function)
    for name, new_layer in made.items():
        copy_weights(originals[name], new_layer)
    return new_model


def cluster_weights(
    to_cluster: keras.Model,
    number_of_clusters: int,
    cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
    skip_layers: Iterable[str] | None = None,
    preserve_sparsity: bool = False,
) -> keras.Model:
    """Return a copy of `to_cluster` whose kernels train clustered.

    Mirrors `tfmot.clustering.keras.cluster_weights`. A tf_keras model is
    handed to TFMOT itself (see `kd_keras.quantization.tfmot_bridge`).

    Args:
        to_cluster: a trained Sequential / Functional model.
        number_of_clusters: distinct values left in each kernel (0 included
            with `preserve_sparsity`, as in TFMOT).
        cluster_centroids_init: `CentroidInitialization.LINEAR` or
            `KMEANS_PLUS_PLUS`.
        skip_layers: names of kernel layers to leave unclustered.
        preserve_sparsity: keep each kernel's zeros zero (for a pruned,
            stripped model); the centroids then cover the non-zero weights.

    Example:

    ```python
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, size=32)
    student = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])

    clustered = cluster_weights(student, 16, CentroidInitialization.KMEANS_PLUS_PLUS)
    clustered.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clustered.fit(x, y, epochs=1, verbose=0)
    final = strip_clustering(clustered)
    ```
    """
    if tfmot_bridge.is_tf_keras_model(to_cluster):
        return tfmot_bridge.tfmot_cluster_weights(
            to_cluster, number_of_clusters, cluster_centroids_init, preserve_sparsity
        )
    model = graph.as_functional(to_cluster, "cluster_weights")
    skip = set(skip_layers or ())
    unknown = skip - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"skip_layers names layers not in {model.name!r}: {sorted(unknown)}.")
    init = _as_init(cluster_centroids_init)

    def make_layer(layer):
        clone = type(layer).from_config(layer.get_config())
        if _kernels.is_kernel_layer(layer) and layer.name not in skip:
            return ClusterWeights(
                clone, number_of_clusters, init, preserve_sparsity, name=layer.name
            )
        return clone

    def copy_weights(old, new):
        if isinstance(new, ClusterWeights):
            new.layer.set_weights(old.get_weights())
            new.reset_centroids()
        elif old.weights:
            new.set_weights(old.get_weights())

    return _clone_with(model, make_layer, copy_weights)


def strip_clustering(model: keras.Model) -> keras.Model:
    """Replace every `ClusterWeights` by its layer holding the clustered kernel.

    The result is a new, uncompiled model (`kd_keras.uncompile`): the
    clustering run's optimizer state is not saved with it; `compile` again
    to evaluate or fine-tune.

    Example:

    ```python
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, size=32)
    student = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])

    clustered = cluster_weights(student, 4)
    final = strip_clustering(clustered)
    len(np.unique(final.get_layer("conv1").kernel))  # == number_of_clusters
    ```
    """
    if tfmot_bridge.is_tf_keras_model(model):
        return tfmot_bridge.tfmot_strip_clustering(model)
    model = graph.as_functional(model, "strip_clustering")

    def make_layer(layer):
        inner = layer.layer if isinstance(layer, ClusterWeights) else layer
        config = inner.get_config()
        config["name"] = layer.name
        return type(inner).from_config(config)

    def copy_weights(old, new):
        if isinstance(old, ClusterWeights):
            weights = old.layer.get_weights()
            weights[0] = ops.convert_to_numpy(old.clustered_kernel(straight_through=False))
            new.set_weights(weights)
        elif old.weights:
            new.set_weights(old.get_weights())

    return uncompile(_clone_with(model, make_layer, copy_weights))
