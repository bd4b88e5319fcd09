"""A work queue of object keys with client-go's guarantees, so reconciles are level-based and serial per key.

Event handlers only `add()` a key ("ns/name"); workers `get()` a key, reconcile it from the
informer caches, then call `done()`. The rules that make this safe:

- A key waiting in the queue is stored once, however often it is added (events coalesce).
- A key being processed is never handed to a second worker; if it is added meanwhile it is
  marked dirty and queued again when `done()` is called, so the change is not lost.
- A failed reconcile calls `add_rate_limited(key)`: the key comes back after a per-key
  exponential delay (5 ms, 10 ms, ... capped at 1000 s, as client-go's default); a successful one
  calls `forget(key)` so the next failure starts from the base delay again.
- `add_after(key, delay)` schedules a key (e.g. "re-check when this backoff expires"); if the key is
  already scheduled, the earlier time wins.

Delayed keys are promoted by whoever calls `get()`/`len()`; there is no timer thread. Time comes
from a `Clock`, so tests drive delays with `FakeClock.advance()` instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from controller.runtime.clock import Clock, RealClock

K = TypeVar("K", bound=Hashable)


class ExponentialBackoff:
    """Per-key delays `base * 2**failures`, capped at `cap`; `forget()` resets a key.

    Not thread-safe on its own: the queue calls it under its lock.
    """

    def __init__(self, *, base: float = 0.005, cap: float = 1000.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._failures: dict[Hashable, int] = {}

    def when(self, key: Hashable) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        # Past ~60 doublings any sane cap is reached; stop before the float overflows.
        return self.cap if failures > 60 else min(self.cap, self.base * 2**failures)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)


class WorkQueue(Generic[K]):
    """A de-duplicating FIFO of keys with delayed and rate-limited adds; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        backoff_base: float = 0.005,
        backoff_cap: float = 1000.0,
    ) -> None:
        self._clock = clock or RealClock()
        self._backoff: ExponentialBackoff = ExponentialBackoff(base=backoff_base, cap=backoff_cap)
        self._cond = threading.Condition()
        self._ready: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, float] = {}  # key -> when it becomes ready
        self._heap: list[tuple[float, int, K]] = []  # lazy: stale entries skipped
        self._seq = itertools.count()
        self._shutting_down = False

    # -- producers ---------------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._cond:
            if self._add_locked(key):
                self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` once `delay` seconds have passed; an earlier schedule for it is kept."""
        with self._cond:
            if self._shutting_down:
                return
            if delay <= 0:
                if self._add_locked(key):
                    self._cond.notify()
                return
            ready_at = self._clock.monotonic() + delay
            current = self._waiting.get(key)
            if current is not None and current <= ready_at:
                return
            self._waiting[key] = ready_at
            heapq.heappush(self._heap, (ready_at, next(self._seq), key))
            # A getter may be sleeping until a later deadline; let it recompute.
            self._cond.notify_all()

    def add_rate_limited(self, key: K) -> None:
        """Re-queue `key` after its next exponential backoff delay (for a failed reconcile)."""
        with self._cond:
            delay = self._backoff.when(key)
        self.add_after(key, delay)

    def forget(self, key: K) -> None:
        """Reset `key`'s backoff (after a successful reconcile). Does not remove it from the queue."""
        with self._cond:
            self._backoff.forget(key)

    def num_requeues(self, key: K) -> int:
        with self._cond:
            return self._backoff.failures(key)

    # -- consumers ---------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> K | None:
        """The next ready key, marked as processing; None on timeout or once shut down.

        `timeout` is in the queue clock's seconds; None waits indefinitely, 0 does not wait.
        """
        with self._cond:
            deadline = None if timeout is None else self._clock.monotonic() + timeout
            while not self._shutting_down:
                now = self._clock.monotonic()
                self._promote_locked(now)
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._next_wake_locked(now, deadline)
                if wait is not None and wait <= 0:
                    return None
                self._clock.wait(self._cond, wait)
            return None

    def done(self, key: K) -> None:
        """Mark `key` processed; if it was added while processing, it is queued again now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._ready.append(key)
                self._cond.notify()

    # -- lifecycle and metrics ---------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop handing out keys: blocked and future `get()` calls return None; adds are ignored."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    def __len__(self) -> int:
        """Keys ready to be handed out (the queue-depth metric); excludes delayed and in-flight keys."""
        with self._cond:
            self._promote_locked(self._clock.monotonic())
            return len(self._ready)

    def delayed(self) -> int:
        """Keys scheduled by `add_after`/`add_rate_limited` that are not ready yet."""
        with self._cond:
            self._promote_locked(self._clock.monotonic())
            return len(self._waiting)

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    # -- internals (caller holds self._cond) -------------------------------------------------

    def _add_locked(self, key: K) -> bool:
        """Mark `key` dirty; True if it became ready (so a getter should be woken)."""
        if self._shutting_down or key in self._dirty:
            return False
        self._dirty.add(key)
        if key in self._processing:
            return False
        self._ready.append(key)
        return True

    def _promote_locked(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) != ready_at:
                continue  # superseded by an earlier schedule
            del self._waiting[key]
            self._add_locked(key)

    def _next_wake_locked(self, now: float, deadline: float | None) -> float | None:
        """Seconds until the earlier of the caller's deadline and the next delayed key; None = forever."""
        candidates = [t for t in (deadline, self._heap[0][0] if self._heap else None) if t is not None]
        return min(candidates) - now if candidates else None
