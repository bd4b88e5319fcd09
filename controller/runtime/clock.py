"""Time as a dependency.

The work queue's delays and the leader elector's lease arithmetic read time through a `Clock`
so tests can move time forward instead of sleeping. `RealClock` is what the controller uses;
`FakeClock` only moves when a test calls `advance()`, and wakes anything waiting on it then.

`monotonic()` measures intervals (delays, lease expiry as observed locally, immune to wall-clock
jumps); `now()` is the wall-clock time written into API objects (a Lease's renewTime).
"""

from __future__ import annotations

import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""
        ...

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait on `condition` (held by the caller) for up to `timeout` seconds of this clock's time.

        May return early (a notify, or a spurious wake-up): callers re-check their state in a loop.
        """
        ...


class RealClock:
    """The process's clocks: `time.monotonic` and the system's UTC time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        condition.wait(timeout)


class FakeClock:
    """A clock that stands still until `advance()`; for tests that must not sleep.

    `wait()` blocks (in real time) until the clock advances or the condition is notified, whatever
    the timeout: a test that waits on a fake clock without advancing it hangs, which pytest-timeout
    reports, rather than passing by accident.
    """

    def __init__(self, *, start: float = 1000.0, wall: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._monotonic = start
        self._wall = wall or datetime(2030, 1, 1, tzinfo=UTC)
        self._waiters: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def now(self) -> datetime:
        with self._lock:
            return self._wall

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            return
        with self._lock:
            self._waiters.add(condition)
        condition.wait()

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and wake every waiter so it re-checks its deadlines."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._monotonic += seconds
            self._wall += timedelta(seconds=seconds)
            waiters = list(self._waiters)
        for condition in waiters:
            with condition:
                condition.notify_all()
