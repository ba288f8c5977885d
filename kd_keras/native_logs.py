"""TensorFlow's and LiteRT's C++ start-up lines, kept off the terminal.

TensorFlow 2.21 prints its oneDNN and CUDA-stub notices while its shared
libraries load, before its logging reads `TF_CPP_MIN_LOG_LEVEL`, and LiteRT
prints delegate notices of its own, all straight to file descriptor 2, which
no Python logging setting reaches. `filtered_native_logs()` sends that
descriptor through a pipe for the duration of a `with` block and forwards
every line except those (`NATIVE_NOISE`), so a program's own messages and
errors still reach the terminal as they are written.

This module imports only the standard library (it runs before Keras loads).

Example:

```python
from kd_keras.native_logs import filtered_native_logs

with filtered_native_logs():
    import keras  # no oneDNN / CUDA-stub lines on the terminal
```
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# absl's "I0000 00:00:17.5  12 port.cc:153]" prefix and TensorFlow's older
# dated one, absl's pre-init notice, the CPU-feature notice's second line,
# LiteRT's delegate notices and the TFLite calibrator's summary line.
NATIVE_NOISE = re.compile(
    rb"(?:[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:[\d.]+: [IWE] [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions: "
    rb"|INFO: (?:Created|Initialized|Replacing) TensorFlow Lite"
    rb"|fully_quantize: \d)"
)


@contextlib.contextmanager
def filtered_native_logs() -> Iterator[None]:
    """File descriptor 2 without the lines `NATIVE_NOISE` matches, inside the block."""
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (an embedded interpreter)
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_NOISE.match(line):
                    os.write(terminal, line)

    reader = threading.Thread(target=forward, name="kd-keras-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # drops the pipe's last write end: the reader sees EOF
        reader.join(timeout=10)
        os.close(terminal)


def user_wants_native_logs() -> bool:
    """True when the user asked TensorFlow for its info lines
    (`TF_CPP_MIN_LOG_LEVEL` 0 or 1 set before kd_keras was imported)."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")
