"""Offline dataset loaders. Each returns NumPy arrays and says exactly what to
install when its files are missing."""

from kd_keras.data.bbc_news import load_bbc_news, read_bbc_news
from kd_keras.data.digits import load_digits
from kd_keras.data.fashion_mnist import load_fashion_mnist, read_idx
from kd_keras.data.image_folder import load_image_folder, read_image_folder
from kd_keras.data.splits import few_labels_split, train_test_split
from kd_keras.data.tfds_data import load_tfds, prepare_tfds
from kd_keras.data.vader_movies import load_vader_movies, read_vader_movies

__all__ = [
    "load_bbc_news",
    "load_vader_movies",
    "read_bbc_news",
    "read_vader_movies",
    "few_labels_split",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_tfds",
    "prepare_tfds",
    "read_image_folder",
    "read_idx",
    "train_test_split",
]
