"""Run TFMOT's own pruning tests against kd_keras (a conformance run, not CI).

TFMOT's test files (`pruning_schedule_test.py`, `pruning_impl_test.py`,
`prune_test.py`, `pruning_callbacks_test.py` from tensorflow/model-optimization,
`tensorflow_model_optimization/python/core/sparsity/keras/`) are fetched by
the user into FOLDER; this script copies them to a temporary directory,
rewrites them mechanically and runs them with pytest on the TensorFlow
backend, printing PASS / FAIL per test and the totals. The test files are
never stored in this repository.

The rewrite changes nothing a test asserts. It is, in full:

1. Imports. TFMOT's modules become kd_keras's:
   `prune` -> `kd_keras.pruning` (prune_low_magnitude, strip_pruning,
   prune_scope), `pruning_schedule` -> `kd_keras.pruning.schedules`,
   `pruning_wrapper` -> `kd_keras.pruning.wrapper`, `pruning_callbacks` ->
   `kd_keras.pruning.callbacks`, `prunable_layer` -> `kd_keras.pruning`
   (PrunableLayer), `...compat import keras` -> `import keras` (Keras 3),
   `quantization.keras.utils` -> `keras.saving` (deserialize_keras_object).
   Three TFMOT test helpers are provided as small files beside the tests:
   `test_utils.build_simple_dense_model` (the same two Dense layers, in
   Keras 3), `compat.initialize_variables` (a no-op: Keras 3 runs eagerly),
   and `pruning_impl.Pruning`, TFMOT's internal mask-update object, written
   on kd_keras's public mask functions (`magnitude_mask`, `block_mask`,
   `m_by_n_mask`): the masks under test are kd_keras's.
2. Keras 2 -> Keras 3 spellings: `keras.backend.get_value(x)` / `K.get_value(x)`
   -> `keras.ops.convert_to_numpy(x)`; `keras.models.model_from_config(
   json.loads(m.to_json()))` -> `keras.models.model_from_json(m.to_json())`;
   weight files end in `.weights.h5` (Keras 3 has no `.h5` / TF-checkpoint
   `save_weights` format).

Usage (TensorFlow backend; about a minute on 2 CPU cores):

    python -m benchmarks.tfmot_conformance /path/to/tfmot_tests
    python -m benchmarks.tfmot_conformance /path/to/tfmot_tests --keep /tmp/adapted
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEST_FILES = (
    "pruning_schedule_test.py",
    "pruning_impl_test.py",
    "prune_test.py",
    "pruning_callbacks_test.py",
)

_TFMOT = "tensorflow_model_optimization.python.core"

# (pattern, replacement): rule 1 (imports).
IMPORTS = [
    (rf"from {_TFMOT}\.keras\.compat import keras\n", "import keras\n"),
    (rf"from {_TFMOT}\.keras import compat\n", "import compat\n"),
    (
        rf"from {_TFMOT}\.keras import test_utils as keras_test_utils\n",
        "import test_utils as keras_test_utils\n",
    ),
    (
        rf"from {_TFMOT}\.quantization\.keras import utils as quantize_utils\n",
        "from keras import saving as quantize_utils\n",
    ),
    (rf"from {_TFMOT}\.sparsity\.keras import prune\n", "from kd_keras import pruning as prune\n"),
    (
        rf"from {_TFMOT}\.sparsity\.keras import prunable_layer\n",
        "from kd_keras import pruning as prunable_layer\n",
    ),
    (
        rf"from {_TFMOT}\.sparsity\.keras import pruning_schedule\n",
        "from kd_keras.pruning import schedules as pruning_schedule\n",
    ),
    (
        rf"from {_TFMOT}\.sparsity\.keras import pruning_wrapper\n",
        "from kd_keras.pruning import wrapper as pruning_wrapper\n",
    ),
    (
        rf"from {_TFMOT}\.sparsity\.keras import pruning_callbacks\n",
        "from kd_keras.pruning import callbacks as pruning_callbacks\n",
    ),
    (rf"from {_TFMOT}\.sparsity\.keras import pruning_impl\n", "import pruning_impl\n"),
]

# Rule 2 (Keras 2 -> Keras 3 spellings).
SPELLINGS = [
    (r"\bkeras\.backend\.get_value\(", "keras.ops.convert_to_numpy("),
    (r"\bK\.get_value\(", "keras.ops.convert_to_numpy("),
    (
        r"keras\.models\.model_from_config\(\s*json\.loads\((\w+)\.to_json\(\)\)\)",
        r"keras.models.model_from_json(\1.to_json())",
    ),
    (r"(_, keras_weights = tempfile\.mkstemp\()'\.h5'\)", r"\1'.weights.h5')"),
    (r"(_, tf_weights = tempfile\.mkstemp\()'\.tf'\)", r"\1'.weights.h5')"),
]

HELPERS = {
    "test_utils.py": '''"""TFMOT's keras/test_utils.py model, in Keras 3."""
