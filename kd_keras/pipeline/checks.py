"""Value checks for the pipeline config schemas (`kd_keras.pipeline.config`,
`kd_keras.pipeline.text_task`): each returns a predicate `value -> bool`, paired in a
schema with the words that describe what it accepts.

Example:

```python
schema = {"epochs": (int_at_least(0), "an integer >= 0", 3)}
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Check = Callable[[Any], bool]


def int_at_least(minimum: int) -> Check:
    """An int (not a bool, which YAML's `yes` would give) >= `minimum`."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def number_in(low: float, high: float | None = None, open_low: bool = False) -> Check:
    """An int or float in [low, high] (or (low, high] with `open_low`)."""

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        above = v > low if open_low else v >= low
        return above and (high is None or v <= high)

    return check


def one_of(options: Iterable) -> Check:
    return lambda v: v in options


def list_of(check: Check) -> Check:
    """A non-empty list whose every item passes `check`."""
    return lambda v: isinstance(v, list) and len(v) > 0 and all(check(x) for x in v)


def non_empty_str(v) -> bool:
    return isinstance(v, str) and v != ""


def is_mapping(v) -> bool:
    return isinstance(v, dict)


def is_bool(v) -> bool:
    return isinstance(v, bool)
