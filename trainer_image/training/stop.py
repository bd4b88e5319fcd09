"""Stop on SIGTERM: finish the current step and commit it, unless the step can no longer finish.

Kubernetes sends SIGTERM when a pod is deleted: on preemption, and when the controller restarts a
gang because one member failed. In the second case the survivors are blocked inside a collective
whose peer is gone. The Python handler cannot run then (the main thread is in MindSpore's C++), and
MindSpore itself notices the lost peer only after its ~30 s heartbeat timeout, so the restart would
wait out the pod's whole grace period. A watcher thread therefore learns of the signal through the
interpreter's wakeup fd (written by the C-level handler, so it needs no main thread). If the step in
progress does not end within `step_limit()`, the process exits with ExitCode.TERMINATED and writes
nothing: the last committed checkpoint stays the resume point, and a half-written one is never
committed, so nothing is lost that a stop could have saved.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from respawn_protocol.contract import ExitCode

log = logging.getLogger("trainer_image")

STEP_LIMIT_FLOOR = 5.0  # seconds a step may still take after SIGTERM, before any slack for slow steps
STEP_LIMIT_FACTOR = 2.0  # ... plus this many times the slowest step seen (not the first: it compiles)
_QUIT = b"\xff"  # not a signal number: tells the watcher to end


class StopRequest:
    """Set by SIGTERM; the loop finishes the current step, commits a checkpoint and stops.

    The loop brackets each step with `begin_step()` / `end_step()`, which is what lets the
    watcher tell a slow step from one that is stuck."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.requested = False
        self._clock = clock
        self._idle = threading.Event()  # set while the main thread is not inside a step
        self._idle.set()
        self._lock = threading.Lock()  # orders `begin_step` against the watcher's request
        self._steps_seen = 0
        self._slowest = 0.0
        self._started_at = 0.0
        self._previous: tuple[Any, int] | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._watcher: threading.Thread | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self._request(signum)

    def _request(self, signum: int) -> None:
        if not self.requested:
            log.info("received signal %d: stopping after the current step", signum)
        self.requested = True

    def begin_step(self) -> bool:
        """False once a stop is requested: no step may start after SIGTERM."""
        with self._lock:
            if self.requested:
                return False
            self._started_at = self._clock()
            self._idle.clear()
            return True

    def end_step(self) -> None:
        took = self._clock() - self._started_at
        self._steps_seen += 1
        if self._steps_seen > 1:
            self._slowest = max(self._slowest, took)
        self._idle.set()

    def step_limit(self) -> float:
        return STEP_LIMIT_FLOOR + STEP_LIMIT_FACTOR * self._slowest

    def install(self) -> None:
        """Handle SIGTERM (main thread only: elsewhere the embedding program owns its signals)."""
        if threading.current_thread() is not threading.main_thread():
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._previous = (
            signal.signal(signal.SIGTERM, self),
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False),
        )
        self._watcher = threading.Thread(target=self._watch, name="stop-watcher", daemon=True)
        self._watcher.start()

    def uninstall(self) -> None:
        if self._previous is None or self._sockets is None:
            return
        handler, wakeup_fd = self._previous
        signal.set_wakeup_fd(wakeup_fd)
        signal.signal(signal.SIGTERM, handler)
        self._previous = None
        # End the watcher before closing: a recv on a closed, reused fd would read someone else's.
        self._sockets[1].send(_QUIT)
        if self._watcher is not None:
            self._watcher.join()
        for sock in self._sockets:
            sock.close()

    def _watch(self) -> None:
        assert self._sockets is not None
        reader = self._sockets[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data or _QUIT in data:
                return
            if signal.SIGTERM in data:
                break
        with self._lock:
            self._request(signal.SIGTERM)
        limit = self.step_limit()
        if self._idle.wait(limit):
            return  # the loop is at a step boundary or saving: it sees `requested` and stops
        log.error(
            "the current step did not finish within %.1fs of SIGTERM (a peer of the collective is "
            "likely gone): exiting without a new checkpoint; the last committed one is the resume point",
            limit,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ExitCode.TERMINATED)
