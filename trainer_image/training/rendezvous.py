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
file) interrupts this process's threads that sleep in nanosleep, after 0.2, 0.5, 1 and 2 s of each
sleep, with a signal whose handler does nothing and restarts every other interrupted call
(SA_RESTART). It is bounded because MindSpore's loops may count their tries: each interrupt can
spend one, so the calling thread gets at most MAIN_BUDGET interrupts per `init()` (at least 14 of
the 19 address fetches left, 42 s of patience), the other threads OTHER_BUDGET each.

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
AGES = (0.2, 0.5, 1.0, 2.0)  # seconds into a sleep at which it is interrupted
MAIN_BUDGET = 5  # interrupts of the thread that called init(), per init()
OTHER_BUDGET = 12  # ... of each other thread
POLL = 0.02  # seconds between looks at the threads

log = logging.getLogger("trainer_image.training.rendezvous")


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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
class _Sleep:
    since: float  # when it was first seen asleep
    switches: str  # its voluntary context switches then: another value is another sleep
    given: int = 0  # interrupts of this sleep


@dataclass
class Nudger:
    """Which of `pid`'s threads to interrupt, and when; `look` is one pass over them."""

    pid: int
    interrupt: Callable[[int], None]
    clock: Callable[[], float] = time.monotonic
    sleeps: dict[int, _Sleep] = field(default_factory=dict)
    spent: dict[int, int] = field(default_factory=dict)

    def budget(self, tid: int) -> int:
        return MAIN_BUDGET if tid == self.pid else OTHER_BUDGET

    def look(self) -> bool:
        """One pass; False once the process is gone."""
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            return False
        now = self.clock()
        for tid in tids:
            state = _sleep_state(self.pid, tid)
            if state is None:
                self.sleeps.pop(tid, None)
                continue
            sleep = self.sleeps.get(tid)
            if sleep is None or sleep.switches != state:
                sleep = self.sleeps[tid] = _Sleep(now, state)
            due = sleep.given < len(AGES) and now - sleep.since >= AGES[sleep.given]
            if due and self.spent.get(tid, 0) < self.budget(tid):
                self.interrupt(tid)
                sleep.given += 1
                self.spent[tid] = self.spent.get(tid, 0) + 1
        return True


def _sleep_state(pid: int, tid: int) -> str | None:
    """The thread's voluntary context switches if it sleeps in nanosleep now, else None."""
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{base}/wchan") as f:
            if "nanosleep" not in f.read():
                return None
        with open(f"{base}/status") as f:
            return next((line for line in f if line.startswith("voluntary_ctxt_switches")), "")
    except OSError:
        return None


def main(argv: list[str]) -> int:  # pragma: no cover - the helper process; tested through `shortened`
    pid, signum = int(argv[0]), int(argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    nudger = Nudger(pid, lambda tid: libc.tgkill(pid, tid, signum))
    while nudger.look():
        time.sleep(POLL)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