import keras


def build_simple_dense_model():
    return keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(5, activation="sigmoid"),
    ])
''',
    "compat.py": '''"""TFMOT's keras/compat.py: eager Keras 3 variables need no initialisation."""


def initialize_variables(testobj):
    del testobj
''',
    "pruning_impl.py": '''"""TFMOT's internal `pruning_impl.Pruning` on kd_keras's mask functions.

The object holds (weight, mask, threshold) variables and a schedule; its
mask computations are `kd_keras.pruning.impl`'s, chosen as the wrapper
chooses them (m-by-n groups along the input axis, -2: rows of a Dense
kernel, input channels of a conv kernel).
"""
import keras
from keras import ops

from kd_keras.pruning import impl


class Pruning:
    def __init__(self, training_step_fn, pruning_vars, pruning_schedule, block_size,
                 block_pooling_type, sparsity_m_by_n=None):
        self._step_fn = training_step_fn
        self._pruning_vars = pruning_vars
        self._schedule = pruning_schedule
        self._block_size = tuple(block_size)
        self._pooling = block_pooling_type
        self._m_by_n = sparsity_m_by_n or None

    def _sparsity(self):
        return self._schedule(self._step_fn())[1]

    def _update_mask(self, weights):
        weights = ops.convert_to_tensor(weights)
        mask, threshold = impl.magnitude_mask(weights, self._sparsity())
        return threshold, mask

    def _maybe_update_block_mask(self, weights):
        weights = ops.convert_to_tensor(weights)
        if self._m_by_n:
            return None, impl.m_by_n_mask(weights, self._m_by_n, -2)
        if self._block_size == (1, 1):
            return self._update_mask(weights)
        mask, threshold = impl.block_mask(
            weights, self._sparsity(), self._block_size, self._pooling)
        return threshold, mask

    def conditional_mask_update(self):
        should, _ = self._schedule(self._step_fn())
        if not bool(ops.convert_to_numpy(should)):
            return
        for weight, mask, threshold in self._pruning_vars:
            new_threshold, new_mask = self._maybe_update_block_mask(
                ops.multiply(ops.convert_to_tensor(weight), ops.cast(mask, weight.dtype)))
            mask.assign(ops.cast(new_mask, mask.dtype))
            if new_threshold is not None:
                threshold.assign(ops.cast(new_threshold, threshold.dtype))

    def weight_mask_op(self):
        for weight, mask, _ in self._pruning_vars:
            weight.assign(ops.multiply(weight, ops.cast(mask, weight.dtype)))
''',
}


def adapt(source: str) -> str:
    """TFMOT test source -> the same tests against kd_keras (rules 1 and 2)."""
    for pattern, replacement in IMPORTS + SPELLINGS:
        source = re.sub(pattern, replacement, source)
    leftover = [line for line in source.splitlines() if "tensorflow_model_optimization" in line]
    if leftover:
        raise SystemExit(f"Unmapped TFMOT import(s), extend IMPORTS: {leftover}")
    return source


def prepare(folder: Path, target: Path) -> list[str]:
    missing = [name for name in TEST_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(
            f"{folder} lacks {missing}: fetch them from tensorflow/model-optimization, "
            "tensorflow_model_optimization/python/core/sparsity/keras/."
        )
    for name in TEST_FILES:
        (target / name).write_text(adapt((folder / name).read_text()))
    for name, text in HELPERS.items():
        (target / name).write_text(text)
    return list(TEST_FILES)


def run(target: Path, repo: Path) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join([str(repo), str(target), env.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(target),
        *TEST_FILES,
    ]
    proc = subprocess.run(cmd, cwd=target, env=env, capture_output=True, text=True)
    outcomes = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", line)
        if match and not line.startswith("SKIPPED ["):
            outcomes[match.group(2)] = match.group(1)
    return outcomes, proc.stdout + proc.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder holding TFMOT's four test files")
    parser.add_argument("--keep", type=Path, help="write the adapted tests here and keep them")
    parser.add_argument("--log", action="store_true", help="print pytest's full output")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp)
        prepare(args.folder, target)
        outcomes, log = run(target, repo)
        if args.keep:
            shutil.copytree(target, args.keep, dirs_exist_ok=True)
    if args.log or not outcomes:
        print(log)
    for test, outcome in outcomes.items():
        print(f"{'PASS' if outcome == 'PASSED' else outcome:7s} {test}")
    passed = sum(outcome == "PASSED" for outcome in outcomes.values())
    print(f"\n{passed} of {len(outcomes)} adapted TFMOT tests pass.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
