"""The `Example:` blocks of the public API run, as Keras's own docstrings do.

Objects are collected from the public namespaces (`kd_keras` and its
subpackages' `__all__`), not from files, so an object keeps its test wherever
its code lives; one test per object, named after its public name, so a broken
example names its object. After the `Example:` heading of a docstring, each
```python fenced block is executed, and `>>>` blocks run as doctests (their
printed output is compared). Every block of one object shares one fresh
namespace holding `keras`, `np` (NumPy) and `kd_keras`, with the working
directory a fresh temporary folder (examples may write files).

A block whose first line is `# Not run: <reason>` (or `>>> # Not run: ...`)
is skipped with that reason: for examples that need a download, a dataset
that is not on the machine or minutes of training.

The examples target the TensorFlow backend (the export and TFLite examples
need it), so the test runs there.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import types

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the docstring examples target the TensorFlow backend (export, TFLite)",
)

#: The public namespaces whose objects' examples run.
NAMESPACES = (
    "kd_keras",
    "kd_keras.losses",
    "kd_keras.pruning",
    "kd_keras.quantization",
    "kd_keras.export",
    "kd_keras.bench",
    "kd_keras.runtime",
    "kd_keras.pipeline",
    "kd_keras.data",
    "kd_keras.text",
)

#: The main public API: each of these must carry an example that runs (or a
#: block marked `# Not run:` with its reason).
MAIN_API = (
    "kd_keras.Distiller",
    "kd_keras.MutualDistiller",
    "kd_keras.cache_teacher_outputs",
    "kd_keras.self_distillation",
    "kd_keras.losses.SoftTargetKD",
    "kd_keras.losses.DKD",
    "kd_keras.losses.HintLoss",
    "kd_keras.losses.AttentionTransfer",
    "kd_keras.losses.RKD",
    "kd_keras.losses.LogitsMSE",
    "kd_keras.losses.get",
    "kd_keras.pruning.prune_low_magnitude",
    "kd_keras.pruning.strip_pruning",
    "kd_keras.pruning.PolynomialDecay",
    "kd_keras.pruning.ConstantSparsity",
    "kd_keras.pruning.UpdatePruningStep",
    "kd_keras.quantization.quantize_model",
    "kd_keras.quantization.convert",
    "kd_keras.quantization.quantize_post_training",
    "kd_keras.export.to_tflite",
    "kd_keras.export.to_onnx",
    "kd_keras.export.to_saved_model",
    "kd_keras.export.load_runner",
    "kd_keras.bench.measure_latency",
    "kd_keras.pipeline.load_config",
    "kd_keras.pipeline.validate_config",
    "kd_keras.pipeline.Pipeline",
    "kd_keras.text.TextDistiller",
)

#: Objects whose examples are still fragments: they use names the example
#: never defines (`model`, `student`, a `report`), read files that are not
#: there, or call their function on arguments it does not take. They are
#: expected to fail (strictly: one that starts to pass fails the run until it
#: is taken off this list). Empty: every example builds what it uses (tiny
#: models, arrays, files it writes itself) or is marked `# Not run:`.
FRAGMENTS: frozenset[str] = frozenset()

_EXAMPLE_HEADING = re.compile(r"^\s*Examples?:\s*$", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*```python[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"^\s*(?:>>>\s*)?#\s*Not run:\s*(.+)$", re.IGNORECASE)


def public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    # A module without `__all__` (`kd_keras.runtime`): what it defines itself.
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    ]


def public_objects() -> dict[str, object]:
    """`public name -> object`, each object once (under its first name)."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for name in public_names(module):
            value = getattr(module, name)
            if isinstance(value, types.ModuleType) or id(value) in seen:
                continue
            if not (inspect.isclass(value) or callable(value)):
                continue  # constants (`LOSSES`, `STAGES`) carry no docstring of their own
            seen.add(id(value))
            found[f"{namespace}.{name}"] = value
    return found


def example_blocks(docstring: str | None) -> list[str]:
    """The code blocks after the `Example:` heading, in order."""
    if not docstring:
        return []
    heading = _EXAMPLE_HEADING.search(docstring)
    if heading is None:
        return []
    section = inspect.cleandoc(docstring[heading.end() :])
    blocks = [m.group(1) for m in _FENCE.finditer(section)]
    if not blocks and ">>>" in section:
        blocks = [section]
    return blocks


def _own_docstring(value) -> str | None:
    # `inspect.getdoc` would hand a class without a docstring its base's.
    return value.__doc__ if isinstance(value.__doc__, str) else None


def example_namespace(name: str) -> dict:
    """What an example starts with: `keras`, `np`, `kd_keras` and, as in a
    doctest of the module, the public names of the namespace that exports
    the object (`build_student` in an example of `kd_keras.text`)."""
    module = importlib.import_module(name.rpartition(".")[0])
    namespace = {n: getattr(module, n) for n in public_names(module)}
    namespace.update(
        __name__=f"example_of_{name}",
        keras=keras,
        np=np,
        kd_keras=importlib.import_module("kd_keras"),
    )
    return namespace


OBJECTS = public_objects()
EXAMPLES = {
    name: blocks
    for name, value in OBJECTS.items()
    if (blocks := example_blocks(_own_docstring(value)))
}


def test_main_api_objects_have_examples():
    missing = [name for name in MAIN_API if name not in EXAMPLES]
    assert not missing, f"public objects without an `Example:` code block: {missing}"


def _cases() -> list:
    fragment = pytest.mark.xfail(strict=True, reason="the example is a fragment (see FRAGMENTS)")
    return [
        pytest.param(name, marks=fragment) if name in FRAGMENTS else name
        for name in sorted(EXAMPLES)
    ]


def test_fragments_are_public_objects_with_examples():
    # A stale entry (a renamed object, an example since removed) would
    # otherwise linger here unnoticed.
    assert sorted(FRAGMENTS - set(EXAMPLES)) == []


@pytest.mark.parametrize("name", _cases())
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = example_namespace(name)
    for i, block in enumerate(EXAMPLES[name]):
        first = block.strip().splitlines()[0]
        not_run = _NOT_RUN.match(first)
        if not_run:
            pytest.skip(f"{name}: {not_run.group(1).strip()}")
        if ">>>" in block:
            test = doctest.DocTestParser().get_doctest(block, namespace, name, None, 0)
            runner = doctest.DocTestRunner(
                optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
            )
            runner.run(test, clear_globs=False)
            assert runner.failures == 0, f"{name}: {runner.failures} doctest line(s) failed"
        else:
            code = compile(block, f"<{name} example block {i}>", "exec")
            exec(code, namespace)  # noqa: S102  (the docstring's own example)
