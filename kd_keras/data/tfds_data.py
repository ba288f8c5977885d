"""TensorFlow Datasets, offline: read a prepared dataset from `data_dir`, or
build it from source files the user placed in `manual_dir`. Nothing is ever
downloaded (no network in CI, on clusters, or here).

`manual_dir` holds the dataset's original files under the names TFDS
expects (e.g. Fashion-MNIST's four `*-ubyte.gz`, as Debian's
`dataset-fashion-mnist` installs them in `/usr/share/datasets/fashion-mnist`).
Such copies often differ from the ones TFDS registered byte for byte (a
re-compressed gzip has another header), so their checksums are recorded in
`<data_dir>/downloads/<name>.local_checksums.tsv` (TFDS's
`register_checksums`) instead of being checked against TFDS's list; the
decoded examples are what TFDS validates (counts and features).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "data.name: tfds needs TensorFlow Datasets: pip install tensorflow-datasets"
        ) from err
    return tfds


def _offline_download_manager(tfds, builder, data_dir: Path, manual_dir: Path):
    """A DownloadManager that takes files from `manual_dir` and fails with
    instructions instead of downloading."""

    class OfflineDownloadManager(tfds.download.DownloadManager):
        # `_download` is where TFDS goes to the network once neither
        # manual_dir nor the download cache has the file.
        def _download(self, resource):
            info = self._url_infos.get(resource.url)
            name = info.filename if info is not None and info.filename else resource.url
            raise FileNotFoundError(
                f"TFDS dataset '{builder.name}' needs the file {name!r} in manual_dir "
                f"{manual_dir} (source: {resource.url}); downloading is disabled. Copy "
                f"the dataset's original files into {manual_dir} under the names TFDS "
                f"expects, or prepare the dataset on a machine with network "
                f"(`tfds build {builder.name} --data_dir <dir>`) and set data_dir to "
                f"that folder."
            )

    downloads = data_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    return OfflineDownloadManager(
        download_dir=downloads,
        extract_dir=downloads / "extracted",
        manual_dir=manual_dir,
        manual_dir_instructions=builder.MANUAL_DOWNLOAD_INSTRUCTIONS,
        url_infos=builder.url_infos,
        # Record, not validate: see the module docstring.
        register_checksums=True,
        register_checksums_path=downloads / f"{builder.name}.local_checksums.tsv",
        dataset_name=builder.name,
    )


def prepare_tfds(
    name: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    max_examples_per_split: int | None = None,
):
    """The TFDS builder of `name` in `data_dir`, prepared offline if needed.

    Args:
        name: a TFDS name, optionally with config/version (`"fashion_mnist"`,
            `"mnist:3.*.*"`).
        data_dir: TFDS's data folder (prepared datasets live in
            `<data_dir>/<name>/<version>/`).
        manual_dir: folder of the source files, used when the dataset is not
            prepared yet.
        max_examples_per_split: build only the first N examples of each split
            (quick looks and tests; TFDS then caches that partial dataset in
            `data_dir`, so use a separate `data_dir`).

    Example:

    ```python
    # Not run: builds all of Fashion-MNIST as a TFDS dataset (about a minute).
    builder = prepare_tfds("fashion_mnist", "tfds_data",
                           manual_dir="/usr/share/datasets/fashion-mnist")
    ```
    """
    tfds = _tfds()
    data_dir = Path(data_dir).expanduser()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"data.tfds_name {name!r} is not a TFDS dataset known to this "
            f"tensorflow-datasets install: {str(err).splitlines()[0]}"
        ) from err
    if builder.is_prepared():
        return builder
    if manual_dir is None:
        raise FileNotFoundError(
            f"TFDS dataset '{name}' is not prepared in data_dir {data_dir} and "
            f"downloading is disabled. Either set data.manual_dir to a folder holding "
            f"its source files (TFDS then builds it into data_dir), or prepare it on a "
            f"machine with network (`tfds build {name} --data_dir {data_dir}`) and copy "
            f"{data_dir} here."
        )
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise FileNotFoundError(
            f"data.manual_dir {manual_dir} does not exist: it must be a folder holding "
            f"the source files of TFDS dataset '{name}'."
        )
    manager = _offline_download_manager(tfds, builder, data_dir, manual_dir)
    # download_and_prepare builds its DownloadManager through this method;
    # handing it ours is the one way in for a manager that never downloads.
    builder._make_download_manager = lambda download_dir, download_config: manager
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir),
            try_download_gcs=False,
            max_examples_per_split=max_examples_per_split,
        )
    )
    return builder


def _as_arrays(tfds, builder, split: str, image_key: str, label_key: str):
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(
            f"TFDS dataset '{builder.name}' has no split {split!r}; its splits are "
            f"{sorted(str(s) for s in builder.info.splits)} (set data.train_split / "
            "data.test_split)."
        )
    features = builder.info.features
    missing = [k for k in (image_key, label_key) if k not in features]
    if missing:
        raise ValueError(
            f"TFDS dataset '{builder.name}' has no feature {missing}; its features are "
            f"{sorted(features)}."
        )
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    x, y = np.asarray(batch[image_key]), np.asarray(batch[label_key]).astype("int32")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype("float32") / float(np.iinfo(x.dtype).max)
    return x.astype("float32"), y


def load_tfds(
    name: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    max_examples_per_split: int | None = None,
):
    """`(x_train, y_train), (x_test, y_test)` of a TFDS image dataset, offline.

    Integer images are scaled to float32 in [0, 1]; labels are int32. Splits
    accept TFDS's slicing syntax (`"train[:90%]"`). See `prepare_tfds` for
    `data_dir`, `manual_dir` and `max_examples_per_split`.

    Example:

    ```python
    # Not run: builds all of Fashion-MNIST as a TFDS dataset (about a minute).
    (x_train, y_train), (x_test, y_test) = load_tfds(
        "fashion_mnist", "tfds_data", manual_dir="/usr/share/datasets/fashion-mnist")
    ```
    """
    tfds = _tfds()
    builder = prepare_tfds(name, data_dir, manual_dir, max_examples_per_split)
    return tuple(
        _as_arrays(tfds, builder, split, image_key, label_key)
        for split in (train_split, test_split)
    )
