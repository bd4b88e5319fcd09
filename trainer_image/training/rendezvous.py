"""Shorter waits in MindSpore's rendezvous (`mindspore.communication.init()`).

MindSpore 2.10 forms its cluster by polling, and the polls sleep. A worker learns that every rank
has registered from the answer to its heartbeat thread's next heartbeat (`MS_RETRY_INTERVAL_*`
seconds apart); the calling thread checks for that answer every half second; then the CPU
collectives fetch each peer's address from the scheduler, sleeping a fixed 3 s between tries (19
tries). So the rank that gets there first waits up to 3 s more for a peer that arrived milliseconds
after it: measured on 2 ranks, one `init()` takes ~1 s and the other ~4 s, every time.

A sleep interrupted by a signal handler ends early (nanosleep is never restarted, signal(7)), and
each of these loops then checks its condition again. `init()` holds the GIL throughout, so no
Python thread of this process can act; while it runs, a small helper process (`python -I -S` this
file) interrupts this process's threads that sleep in nanosleep, with a signal whose handler does
nothing and restarts every other interrupted call (SA_RESTART): a thread asleep for MIN_AGE is
interrupted, then again every SPACING while it sleeps on. It is bounded because MindSpore's loops
may count their tries: each interrupt can spend one, so the calling thread gets at most MAIN_BUDGET
interrupts per `init()` (at least 13 of the 19 address fetches left, 39 s of patience), spread over
its first ~3 s of sleeping, when a peer that started with it arrives; the other threads
OTHER_BUDGET each.

Where the kernel does not say where a thread sleeps (`/proc/<pid>/task/<tid>/wchan` hidden), nothing
is interrupted and `init()` takes its usual time. `RESPAWN_FAST_RENDEZVOUS=off` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType

ENV = "RESPAWN_FAST_RENDEZVOUS"
NUDGE = signal.SIGURG  # ignored by default; nothing else in the trainer uses it
MIN_AGE = 0.2  # seconds a thread has slept before it is interrupted
SPACING = {True: 0.5, False: 0.25}  # seconds between interrupts of the calling thread / of another
MAIN_BUDGET = 6  # interrupts of the thread that called init(), per init()
OTHER_BUDGET = 12  # ... of each other thread
POLL = 0.02  # seconds between looks at the threads

log = logging.getLogger("trainer_image.training.rendezvous")


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


@contextlib.contextmanager
def shortened(environ: Mapping[str, str]) -> Iterator[None]:
    """Interrupt this process's sleeping threads, within the budgets, until the block ends. Called
    from the main thread (signal handlers can only be set there); elsewhere it does nothing."""
    if environ.get(ENV, "on").lower() in ("off", "false", "0"):
        yield
        return
    try:
        previous = signal.signal(NUDGE, _ignore)
    except ValueError:  # not the main thread
        yield
        return
    signal.siginterrupt(NUDGE, False)
    # Imported here: parallel imports this module, and this file also runs alone as the helper.
    from trainer_image.training.parallel import _die_with_parent

    try:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(os.getpid()), str(int(NUDGE))],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only prctl, between fork and exec
        )
    except OSError as exc:
        log.warning("rendezvous at MindSpore's own pace: %s", exc)
        signal.signal(NUDGE, previous)
        yield
        return
    try:
        yield
    finally:
        helper.kill()
        helper.wait()
        signal.signal(NUDGE, previous)


@dataclass
class _Thread:
    asleep_since: float | None = None  # since when it has been seen asleep, without a break
    last: float = float("-inf")  # when it was last interrupted
    spent: int = 0  # interrupts so far


@dataclass
class Nudger:
    """Which of `pid`'s threads to interrupt, and when; `look` is one pass over them."""

    pid: int
    interrupt: Callable[[int], None]
    clock: Callable[[], float] = time.monotonic
    asleep: Callable[[int, int], bool] = field(default=lambda pid, tid: _asleep(pid, tid))
    threads: dict[int, _Thread] = field(default_factory=dict)

    def look(self) -> bool:
        """One pass; False once the process is gone."""
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            return False
        now = self.clock()
        for tid in tids:
            thread = self.threads.setdefault(tid, _Thread())
            if not self.asleep(self.pid, tid):
                thread.asleep_since = None
                continue
            if thread.asleep_since is None:
                thread.asleep_since = now
            main = tid == self.pid
            if (
                now - thread.asleep_since >= MIN_AGE
                and now - thread.last >= SPACING[main]
                and thread.spent < (MAIN_BUDGET if main else OTHER_BUDGET)
            ):
                self.interrupt(tid)
                thread.last, thread.spent = now, thread.spent + 1
        return True


def _asleep(pid: int, tid: int) -> bool:
    """Whether the thread sleeps in nanosleep now."""
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            return "nanosleep" in f.read()
    except OSError:
        return False


def main(argv: list[str]) -> int:  # pragma: no cover - the helper process; tested through `shortened`
    pid, signum = int(argv[0]), int(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    nudger = Nudger(pid, lambda tid: libc.tgkill(pid, tid, signum))
    while nudger.look():
        time.sleep(POLL)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
