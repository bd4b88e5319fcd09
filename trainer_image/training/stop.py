"""Stop on SIGTERM: the gang commits the same final step, or the process leaves at once.

Kubernetes sends SIGTERM when a pod is deleted: on eviction, preemption, node drain, and when the
controller restarts a gang because one member failed. What a rank does depends on where it is:

- **Start-up** (import, MindSpore's dynamic-cluster rendezvous, building, loading, the first step,
  which compiles): nothing new exists to save, so SIGTERM keeps its default action and the kernel
  ends the process at once (the container's exit code is 143, `ExitCode.TERMINATED`). A Python
  handler would not do: `mindspore.communication.init()` holds the GIL for its whole duration
  (measured: 23 s while a peer was missing), so neither the handler nor a thread could act. MindSpore
  (2.10, CPU) installs no SIGTERM handler of its own (it replaces SIGINT only). A save cannot be cut
  here: none runs before the first step ends (an auto_trans_ckpt merge commits crash-safely).
- **Training** (from the end of the first step): a Python handler sets a flag, and the loop
  finishes the current step, commits it and exits `ExitCode.STOPPED`. In a data-parallel gang only
  one rank may have been signalled (an eviction), so after every step the ranks exchange their
  flags (one AllGather of one int, `share()`): if any rank is stopping, every rank stops after that
  same step and commits it, and a rank stopped by a peer exits STOPPED too. The flag is read at the
  step's end, so a SIGTERM that arrives between steps stops the gang after the next step. Ranks that
  train alone stop on their own.
- **A step that cannot end** (a peer is gone and the survivor is blocked in a collective, with the
  GIL released): a watcher thread learns of the signal through the interpreter's wakeup fd and
  exits with `ExitCode.TERMINATED`, writing nothing, once the step is past its deadline:
  `step start + max(STOP_FLOOR, STOP_FACTOR x typical step + gap)`, or at once when the signal
  comes later than that (`step_deadline`).
  The typical step is the median of the recent steps (the compiling first not counted) and
  includes the collectives' waits; `gap` is the time this rank spent between the previous step and
  this one (its save, the step log), because a live peer may still be that far behind, saving the
  same step. The clock starts with the step, not the signal: a survivor blocked since its peer died
  has been waiting through the controller's detection and teardown already, so it leaves STOP_FLOOR
  (2 s) after its step began when steps are short (at once if that has passed), and a live gang
  whose step is slow on a loaded machine gets several typical steps before a cut would lose its
  final save. Saving is never cut: the deadline applies only while a
  step runs, and a cut waits for an atomic write in flight (`commit.COMMITTING`), so an async save
  is abandoned before its commit record, never inside it.
- **SIGUSR1** is SIGTERM from a supervisor that knows a rank of the gang is gone (a restart in
  place, trainer_image/inplace.py): a step in progress cannot end, so it is given up at once
  instead of after its deadline (a write in flight still finishes); between steps, and during the
  start-up, it is SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any

from respawn_protocol.contract import ExitCode
from trainer_image.checkpoint.commit import COMMITTING

log = logging.getLogger("trainer_image")

STOP_FLOOR = 2.0  # seconds a step may take after SIGTERM (or after it starts, if later), at least
STOP_FACTOR = 4.0  # ... or this many typical steps, plus the gap before the step, if longer
TYPICAL_WINDOW = 16  # the typical step: the median of this many recent steps
GUARD_POLL = 0.05  # seconds between the watcher's looks at the step in progress, once signalled
CUT_WAIT = 10.0  # seconds a cut waits for an atomic write in flight
_QUIT = b"\xff"  # not a signal number: tells the watcher to end
PEER_GONE = signal.SIGUSR1  # SIGTERM, with a rank of the gang known to be gone
_STOPS = (signal.SIGTERM, PEER_GONE)

Exchange = Callable[[bool], bool]  # this rank's stop flag -> whether any rank of the gang is stopping


def step_deadline(*, started: float, signalled: float, typical: float, gap: float) -> float:
    """When a step in progress at a stop request is given up (see the module docstring)."""
    return max(signalled, started + max(STOP_FLOOR, STOP_FACTOR * typical + gap))


class StopRequest:
    """SIGTERM handling for one start of one rank.

    `install()` (main thread) gives SIGTERM its default action for the start-up; the loop brackets
    each step with `begin_step()` / `end_step()`, and the end of the first step arms the handler and
    the watcher. `requested` tells the loop to commit and stop after the current step."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.signalled = False  # this process received SIGTERM (or PEER_GONE)
        self.signalled_at = 0.0
        self.peer_gone = False  # ... PEER_GONE: a step in progress is given up at once
        self._stopping = False  # data parallel: the gang agreed to stop after the current step
        self._exchange: Exchange | None = None
        self._clock = clock
        # Orders the loop's steps against the watcher; reentrant: the handler runs in the main thread.
        self._lock = threading.RLock()
        self._in_step = False
        self._started_at = 0.0
        self._ended_at: float | None = None
        self._gap = 0.0
        self._steps_seen = 0
        self._recent: deque[float] = deque(maxlen=TYPICAL_WINDOW)
        self._previous: Any = None  # the SIGTERM handler before install(); None: not installed
        self._wakeup: int | None = None  # the wakeup fd before arming; None: not armed
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._watcher: threading.Thread | None = None
        self._quit = threading.Event()

    # ------------------------------------------------------------------------------------- the loop

    @property
    def requested(self) -> bool:
        """Commit and stop after the current step: this rank was signalled, or (data parallel) the
        gang agreed at the last step's end that some rank was."""
        return self._stopping if self._exchange is not None else self.signalled

    def share(self, exchange: Exchange) -> None:
        """Data parallel: stop together, deciding at each step's end with `exchange`."""
        self._exchange = exchange

    def begin_step(self) -> bool:
        """False once a stop is requested: no step may start after it."""
        with self._lock:
            if self.requested:
                return False
            now = self._clock()
            self._gap = 0.0 if self._ended_at is None else now - self._ended_at
            self._started_at = now
            self._in_step = True
            return True

    def end_step(self) -> None:
        """The step's computation is done: exchange the stop flag (data parallel), then leave the
        step; the first step's end arms the handler."""
        with self._lock:
            self._steps_seen += 1
            if self._steps_seen > 1:
                self._recent.append(self._clock() - self._started_at)
        if self._exchange is not None and not self._stopping:
            signalled = self.signalled
            if self._exchange(signalled):
                self._stopping = True
                if not signalled:
                    log.info("a peer of the gang is stopping: stopping after this step too")
        with self._lock:
            self._in_step = False
            self._ended_at = self._clock()
        if self._steps_seen == 1:
            self._arm()

    def typical_step(self) -> float:
        with self._lock:
            return statistics.median(self._recent) if self._recent else 0.0

    def deadline(self) -> float | None:
        """When the step in progress is given up; None when no stop is requested or no step runs."""
        with self._lock:
            if not self.signalled or not self._in_step:
                return None
            if self.peer_gone:
                return max(self.signalled_at, self._started_at)
            return step_deadline(
                started=self._started_at,
                signalled=self.signalled_at,
                typical=self.typical_step(),
                gap=self._gap,
            )

    # ---------------------------------------------------------------------------------- the signal

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self._signal(signum)

    def _signal(self, signum: int) -> None:
        with self._lock:
            self.peer_gone = self.peer_gone or signum == PEER_GONE
            if self.signalled:
                return
            self.signalled_at = self._clock()
            self.signalled = True
        log.info("received signal %d: stopping after the current step", signum)

    def install(self) -> None:
        """Start-up: SIGTERM ends the process at once (main thread only: elsewhere the embedding
        program owns its signals)."""
        if threading.current_thread() is not threading.main_thread() or self._previous is not None:
            return
        self._previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(PEER_GONE, signal.SIG_DFL)  # ends the start-up at once too

    def _arm(self) -> None:
        """Training: the handler sets the flag, the watcher cuts off a step that cannot end."""
        if self._previous is None or self._wakeup is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._watcher = threading.Thread(target=self._watch, name="stop-watcher", daemon=True)
        self._watcher.start()
        self._wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for sig in _STOPS:
            signal.signal(sig, self)

    def uninstall(self) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGTERM, self._previous)
        signal.signal(PEER_GONE, signal.SIG_DFL)
        self._previous = None
        if self._wakeup is None or self._sockets is None:
            return
        signal.set_wakeup_fd(self._wakeup)
        self._wakeup = None
        # End the watcher before closing: a recv on a closed, reused fd would read someone else's.
        self._quit.set()
        self._sockets[1].send(_QUIT)
        if self._watcher is not None:
            self._watcher.join()
        for sock in self._sockets:
            sock.close()

    # --------------------------------------------------------------------------------- the watcher

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
            if got := [sig for sig in _STOPS if sig in data]:
                break
        for sig in got:
            self._signal(sig)
        self._guard()

    def _guard(self) -> None:
        """Until the process ends: cut off any step that runs past its deadline."""
        while not self._quit.wait(GUARD_POLL):
            deadline = self.deadline()
            if deadline is not None and self._clock() >= deadline:
                self._cut(deadline - max(self.signalled_at, self._started_at))

    def _cut(self, allowed: float) -> None:
        if self.peer_gone:
            log.error(
                "a rank of the gang is gone: giving up the current step; exiting without a new "
                "checkpoint; the last committed one is the resume point"
            )
        else:
            log.error(
                "the current step did not finish within %.1fs of SIGTERM (a peer of the collective "
                "is likely gone): exiting without a new checkpoint; the last committed one is the "
                "resume point",
                allowed,
            )
        COMMITTING.acquire(timeout=CUT_WAIT)  # never inside a commit record; none starts after this
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ExitCode.TERMINATED)
