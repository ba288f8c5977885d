"""Writes tests/data/text_distiller_0.1.0.{keras,npz}: a `TextDistiller`
saved by kd_keras 0.1.0, kept for the load test of test_distiller_text.py
(the tests never rerun this script). Made with

    PYTHONPATH=$PWD KERAS_BACKEND=tensorflow python tests/data/make_text_distiller_fixture.py \\
        tests/data/text_distiller_0.1.0.keras tests/data/text_distiller_0.1.0.npz

then re-zipped with `zip -9` (Keras stores the archive's members uncompressed).
"""

import sys

import keras
import numpy as np

sys.path.insert(0, "tests")
from kd_keras import text  # noqa: E402
from test_text import tiny_classifier, token_inputs  # noqa: E402

keras.utils.set_random_seed(0)
teacher = tiny_classifier(num_layers=2, hidden_dim=8)
student = text.build_student(teacher, num_layers=1, hidden_dim=8, num_heads=1, dropout=0.0)
terms = text.tinybert_losses(teacher, student)
distiller = text.TextDistiller(student, teacher, losses=terms, alpha=0.5)
distiller.compile(optimizer="adam")
x = token_inputs([1, 2, 3, 4], seed=3)
y = (x["token_ids"][:, 1] % 3).astype("int32")
distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
distiller.save(sys.argv[1])
loss = distiller.compute_loss(x, y, distiller(x), training=False)
np.savez(
    sys.argv[2],
    out=keras.ops.convert_to_numpy(distiller(x)),
    loss=keras.ops.convert_to_numpy(loss),
    y=y,
    **x,
)
