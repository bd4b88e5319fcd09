"""The rendezvous' sleeps shortened (trainer_image/training/rendezvous.py), on real threads of a
real process: C-level sleeps (libc's, as MindSpore's loops call them) stand in for MindSpore's
polls, so what is checked is which sleeps are interrupted, when, and how many times."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO
from trainer_image.training import rendezvous

# The main thread sleeps `main` times for 1 s (MindSpore's fixed-count fetch loop); another thread
# sleeps 5 s once (a heartbeat). Prints how long each took and whether the helper outlived the block.
PROBE = """
import ctypes, json, os, sys, threading, time
from trainer_image.training import rendezvous
libc = ctypes.CDLL(None)
other = []
def heartbeat():
    t = time.monotonic(); libc.sleep(5); other.append(time.monotonic() - t)
with rendezvous.shortened(os.environ):
    thread = threading.Thread(target=heartbeat); thread.start()
    main = []
    for _ in range(int(sys.argv[1])):
        t = time.monotonic(); libc.sleep(1); main.append(time.monotonic() - t)
    thread.join()
def parent(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[1]
    except OSError:
        return None
children = [p for p in os.listdir("/proc") if p.isdigit() and parent(p) == str(os.getpid())]
print(json.dumps({"main": main, "other": other, "children": children}))
"""


def probe(sleeps: int, **env: str) -> dict[str, list[float]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(sleeps)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_sleeps_end_early_within_the_budget_and_the_helper_goes_with_the_block() -> None:
    got = probe(rendezvous.MAIN_BUDGET + 3)
    early = [s for s in got["main"] if s < 0.9]
    # The calling thread's 1 s sleeps are cut (the first after MIN_AGE, then one per SPACING) until
    # its budget is spent, then it sleeps its full seconds.
    assert len(early) == rendezvous.MAIN_BUDGET, got
    assert all(s >= rendezvous.MIN_AGE - 0.05 for s in early), got
    assert all(s >= 0.9 for s in got["main"][rendezvous.MAIN_BUDGET :]), got
    # Another thread's one long sleep is cut too.
    assert got["other"][0] < 4, got
    assert got["children"] == [], "the helper process is gone when the block ends"


def test_off_leaves_every_sleep_alone() -> None:
    got = probe(2, **{rendezvous.ENV: "off"})
    assert all(s >= 0.95 for s in got["main"]), got
    assert got["other"][0] >= 4.9, got


def test_a_thread_asleep_is_interrupted_after_min_age_then_once_per_spacing_up_to_its_budget() -> None:
    now = [0.0]
    interrupted: list[tuple[int, float]] = []
    pid = os.getpid()
    nudger = rendezvous.Nudger(
        pid,
        lambda tid: interrupted.append((tid, round(now[0], 1))),
        clock=lambda: now[0],
        asleep=lambda _pid, tid: tid == pid,  # only the main thread sleeps
    )
    while now[0] < 6.0:
        assert nudger.look()
        now[0] += 0.1
    spacing = rendezvous.SPACING[True]
    expected = [rendezvous.MIN_AGE + i * spacing for i in range(rendezvous.MAIN_BUDGET)]
    assert [tid for tid, _ in interrupted] == [pid] * rendezvous.MAIN_BUDGET
    # At the first pass on or after each due time (passes are 0.1 s apart).
    assert all(e - 1e-9 <= t <= e + 0.1 + 1e-9 for (_, t), e in zip(interrupted, expected, strict=True)), (
        interrupted
    )
    assert not rendezvous.Nudger(2**22 + 7, print).look(), "a process that is gone ends the helper"
