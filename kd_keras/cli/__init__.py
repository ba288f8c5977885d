"""The `kd-keras` command line (console script `kd-keras=kd_keras.cli:main`).

- `main`: parser and entry point (`build_parser`, `main`); imports no framework,
  so `kd-keras --help` answers at once.
- `args`: argument types, defaults and the file checks run before any work.
- `commands`: the sub-command bodies, imported once a command runs.

Example:

```python
from kd_keras.cli import main

main(["bench", "student.tflite", "--data", "digits", "--threads", "1"])
```
"""

from kd_keras.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
