"""Images in class sub-folders (`<path>/<class>/*.png`), read into NumPy.

Layouts:

```
path/<class>/*.png                       one pool, split by test_fraction (seeded)
path/train/<class>/*.png, path/test/...  the folder's own split
```

Labels index the sorted class-folder names; pixels become float32 in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kd_keras.data.splits import train_test_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
COLOR_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}


def _check_args(image_size, color_mode):
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}.")
    if image_size is None:
        return None
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else ()
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise ValueError(
            f"image_size must be [height, width] (two integers >= 1), got {image_size!r}."
        )
    return size


def _open(path: Path, mode: str, size):
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(image, dtype="float32") / 255.0
    return array[..., None] if array.ndim == 2 else array


def read_image_folder(
    path: str | os.PathLike,
    image_size: Sequence[int] | None = None,
    color_mode: str = "grayscale",
    class_names: Sequence[str] | None = None,
):
    """Every image under `path/<class>/`: `(x, y, class_names)`.

    Args:
        path: a folder with one sub-folder per class.
        image_size: `[height, width]` to resize to (bilinear); `None` keeps
            the files' size, which must then be the same for all images.
        color_mode: `"grayscale"` (1 channel), `"rgb"` (3) or `"rgba"` (4).
        class_names: the classes, in label order (default: the sorted
            sub-folder names); a sub-folder not listed is an error.

    Returns:
        `x` float32 `(n, height, width, channels)` in [0, 1], `y` int32
        labels, and the class names. Files are read in sorted order.

    Example:

    ```python
    import os
    from PIL import Image

    # A tiny folder of two classes, one sub-folder each.
    for name, value in [("cat", 40), ("dog", 200)]:
        os.makedirs(f"pets/{name}", exist_ok=True)
        for i in range(3):
            pixels = np.full((12, 10, 3), value + i, dtype="uint8")
            Image.fromarray(pixels).save(f"pets/{name}/{i}.png")

    x, y, classes = read_image_folder("pets/", image_size=[8, 8], color_mode="rgb")
    assert x.shape == (6, 8, 8, 3) and classes == ["cat", "dog"]
    assert list(y) == [0, 0, 0, 1, 1, 1]
    ```
    """
    size = _check_args(image_size, color_mode)
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Image folder {folder} does not exist: expected {folder}/<class>/<image files>."
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{folder} has class folders {unknown} that the training folder lacks "
            f"(classes: {classes}); give both splits the same class folders."
        )
    images, labels = [], []
    for label, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        for file in sorted(sub.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_open(file, COLOR_MODES[color_mode], size))
                labels.append(label)
    if not images:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}/<class>/: put each "
            "class's images in a sub-folder named after the class."
        )
    shapes = sorted({a.shape for a in images})
    if len(shapes) > 1:
        raise ValueError(
            f"Images in {folder} have different sizes {shapes[:4]}: pass "
            "image_size=[height, width] to resize them all."
        )
    return np.stack(images), np.array(labels, dtype="int32"), classes


def load_image_folder(
    path: str | os.PathLike,
    image_size: Sequence[int] | None = None,
    color_mode: str = "grayscale",
    test_fraction: float = 0.25,
    seed: int = 0,
):
    """`(x_train, y_train), (x_test, y_test)` from an image folder.

    With `path/train/` and `path/test/` the folder's own split is used
    (labels from the sorted class folders of `train/`); otherwise all images
    of `path/<class>/` are split, stratified, by `test_fraction` and `seed`.

    Example:

    ```python
    import os
    from PIL import Image

    # One sub-folder per class (no train/ and test/ here: the images are split).
    for digit in range(2):
        os.makedirs(f"digits_png/{digit}", exist_ok=True)
        for i in range(4):
            pixels = np.full((8, 8), 60 * digit + i, dtype="uint8")
            Image.fromarray(pixels).save(f"digits_png/{digit}/{i}.png")

    (x_train, y_train), (x_test, y_test) = load_image_folder("digits_png/", image_size=[8, 8])
    assert x_train.shape[1:] == (8, 8, 1) and len(x_train) + len(x_test) == 8
    ```
    """
    folder = Path(path)
    train, test = folder / "train", folder / "test"
    if train.is_dir() and test.is_dir():
        xt, yt, classes = read_image_folder(train, image_size, color_mode)
        xe, ye, _ = read_image_folder(test, image_size, color_mode, class_names=classes)
        if xe.shape[1:] != xt.shape[1:]:
            raise ValueError(
                f"train images are {xt.shape[1:]} but test images {xe.shape[1:]}: "
                "pass image_size=[height, width] to resize both."
            )
        return (xt, yt), (xe, ye)
    x, y, _ = read_image_folder(folder, image_size, color_mode)
    return train_test_split(x, y, test_fraction=test_fraction, seed=seed)
