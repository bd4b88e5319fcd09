"""The deadline poll: call a probe until it returns something truthy, or the deadline passes.

Deadlines are sized for a loaded 2-core machine (the suite runs next to MindSpore processes):
`DEADLINE` unless a caller knows better. Nothing here sleeps for a fixed time to let something
happen; the interval is only how often to look.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

DEADLINE = 60.0  # seconds, for what must happen
INTERVAL = 0.1
# For in-process fakes that answer at once: look often, so that a count passing by is seen.
FAST = 0.005


def poll(
    probe: Callable[[], Any],
    timeout: float,
    *,
    interval: float = INTERVAL,
    give_up: Callable[[], Any] | None = None,
) -> Any:
    """The first truthy value of `probe()`; its last value once `timeout` seconds have passed, or once
    `give_up()` is true (then `probe` is asked once more: what happened before giving up counts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if give_up is not None and give_up():
            return probe()
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = DEADLINE, *, interval: float = INTERVAL
) -> Any:
    """The first truthy value of `probe()`; AssertionError naming `what` (and the last value) after
    `timeout` seconds."""
    value = poll(probe, timeout, interval=interval)
    if not value:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {value!r}")
    return value
