"""Mutation score of kd_keras's numerical core (mutmut, TensorFlow backend).

For each core module, plants every single-token bug mutmut knows (an operator,
a constant, a comparison, a dropped argument, ...) one at a time and runs the
fast tests that execute the mutated function. A mutant is *killed* when a test
fails, *survived* when all pass. The score is (killed + timeout) / mutants, a
timeout counting as killed (as mutmut counts it) and a mutant no selected
test executes as not killed.

Each module runs in its own throw-away copy of the source tree (mutmut
rewrites the files it mutates), so the working tree is never modified. The
run is CPU-bound and single-worker on purpose (shared 2-core machines): run it
at low priority, in the background.

Usage:

    nice -n 19 python -m benchmarks.mutation                      # every module
    nice -n 19 python -m benchmarks.mutation --module schedules latency
    nice -n 19 python -m benchmarks.mutation --module distiller --workdir DIR --resume
    python -m benchmarks.mutation --list

Requires the "mutation" extra (`pip install -e .[mutation]`).

Example:
    python -m benchmarks.mutation --module latency --workdir /tmp/kd_mut
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python -m mutmut` would re-import mutmut.__main__ (mutmut warns about it).
MUTMUT = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]


@dataclasses.dataclass(frozen=True)
class Module:
    """One row of the table: a source file, optionally restricted to some of
    its functions, and the fast test files that cover it."""

    path: str
    # pytest arguments: test files or test ids.
    tests: tuple[str, ...]
    # The edge-case tests written against this module's surviving mutants;
    # `--baseline` leaves them out to measure the suite without them.
    edge_tests: tuple[str, ...] = ()
    # fnmatch patterns on mutmut's function keys (`x_name` for a function,
    # `xǁClassǁmethod` for a method); None mutates the whole file.
    functions: tuple[str, ...] | None = None
    # Keras inspects a Layer's `__init__` signature, which mutmut's
    # trampoline replaces by `(*args, **kwargs)`: such `__init__`s are left
    # unmutated (in the copy only, with mutmut's `no mutate block` pragma).
    keras_init: bool = False


def _nodes(path: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{path}::{name}" for name in names)


def _losses(name: str) -> Module:
    return Module(
        f"kd_keras/losses/{name}.py",
        ("tests/test_losses.py",),
        ("tests/test_losses_edges.py",),
        keras_init=True,
    )


_PRUNING_SCHEDULE_TESTS = _nodes(
    "tests/test_pruning.py",
    "test_schedule_matches_numpy_transcription_of_tfmot",
    "test_ramp_schedule_reaches_target_on_a_mask_update_then_holds",
    "test_recovery_learning_rate_holds_then_follows_cosine",
    "test_schedules_serialize",
    "test_schedule_bad_arguments",
)
_MASK_TESTS = _nodes(
    "tests/test_pruning.py",
    "test_magnitude_mask_matches_numpy",
    "test_block_mask_matches_numpy",
    "test_m_by_n_mask_matches_numpy",
    "test_masks_and_step_match_numpy_run_at_learning_rate_0",
)
_QUANTIZER_TESTS = _nodes(
    "tests/test_quantization.py",
    "test_fake_quant_per_tensor_asymmetric_matches_numpy_with_nudging",
    "test_per_channel_symmetric_weights_match_numpy_and_keep_zeros",
    "test_per_tensor_weight_quantizer_for_dense",
    "test_moving_average_quantizer_updates_in_training_only",
    "test_quantizers_serialize",
    "test_qat_forward_equals_numpy_reference_of_quantized_dense",
)
_FAKE_QUANT_TESTS = (
    *_nodes(
        "tests/test_quantization.py",
        "test_fake_quant_per_tensor_asymmetric_matches_numpy_with_nudging",
    ),
    *_nodes(
        "tests/test_quantization_fake_quant.py",
        "test_fake_quant_matches_numpy_values_and_straight_through_gradient",
        "test_fake_quant_ops_equals_tensorflow_fake_quant_op",
    ),
    *_nodes(
        "tests/test_quantization_edges.py",
        "test_fake_quant_equals_tensorflow_op",
        "test_per_channel_quantizer_equals_tensorflow_per_channel_op",
    ),
)
_FILTER_TESTS = _nodes(
    "tests/test_filter_pruning.py",
    "test_l1_l2_scores_match_numpy",
    "test_bn_gamma_scores_are_abs_gamma",
    "test_taylor_scores_match_numpy_backprop",
    "test_cnn_student_exact_and_counts",
    "test_residual_concat_flatten_gap_exact",
    "test_mobilenet_v3_small_ops_and_squeeze_excite_exact",
    "test_bn_gamma_selection_exact",
    "test_round_to_and_per_layer_fraction",
    "test_bad_fraction_refused",
    "test_bad_arguments_refused",
    "test_unsupported_layers_named",
)
_FOLDING_TESTS = _nodes(
    "tests/test_quantization.py",
    "test_fold_batch_norms_equals_unfolded_model_in_float",
    "test_quantize_model_graph_fuses_bn_and_relu_and_keeps_names",
    "test_batch_norm_that_cannot_be_folded_becomes_an_int8_mul_and_add",
)

# The covering fast tests of each module: the test files (or test ids) that
# check its values against a reference, plus the edge-case file written for
# the survivors. mutmut then runs, for each mutant, only those of them that
# execute the mutated function.
MODULES: dict[str, Module] = {
    "losses/base": _losses("base"),
    "losses/soft_target": _losses("soft_target"),
    "losses/logits_mse": _losses("logits_mse"),
    "losses/dkd": _losses("dkd"),
    "losses/hint": _losses("hint"),
    "losses/rkd": _losses("rkd"),
    "losses/attention_transfer": _losses("attention_transfer"),
    "losses/__init__": _losses("__init__"),
    "schedules": Module(
        "kd_keras/schedules.py", ("tests/test_schedules.py",), ("tests/test_schedules_edges.py",)
    ),
    "pruning/schedules": Module(
        "kd_keras/pruning/schedules.py",
        _PRUNING_SCHEDULE_TESTS,
        ("tests/test_pruning_edges.py",),
    ),
    "pruning/impl": Module(
        "kd_keras/pruning/impl.py", _MASK_TESTS, ("tests/test_pruning_edges.py",)
    ),
    "latency": Module(
        "kd_keras/bench/latency.py",
        _nodes(
            "tests/test_bench.py",
            "test_percentile_matches_numpy",
            "test_percentile_bounds_are_order_statistics",
        ),
        ("tests/test_latency_stats.py",),
        functions=("x_percentile", "x_summarize"),
    ),
    "teacher_cache": Module(
        "kd_keras/teacher_cache.py",
        ("tests/test_teacher_cache.py",),
        ("tests/test_teacher_cache_edges.py",),
    ),
    "quantizers": Module(
        "kd_keras/quantization/quantizers.py",
        _QUANTIZER_TESTS,
        ("tests/test_quantization_edges.py",),
    ),
    "fake_quantize": Module(
        "kd_keras/quantization/fake_quantize.py",
        _FAKE_QUANT_TESTS,
        ("tests/test_fake_quantize_edges.py",),
    ),
    "pruning/importance": Module(
        "kd_keras/pruning/importance.py",
        _FILTER_TESTS,
        ("tests/test_filter_pruning_edges.py",),
    ),
    "pruning/dependency": Module(
        "kd_keras/pruning/dependency.py",
        _FILTER_TESTS,
        ("tests/test_filter_pruning_edges.py",),
    ),
    "pruning/filters": Module(
        "kd_keras/pruning/filters.py",
        _FILTER_TESTS,
        ("tests/test_filter_pruning_edges.py",),
    ),
    "bn_folding": Module(
        "kd_keras/quantization/batch_norm_folding.py",
        _FOLDING_TESTS,
        ("tests/test_quantization_edges.py",),
        functions=("x__folds_into", "x_folded_weights", "x_fold_batch_norms"),
    ),
    "distiller": Module(
        "kd_keras/distiller.py",
        ("tests/test_distiller.py", "tests/test_teacher_cache.py", "tests/test_frozen_teacher.py"),
        ("tests/test_distiller_edges.py",),
        functions=(
            "x_combine_weights",
            "xǁDistillerǁteacher_forward",
            "xǁDistillerǁ_call_frozen",
            "xǁDistillerǁ_teacher_outputs",
            "xǁDistillerǁcompute_loss",
            "xǁDistillerǁ_labels_for_terms",
        ),
        keras_init=True,
    ),
}

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into
# the table's columns. A mutant no selected test executes ("no tests") counts
# as not killed: the score is (killed + timeout) / mutants.
KILLED = {"killed", "caught by type check", "segfault"}
TIMEOUT = {"timeout"}
SURVIVED = {"survived"}
NO_TESTS = {"no tests"}


def _mutmut_status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _config(module: Module, baseline: bool) -> str:
    selected = module.tests if baseline else module.tests + module.edge_tests
    tests = "\n    ".join(t for t in selected if (ROOT / t.split("::")[0]).exists())
    return (
        "[mutmut]\n"
        "source_paths = kd_keras\n"
        f"only_mutate = {module.path}\n"
        "pytest_add_cli_args =\n"
        "    -m\n    not slow\n    -p\n    no:cacheprovider\n    -q\n    -x\n"
        f"pytest_add_cli_args_test_selection =\n    {tests}\n"
        # The dependency tracker would re-test mutants of other files when
        # one changes; each copy holds one mutated file, so it is moot.
        "track_dependencies = false\n"
        # Forking mutmut's own process, which has run TensorFlow ops while
        # collecting stats, deadlocks TF's thread pools in the child; a fork
        # server that has only imported the tests is safe.
        "process_isolation = forkserver\n"
        # mutmut's default (15x the clean run + 1 s) marks mutants as timed
        # out (and counts them as killed) when a loaded machine merely starves
        # the worker; a generous constant keeps timeouts for real hangs.
        "timeout_multiplier = 5.0\n"
        "timeout_constant = 20.0\n"
        "forkserver_warmup = collect\n"
        "use_git_change_detection = false\n"
    )


def _pragma_keras_inits(source: str) -> str:
    """`source` with mutmut's `no mutate block` pragma on every `__init__`
    header (on the line that ends it, where mutmut reads it)."""
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        if re.match(r"\s+def __init__\(", lines[i]):
            while not re.search(r":\s*$", lines[i]):
                i += 1
            lines[i] += "  # pragma: no mutate block"
        i += 1
    return "\n".join(lines)


def _copy_tree(dest: Path, module: Module, baseline: bool) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "kd_keras", dest / "kd_keras", ignore=ignore)
    if module.keras_init:
        target = dest / module.path
        target.write_text(_pragma_keras_inits(target.read_text()))
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "setup.cfg").write_text(_config(module, baseline))


def _key_matches(key: str, module: Module) -> bool:
    if module.functions is None:
        return True
    function = key.rsplit(".", 1)[-1].split("__mutmut_")[0]
    return any(fnmatch.fnmatch(function, pattern) for pattern in module.functions)


def _mutant_globs(module: Module) -> list[str]:
    if module.functions is None:
        return []
    dotted = module.path[: -len(".py")].replace("/", ".")
    return [f"{dotted}.{f}__mutmut_*" for f in module.functions]


def _mutmut_env(backend: str = "tensorflow") -> dict:
    env = dict(os.environ)
    # The copy under test must be the one imported, not an editable install
    # or the working tree.
    env.pop("PYTHONPATH", None)
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    return env


def run_module(
    name: str, module: Module, workdir: Path, log, baseline: bool = False, resume: bool = False
) -> dict:
    """Runs mutmut on one module in `workdir/name`; returns its row. With
    `resume`, an interrupted run there goes on with the mutants it has not
    checked yet, against the same copy of the tests."""
    dest = workdir / name.replace("/", "_")
    meta = dest / "mutants" / (module.path + ".meta")
    targets = _mutant_globs(module)
    if resume and meta.exists():
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        # Named mutants are re-run even when checked, so only the unchecked are named.
        targets = sorted(k for k, v in codes.items() if v is None and _key_matches(k, module))
        if not targets:
            return read_results(name, module, dest)
    else:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        _copy_tree(dest, module, baseline)
    env = _mutmut_env()
    start = time.perf_counter()
    proc = subprocess.run(
        [*MUTMUT, "run", "--max-children", "1", *targets],
        cwd=dest,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"module": name, "error": f"mutmut exited {proc.returncode}", "seconds": seconds}
    return {**read_results(name, module, dest, env), "seconds": seconds}


def rerun_survivors(
    name: str,
    module: Module,
    workdir: Path,
    log,
    backend: str = "tensorflow",
    only: tuple[str, ...] = (),
) -> dict:
    """Re-runs, with mutmut, the survivors of an earlier run in `workdir/name`
    against the current tests (copied in afresh) under the Keras `backend`;
    the mutants it killed stay killed, since tests are only ever added.
    Another backend reaches the code only it runs (a `torch.no_grad` branch,
    the `keras.ops` path TensorFlow's own op replaces), which the test suite
    runs there too; `only` (fnmatch patterns on the keys) limits the re-run
    to such mutants. Returns the module's row."""
    dest = workdir / name.replace("/", "_")
    previous = read_results(name, module, dest)
    if "error" in previous:
        return previous
    config = _config(module, baseline=False)
    old_tests, new_tests = _selection(dest / "setup.cfg"), _selection(config)
    if not old_tests <= new_tests:
        return {"module": name, "error": "tests left the selection since that run: run afresh"}
    meta = dest / "mutants" / (module.path + ".meta")
    verdicts = json.loads(meta.read_text())["exit_code_by_key"]
    # An edge-case file written after the first run joins the selection.
    (dest / "setup.cfg").write_text(config)
    shutil.rmtree(dest / "tests")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    env = _mutmut_env(backend)
    start = time.perf_counter()
    # Only the survivors: a mutant the earlier run did not reach stays unchecked.
    survivors = [k for k in previous["survivors"] if previous["status"][k] in SURVIVED | NO_TESTS]
    if only:
        survivors = [k for k in survivors if any(fnmatch.fnmatch(k, p) for p in only)]
    if survivors:
        proc = subprocess.run(
            [*MUTMUT, "run", "--max-children", "1", *survivors],
            cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
        )
        if proc.returncode != 0:
            return {"module": name, "error": f"mutmut exited {proc.returncode}"}
    # mutmut forgets the verdicts of mutants it did not re-run when the test
    # selection grew; a mutant killed before stays killed, since tests were
    # only added.
    state = json.loads(meta.read_text())
    for key, code in verdicts.items():
        if state["exit_code_by_key"].get(key) is None and key not in survivors:
            state["exit_code_by_key"][key] = code
    meta.write_text(json.dumps(state))
    seconds = time.perf_counter() - start
    return {**read_results(name, module, dest, env), "seconds": seconds}


def _selection(config) -> set[str]:
    """The test ids of a mutmut config (a `setup.cfg` path or its text)."""
    text = config.read_text() if isinstance(config, Path) else config
    block = text.split("pytest_add_cli_args_test_selection =", 1)[1].split("\n")[1:]
    return {line.strip() for line in block if line.startswith("    ") and line.strip()}


def read_results(name: str, module: Module, dest: Path, env: dict | None = None) -> dict:
    """The row of a finished run in `dest`; survivors' diffs go to
    `dest/survivors.txt`."""
    meta = dest / "mutants" / (module.path + ".meta")
    if not meta.exists():
        return {"module": name, "error": "no mutmut results"}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    statuses = {k: _mutmut_status(v) for k, v in codes.items() if _key_matches(k, module)}
    counts = {
        "killed": sum(s in KILLED for s in statuses.values()),
        "survived": sum(s in SURVIVED for s in statuses.values()),
        "no_tests": sum(s in NO_TESTS for s in statuses.values()),
        "timeout": sum(s in TIMEOUT for s in statuses.values()),
    }
    counts["other"] = len(statuses) - sum(counts.values())
    survivors = sorted(k for k, s in statuses.items() if s not in KILLED | TIMEOUT)
    diffs = []
    for key in (k for k in survivors if statuses[k] != "not checked"):
        shown = subprocess.run(
            [*MUTMUT, "show", key], cwd=dest, env=env, capture_output=True, text=True, check=False
        )
        diffs.append(f"## {key} ({statuses[key]})\n{shown.stdout}")
    (dest / "survivors.txt").write_text("\n".join(diffs))
    return {
        "module": name,
        "mutants": len(statuses),
        **counts,
        "score": (counts["killed"] + counts["timeout"]) / len(statuses) if statuses else 0.0,
        "survivors": survivors,
        "status": {k: statuses[k] for k in survivors},
        "survivors_file": str(dest / "survivors.txt"),
    }


def format_table(rows: list[dict]) -> str:
    lines = [
        "| module | mutants | killed | survived | no tests | timeout | other | score | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else ""
        if "error" in r:
            lines.append(f"| {r['module']} | {r['error']} | | | | | | | {seconds} |")
            continue
        lines.append(
            f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | "
            f"{r['no_tests']} | {r['timeout']} | {r['other']} | {100 * r['score']:.1f} % | "
            f"{seconds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", nargs="+", choices=sorted(MODULES), metavar="NAME",
        help=f"modules to run (default: all): {', '.join(MODULES)}",
    )
    parser.add_argument("--workdir", type=Path, help="where the copies go (default: a temp dir)")
    parser.add_argument("--log", type=Path, help="mutmut's output (default: WORKDIR/mutmut.log)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--baseline", action="store_true",
        help="leave out the edge-case test files (the score before they were written)",
    )
    parser.add_argument(
        "--report-only", action="store_true",
        help="re-read the results already in --workdir instead of running mutmut",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="go on with an interrupted run in --workdir (its unchecked mutants only)",
    )
    parser.add_argument(
        "--rerun-survivors", action="store_true",
        help="re-run the survivors of the earlier run in --workdir against the current tests",
    )
    parser.add_argument(
        "--backend", default="tensorflow", choices=("tensorflow", "jax", "torch"),
        help="Keras backend of a --rerun-survivors run (first runs use TensorFlow)",
    )
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="PATTERN",
        help="re-run only the survivors whose key matches (e.g. '*x__gradients__mutmut_4*')",
    )
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, m in MODULES.items():
            print(f"{name:28s} {m.path}  {' '.join(m.functions or ())}")
        return 0
    if (args.report_only or args.rerun_survivors or args.resume) and not args.workdir:
        parser.error(
            "--report-only, --resume and --rerun-survivors need the --workdir of an earlier run"
        )
    if args.backend != "tensorflow" and not args.rerun_survivors:
        parser.error("--backend applies to --rerun-survivors: first runs use TensorFlow")
    try:
        import mutmut
    except ImportError:
        parser.error("mutmut is not installed: pip install -e '.[mutation]'")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kd_keras_mutation_"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = args.log or workdir / "mutmut.log"
    print(f"mutmut {mutmut.__version__}; copies in {workdir}; log in {log_path}", flush=True)
    rows = []
    with open(log_path, "a") as log:
        for name in args.module or list(MODULES):
            if args.report_only:
                dest = workdir / name.replace("/", "_")
                row = read_results(name, MODULES[name], dest)
            elif args.rerun_survivors:
                log.write(f"\n===== {name} (survivors) =====\n")
                log.flush()
                row = rerun_survivors(
                    name, MODULES[name], args.workdir, log, args.backend, tuple(args.only)
                )
            else:
                log.write(f"\n===== {name} =====\n")
                log.flush()
                row = run_module(name, MODULES[name], workdir, log, args.baseline, args.resume)
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
            for key in row.get("survivors", []):
                print(f"    {row['status'][key]}: {key}", flush=True)
    print()
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
