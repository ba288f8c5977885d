"""Pipeline data sources and teachers beyond the built-ins: an image folder
(real PNG files), TensorFlow Datasets built offline from the Debian
Fashion-MNIST files, and a keras-hub preset teacher saved with
`save_to_preset` (the real loading path, no network)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from kd_keras.data import load_fashion_mnist, load_image_folder, load_tfds, read_image_folder
from kd_keras.pipeline import ConfigError, steps, validate_config

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist (the Debian Fashion-MNIST files)",
)


# -- image folder ---------------------------------------------------------------


def _sklearn_digits(n):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255 as PNG bytes; the loader must give back byte / 255.
    pixels = np.round(bunch.images[:n] * 255.0 / 16.0).astype("uint8")
    return pixels, bunch.target[:n].astype("int32")


def _write_pngs(folder: Path, pixels, labels, names=None):
    from PIL import Image

    for i, (image, label) in enumerate(zip(pixels, labels)):
        name = names[label] if names else str(label)
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / name / f"{i:04d}.png")


def test_image_folder_reads_pixels_and_labels_back(tmp_path):
    pixels, labels = _sklearn_digits(60)
    names = [f"class_{d}" for d in range(10)]
    _write_pngs(tmp_path, pixels, labels, names)
    x, y, classes = read_image_folder(tmp_path)
    assert classes == names
    # Files are read class by class, in name order: the same order as a
    # stable sort of the written samples by label.
    order = np.argsort(labels, kind="stable")
    assert x.shape == (60, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_allclose(x[..., 0], pixels[order] / 255.0, atol=1e-7)

    rgb, _, _ = read_image_folder(tmp_path, color_mode="rgb")
    assert rgb.shape == (60, 8, 8, 3)
    np.testing.assert_allclose(rgb[..., 1], x[..., 0], atol=1e-7)
    big, _, _ = read_image_folder(tmp_path, image_size=[16, 12])
    assert big.shape == (60, 16, 12, 1)


def test_image_folder_split_seeded_or_from_train_and_test(tmp_path):
    pixels, labels = _sklearn_digits(80)
    _write_pngs(tmp_path / "pool", pixels, labels)
    (xt, yt), (xe, ye) = load_image_folder(tmp_path / "pool", test_fraction=0.25, seed=3)
    again = load_image_folder(tmp_path / "pool", test_fraction=0.25, seed=3)
    assert len(xt) + len(xe) == 80 and 15 <= len(xe) <= 25
    np.testing.assert_array_equal(again[1][1], ye)
    assert sorted(np.concatenate([yt, ye]).tolist()) == sorted(labels.tolist())

    _write_pngs(tmp_path / "split" / "train", pixels[:60], labels[:60])
    _write_pngs(tmp_path / "split" / "test", pixels[60:], labels[60:])
    (xt, yt), (xe, ye) = steps.load_data(
        validate_config(
            {
                "data": {"name": "image_folder", "path": str(tmp_path / "split")},
                "teacher": {"builder": "cnn_teacher"},
                "student": {"builder": "cnn_student"},
            }
        )["data"]
    )
    assert (len(xt), len(xe)) == (60, 20)
    order = np.argsort(labels[60:], kind="stable")
    np.testing.assert_array_equal(ye, labels[60:][order])
    np.testing.assert_allclose(xe[..., 0], pixels[60:][order] / 255.0, atol=1e-7)


def test_image_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="<class>/<image files>"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="No images"):
        read_image_folder(tmp_path / "empty")
    from PIL import Image

    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "mixed" / "a" / "1.png")
    Image.new("L", (9, 8)).save(tmp_path / "mixed" / "a" / "2.png")
    with pytest.raises(ValueError, match="image_size=\\[height, width\\]"):
        read_image_folder(tmp_path / "mixed")
    with pytest.raises(ValueError, match="color_mode must be one of"):
        read_image_folder(tmp_path / "mixed", color_mode="cmyk")


# -- TensorFlow Datasets ----------------------------------------------------------


def _rows(x, y):
    """Each (image, label) as hashable bytes, to compare datasets as multisets."""
    images = np.round(np.asarray(x).reshape(len(x), -1) * 255).astype("uint8")
    return sorted(image.tobytes() + bytes([int(label)]) for image, label in zip(images, y))


@needs_fashion
def test_tfds_builds_fashion_mnist_offline_from_the_debian_files(tmp_path):
    (xt, yt), (xe, ye) = load_tfds(
        "fashion_mnist", tmp_path, manual_dir=FASHION_DIR, max_examples_per_split=64
    )
    assert xt.shape == (64, 28, 28, 1) and xt.dtype == np.float32 and yt.dtype == np.int32
    # TFDS wrote the first 64 examples of each IDX file (in its own order).
    (ft, fyt), (fe, fye) = load_fashion_mnist(FASHION_DIR)
    assert _rows(xt, yt) == _rows(ft[:64], fyt[:64])
    assert _rows(xe, ye) == _rows(fe[:64], fye[:64])
    # The local checksums were recorded beside the downloads, not validated.
    recorded = (tmp_path / "downloads" / "fashion_mnist.local_checksums.tsv").read_text()
    assert "train-images-idx3-ubyte.gz" in recorded
    # Prepared now: a second load needs no manual_dir.
    (xt2, _), _ = load_tfds("fashion_mnist", tmp_path)
    np.testing.assert_array_equal(xt2, xt)


def test_tfds_missing_data_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared in data_dir") as info:
        load_tfds("fashion_mnist", tmp_path / "tfds")
    assert "data.manual_dir" in str(info.value)
    assert "tfds build fashion_mnist --data_dir" in str(info.value)
    with pytest.raises(FileNotFoundError, match="manual_dir .* does not exist"):
        load_tfds("fashion_mnist", tmp_path / "tfds", manual_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="needs the file '.*-ubyte.gz' in manual_dir"):
        load_tfds("fashion_mnist", tmp_path / "tfds", manual_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="not a TFDS dataset"):
        load_tfds("no_such_dataset_kd", tmp_path / "tfds")


@needs_fashion
def test_tfds_unknown_split_lists_the_splits(tmp_path):
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_tfds(
            "fashion_mnist",
            tmp_path,
            manual_dir=FASHION_DIR,
            test_split="validation",
            max_examples_per_split=8,
        )


@pytest.mark.slow  # builds all 70,000 images (~25 s, 1.6 GB)
@needs_fashion
def test_tfds_full_fashion_mnist_equals_the_idx_files(tmp_path):
    (xt, yt), (xe, ye) = load_tfds("fashion_mnist", tmp_path, manual_dir=FASHION_DIR)
    (ft, fyt), (fe, fye) = load_fashion_mnist(FASHION_DIR)
    assert (len(xt), len(xe)) == (60000, 10000)
    assert _rows(xt, yt) == _rows(ft, fyt)
    assert _rows(xe, ye) == _rows(fe, fye)


# -- config -------------------------------------------------------------------------

BASE = {"teacher": {"builder": "cnn_teacher"}, "student": {"builder": "cnn_student"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "tfds", "data_dir": "d"}, r"'data.tfds_name' must name"),
        ({"name": "tfds", "tfds_name": "mnist"}, r"'data.data_dir' must name"),
        ({"name": "digits", "tfds_name": "mnist"}, r"'data.tfds_name' applies to data.name: tfds"),
        ({"name": "image_folder"}, r"'data.path' must name a folder"),
        ({"name": "image_folder", "path": "p", "image_size": [8]}, r"'data.image_size' must be"),
        ({"name": "image_folder", "path": "p", "color_mode": "hsv"}, r"'data.color_mode'"),
        ({"name": "npz", "path": "x.npz", "color_mode": "rgb"}, r"'data.color_mode' applies"),
        ({"name": "tfds", "tfds_name": "m", "data_dir": "d", "path": "p"}, r"'data.path' is not"),
        ({"name": "digits", "test_fraction": 1.0}, r"'data.test_fraction' must be"),
    ],
)
def test_data_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({**BASE, "data": data}, source="p.yaml")


def test_config_value_checks():
    from kd_keras.pipeline.checks import int_at_least, is_bool, list_of, non_empty_str, number_in

    assert int_at_least(1)(1) and int_at_least(1)(10**9)
    # YAML's `yes` is a bool and 1.0 is a float: neither is an epoch count.
    assert not any(int_at_least(0)(v) for v in (True, 1.0, "1", -1))
    fraction = number_in(0, 1, open_low=True)
    assert fraction(1) and fraction(0.5) and not fraction(0) and not fraction(1.01)
    assert number_in(0)(0.0) and number_in(0)(3) and not number_in(0)(False)
    assert list_of(is_bool)([True, False])
    assert not list_of(is_bool)([]) and not list_of(is_bool)([1]) and not list_of(is_bool)(True)
    assert non_empty_str("a") and not non_empty_str("") and not non_empty_str(None)


def test_teacher_preset_is_exclusive_with_path_and_builder():
    config = {**BASE, "data": {"name": "digits"}}
    config["teacher"] = {"builder": "cnn_teacher", "preset": "resnet_18_imagenet"}
    with pytest.raises(ConfigError, match=r"exactly one of 'teacher.path'.*'teacher.preset'"):
        validate_config(config)
    config["student"] = {"preset": "x"}
    config["teacher"] = {"preset": "x"}
    with pytest.raises(ConfigError, match=r"unknown key 'student.preset'"):
        validate_config(config)


# -- keras-hub preset teacher ----------------------------------------------------------


def _tiny_preset(folder: Path, with_converter: bool, num_classes: int = 10):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(8, 8, 1),
    )
    preprocessor = None
    if with_converter:
        converter = keras_hub.layers.ResNetImageConverter(image_size=(8, 8), scale=2.0, offset=-1.0)
        preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(converter)
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=num_classes, preprocessor=preprocessor
    )
    classifier.save_to_preset(str(folder))
    return classifier


@pytest.mark.parametrize("with_converter", [False, True])
def test_preset_teacher_loads_from_a_local_preset(tmp_path, with_converter):
    pytest.importorskip("keras_hub")
    saved = _tiny_preset(tmp_path / "preset", with_converter)
    teacher = steps.load_preset(str(tmp_path / "preset"), num_classes=10)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    # The preprocessing the preset would apply in predict, now in the graph.
    x_in = x * 2.0 - 1.0 if with_converter else x
    expected = keras.ops.convert_to_numpy(saved(x_in, training=False))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(teacher(x, training=False)), expected, atol=1e-5
    )


def test_preset_with_another_class_count_gets_a_new_head(tmp_path):
    pytest.importorskip("keras_hub")
    saved = _tiny_preset(tmp_path / "preset", with_converter=False, num_classes=3)
    assert steps.preset_num_classes(str(tmp_path / "preset")) == 3
    teacher = steps.load_preset(str(tmp_path / "preset"), num_classes=10)
    assert teacher.output_shape == (None, 10)
    for mine, theirs in zip(teacher.backbone.weights, saved.backbone.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs)
        )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports TFLite")
def test_pipeline_fine_tunes_a_preset_teacher(tmp_path):
    pytest.importorskip("keras_hub")
    from kd_keras.pipeline import Pipeline

    _tiny_preset(tmp_path / "preset", with_converter=True)
    config = validate_config(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"name": "digits", "max_train": 128, "max_test": 64},
            "teacher": {"preset": str(tmp_path / "preset"), "epochs": 1, "batch_size": 32},
            "student": {"builder": "cnn_student", "kwargs": {"filters": [4, 8]}},
            "distill": {"epochs": 1},
            "prune": {"enabled": False},
            "quantize": {"modes": ["dynamic"]},
            "bench": {"threads": [1], "runs": 2, "warmup": 1},
        }
    )
    results = Pipeline(config, log=lambda message: None).run()
    teacher = keras.saving.load_model(results["teacher"]["model"])
    assert teacher.output_shape == (None, 10)
    history = (tmp_path / "run" / "teacher" / "history.json").read_text()
    assert '"loss"' in history  # fine-tuned, one epoch
    # The float teacher exported with parity (the converter runs in the graph).
    from kd_keras.export import load_report

    assert load_report(tmp_path / "run" / "export" / "teacher.tflite").passed
