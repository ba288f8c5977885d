"""A `keras.callbacks.BackupAndRestore` whose checkpoint survives a kill,
so a training stage of a run folder resumes from its last finished epoch.

Example:

```python
from kd_keras.pipeline.backup import atomic_backup_and_restore

model.fit(x, y, epochs=10, callbacks=[atomic_backup_and_restore("runs/x/distill/backup")])
```
"""

from __future__ import annotations

from pathlib import Path

import keras

from kd_keras.io import atomic_path, write_json

__all__ = ["atomic_backup_and_restore"]


def atomic_backup_and_restore(backup_dir: str):
    """`keras.callbacks.BackupAndRestore` whose checkpoint survives a kill.

    Keras writes `latest.weights.h5` in place, so a SIGKILL during the very
    first save leaves a truncated file that the next run cannot open. Here
    weights and metadata are each written to a temp file and renamed; a kill
    between the two renames costs at most one repeated epoch.
    """

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            with atomic_path(self._weights_path, overwrite=True) as tmp:
                # Keras insists on the .weights.h5 suffix.
                target = tmp.with_name(tmp.name.replace(".tmp.h5", ".tmp.weights.h5"))
                self.model.save_weights(str(target), overwrite=True)
                target.replace(tmp)
            metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            write_json(self._training_metadata_path, metadata, overwrite=True)

    return AtomicBackupAndRestore(backup_dir, double_checkpoint=False)
