"""The run folder that makes a pipeline resumable: completion markers,
config fingerprints, moving outputs aside for a re-run, and a crash-safe
`BackupAndRestore`.

Each stage writes into `run_dir/<stage>/` and, only when it has finished,
an atomic completion marker `run_dir/.stages/<stage>.json` listing its
outputs. A re-run skips every stage with a marker. Training stages also keep
`keras.callbacks.BackupAndRestore` state (`atomic_backup_and_restore`), so a
run killed mid-epoch resumes from the last finished epoch instead of starting
the stage over.

A marker also records a fingerprint of the config sections its stage and
every earlier stage read. A re-run whose config changed under a finished
stage stops with a `ConfigError` that names the changed sections, instead of
silently reusing results made from the old config; `run(rerun_from=stage)`
(`kd-keras run --rerun-from STAGE`) redoes that stage and every later one,
after moving their old outputs to `run_dir/.replaced/<time>/`.

A pipeline subclasses `RunFolder` with its `stages`, the config sections each
reads (`stage_sections`) and one `_stage_<name>(results)` method per stage.

Example:

```python
class TwoStages(RunFolder):
    stages = ("train", "report")
    stage_sections = {"train": ("seed", "train"), "report": ("report",)}

    def _stage_train(self, results):
        return {"model": "train/model.keras"}

    def _stage_report(self, results):
        return {"markdown": "report.md"}

outputs = TwoStages({"run_dir": "runs/two", "seed": 0, "train": {}, "report": {}}).run()
```
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import keras

from kd_keras.io import write_json
from kd_keras.pipeline.backup import atomic_backup_and_restore
from kd_keras.pipeline.config import ConfigError

__all__ = ["RunFolder", "command_line"]


class RunFolder:
    """Runs `stages` in order inside `run_dir`, skipping finished ones.

    Subclasses set `stages`, `stage_sections` and the `_stage_<name>` methods
    (see the module docstring).
    """

    #: The stage names, in order; each runs `self._stage_<name>(results)`.
    stages: tuple[str, ...] = ()
    #: The config sections each stage reads, beyond those of earlier stages.
    stage_sections: dict[str, tuple[str, ...]] = {}

    def __init__(
        self, config: dict[str, Any], run_dir=None, log: Callable[[str], None] | None = None
    ):
        self.config = config
        self.run_dir = Path(run_dir or config["run_dir"])
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    # -- markers -----------------------------------------------------------

    def marker(self, stage: str) -> Path:
        return self.run_dir / ".stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict[str, Any] | None:
        """The outputs recorded by `stage`'s marker, or `None` if it has not finished."""
        record = self._record(stage)
        return record["outputs"] if record else None

    def _record(self, stage: str) -> dict[str, Any] | None:
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def _sections(self, stage: str) -> dict[str, Any]:
        """The config sections `stage` reads, as they read back from JSON."""
        sections = {key: self.config.get(key) for key in self.stage_sections.get(stage, ())}
        return json.loads(json.dumps(sections, default=str))

    def fingerprints(self) -> dict[str, str]:
        """Per stage, a hash of the config sections read by it and by every
        stage before it: what its finished outputs were made from."""
        chain, prints = "", {}
        for stage in self.stages:
            text = json.dumps(self._sections(stage), sort_keys=True)
            chain = hashlib.sha256((chain + text).encode()).hexdigest()[:16]
            prints[stage] = chain
        return prints

    def _complete(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
        record = {
            "stage": stage,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "fingerprint": self.fingerprints()[stage],
            "sections": self._sections(stage),
        }
        write_json(self.marker(stage), record, overwrite=True)

    def _check_fingerprint(self, stage: str, record: dict[str, Any], expected: str) -> None:
        """Raise if `stage` finished under a config that differs from this one."""
        recorded = record.get("fingerprint")
        if recorded is None or recorded == expected:
            return  # markers written before fingerprints existed are trusted
        now = self._sections(stage)
        before = record.get("sections", {})
        changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        raise ConfigError(
            f"{self.run_dir} holds stage '{stage}' finished with a different config "
            f"(changed since: {', '.join(changed) or 'an earlier stage'}). Re-run from there "
            f"with `kd-keras run CONFIG --rerun-from {stage}` (Pipeline.run("
            f"rerun_from='{stage}')), which moves the old outputs of '{stage}' and later "
            f"stages to {self.run_dir / '.replaced'}/, or give the new config another run_dir."
        )

    def _retire(self, first: str) -> None:
        """Move the markers and folders of `first` and every later stage to
        `run_dir/.replaced/<time>/`, so they run again and nothing is deleted."""
        if first not in self.stages:
            raise ConfigError(f"rerun_from must be one of {list(self.stages)}, got {first!r}.")
        target = self.run_dir / ".replaced" / time.strftime("%Y%m%d-%H%M%S")
        for stage in self.stages[self.stages.index(first) :]:
            for path in (self.marker(stage), self.run_dir / stage):
                if path.exists():
                    destination = target / path.relative_to(self.run_dir)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), str(destination))
        if target.exists():
            self.log(f"[{first}] re-running; earlier outputs moved to {target}")

    # -- running -------------------------------------------------------------

    def run(self, rerun_from: str | None = None) -> dict[str, dict[str, Any]]:
        """Runs every unfinished stage in order; returns each stage's outputs.

        `rerun_from` runs that stage and every later one again (their old
        outputs are moved aside, see the module docstring)."""
        if rerun_from is not None:
            self._retire(rerun_from)
        prints = self.fingerprints()
        for stage in self.stages:  # before any work: a stale run must not train
            record = self._record(stage)
            if record is not None:
                self._check_fingerprint(stage, record, prints[stage])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self.config, overwrite=True)
        keras.utils.set_random_seed(self.config["seed"])
        results = {}
        for stage in self.stages:
            done = self.finished(stage)
            if done is not None:
                self.log(f"[{stage}] finished earlier, skipping ({self.marker(stage)})")
                results[stage] = done
                continue
            self.log(f"[{stage}] running")
            start = time.perf_counter()
            outputs = self.run_stage(stage, results)
            self._complete(stage, outputs, time.perf_counter() - start)
            results[stage] = outputs
            self.log(f"[{stage}] done in {time.perf_counter() - start:.1f}s")
        return results

    def run_stage(self, stage: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Runs one stage's body (`self._stage_<name>`); returns its outputs."""
        return getattr(self, f"_stage_{stage}")(results)

    # -- helpers for the stages ---------------------------------------------

    def backup(self, stage: str):
        """The crash-safe `BackupAndRestore` callback of a training stage."""
        return atomic_backup_and_restore(str(self.run_dir / stage / "backup"))

    def save_history(self, history, stage: str) -> None:
        """Writes a Keras `History` as `run_dir/<stage>/history.json`."""
        logs = {k: [float(v) for v in values] for k, values in history.history.items()}
        write_json(self.run_dir / stage / "history.json", logs, overwrite=True)


def command_line() -> str:
    # `python -m kd_keras.cli run x.yaml` and the console script both read
    # best as the console script.
    return " ".join(["kd-keras", *sys.argv[1:]])
