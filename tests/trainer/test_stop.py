"""The stop: SIGTERM ends a start-up at once, a step that ends is waited for, a step that cannot end
is cut off within its deadline (never inside a commit record), no step starts after a stop, and a
data-parallel gang stops after the step at whose end any rank was stopping. The signal tests run
in a process of their own (it may `os._exit` or die of the signal)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from tests.support import REPO
from trainer_image.training import loop
from trainer_image.training.stop import PEER_GONE, STOP_FACTOR, STOP_FLOOR, StopRequest, step_deadline

# The child trains one quick step (the end of the first step arms the handler), reports "ready"
# once inside its second step, then the test sends SIGTERM.
CHILD = """
import os, sys, threading, time
from trainer_image.checkpoint.commit import COMMITTING
from trainer_image.training.stop import StopRequest
stop = StopRequest()
stop.install()
assert stop.begin_step()
stop.end_step()
assert stop.begin_step()
{before}
print("ready", flush=True)
{step}
stop.end_step()
print("next step allowed:", stop.begin_step(), flush=True)
sys.exit(75)
"""

# A save in flight holds COMMITTING while it writes its commit record.
COMMIT_IN_FLIGHT = """
def commit():
    with COMMITTING:
        time.sleep(STOP_FLOOR_PLUS)
        print("commit record written", flush=True)
threading.Thread(target=commit, daemon=True).start()
"""


def run_child(step: str, before: str = "", sig: int = signal.SIGTERM) -> tuple[int, str, float]:
    """(exit code, output, seconds from the signal, SIGTERM by default, to exit)."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD.format(step=step, before=before))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    child.send_signal(sig)
    output, _ = child.communicate(timeout=60)
    return child.returncode, output, time.monotonic() - sent


def test_a_step_that_cannot_finish_is_cut_off_with_terminated_within_the_floor() -> None:
    # time.sleep resumes after the Python handler runs (PEP 475), like a collective that never returns.
    code, output, took = run_child("time.sleep(600)")
    assert code == ExitCode.TERMINATED, output
    assert "did not finish within" in output
    assert "next step allowed" not in output
    # The floor runs from the step's start, a moment before the signal.
    assert STOP_FLOOR - 0.5 <= took < STOP_FLOOR + 1.5, took


def test_with_a_rank_of_the_gang_gone_a_step_in_progress_is_given_up_at_once() -> None:
    code, output, took = run_child("time.sleep(600)", sig=PEER_GONE)
    assert code == ExitCode.TERMINATED, output
    assert "a rank of the gang is gone" in output and "next step allowed" not in output
    assert took < STOP_FLOOR, took  # no deadline to wait out


def test_with_a_rank_gone_a_write_in_flight_still_finishes() -> None:
    before = COMMIT_IN_FLIGHT.replace("STOP_FLOOR_PLUS", "1.0")
    code, output, took = run_child("time.sleep(600)", before=before, sig=PEER_GONE)
    assert code == ExitCode.TERMINATED and "commit record written" in output, output
    assert took >= 0.5


def test_a_step_that_finishes_is_waited_for_and_no_step_starts_after_sigterm() -> None:
    code, output, _ = run_child("time.sleep(1.0)")
    assert code == 75, output
    assert "next step allowed: False" in output


def test_a_cut_waits_for_a_commit_record_in_flight() -> None:
    before = COMMIT_IN_FLIGHT.replace("STOP_FLOOR_PLUS", str(STOP_FLOOR + 1.0))
    code, output, took = run_child("time.sleep(600)", before=before)
    assert code == ExitCode.TERMINATED, output
    assert "commit record written" in output  # finished, not cut
    assert took >= STOP_FLOOR + 0.5


def test_sigterm_during_start_up_ends_the_process_at_once() -> None:
    """Before the first step ends SIGTERM keeps its default action: no Python code has to run,
    so it works while MindSpore's rendezvous holds the GIL."""
    script = (
        "from trainer_image.training.stop import StopRequest\n"
        "stop = StopRequest(); stop.install(); stop.begin_step()\n"
        "print('ready', flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    for sig in (signal.SIGTERM, PEER_GONE):
        child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        child.send_signal(sig)
        assert child.wait(10) == -sig  # SIGTERM: the container's exit code is 143, ExitCode.TERMINATED
        assert time.monotonic() - sent < 1.0


def test_the_deadline_gives_a_survivor_the_floor_and_a_slow_live_gang_several_steps() -> None:
    # Blocked since long before SIGTERM, short steps: at once, the floor has passed.
    assert step_deadline(started=0.0, signalled=30.0, typical=0.05, gap=0.01) == 30.0
    # Blocked since a peer died, 0.7 s before SIGTERM (detection, teardown): the floor from the step.
    assert step_deadline(started=5.0, signalled=5.7, typical=0.05, gap=0.01) == 5.0 + STOP_FLOOR
    # Slow steps on a loaded machine: several typical steps, plus the gap a peer may be behind.
    assert step_deadline(started=10.0, signalled=10.5, typical=1.5, gap=0.5) == 10.0 + STOP_FACTOR * 1.5 + 0.5
    # SIGTERM between steps: counted from the step's start.
    assert step_deadline(started=12.0, signalled=10.0, typical=0.01, gap=0.0) == 12.0 + STOP_FLOOR


def test_the_deadline_follows_the_typical_step_with_a_fake_clock() -> None:
    now = [0.0]
    stop = StopRequest(clock=lambda: now[0])
    for took in (100.0, 0.5, 3.0, 1.0):  # the compiling first step is not counted; median 1.0
        assert stop.begin_step()
        now[0] += took
        stop.end_step()
        now[0] += 0.25  # save and log between steps
    assert stop.typical_step() == 1.0
    assert stop.deadline() is None  # no stop requested
    assert stop.begin_step()
    assert stop.deadline() is None
    now[0] += 0.5
    stop._signal(signal.SIGTERM)
    assert stop.requested
    assert stop.deadline() == pytest.approx(now[0] - 0.5 + STOP_FACTOR * 1.0 + 0.25), "from the step's start"
    stop.end_step()
    assert stop.deadline() is None  # between steps: never cut (saving)
    assert not stop.begin_step()


def test_data_parallel_ranks_stop_after_the_step_at_whose_end_any_rank_was_stopping() -> None:
    """`share`: the flag is exchanged at each step's end; a rank signalled between steps runs the
    next step (its peers do) and stops after it; a rank whose peer stops stops too."""
    peer_stopping = [False]
    sent: list[bool] = []

    def exchange(flag: bool) -> bool:
        sent.append(flag)
        return flag or peer_stopping[0]

    signalled, by_peer = StopRequest(), StopRequest()
    signalled.share(exchange)
    by_peer.share(exchange)
    assert signalled.begin_step()
    signalled.end_step()
    signalled._signal(signal.SIGTERM)  # between steps
    assert not signalled.requested and signalled.begin_step()
    signalled.end_step()
    assert signalled.requested and not signalled.begin_step()
    assert sent == [False, True]

    assert by_peer.begin_step()
    peer_stopping[0] = True
    by_peer.end_step()
    assert by_peer.requested and not by_peer.signalled and not by_peer.begin_step()


def test_install_defaults_sigterm_until_the_first_step_ends_and_uninstall_restores_it() -> None:
    before = signal.getsignal(signal.SIGTERM)
    for _ in range(2):  # the Python API may train twice in one process
        stop = StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert stop.begin_step()
        stop.end_step()
        armed = signal.getsignal(signal.SIGTERM)
        stop.uninstall()
        assert armed is stop
        assert signal.getsignal(signal.SIGTERM) is before
    assert not [t for t in threading.enumerate() if t.name == "stop-watcher"]


def test_a_stop_between_steps_still_commits_the_last_finished_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank that trains alone signalled after its step's save check (logging, fetching the next
    batch): no step starts, and the loop commits the last finished one rather than exit without it."""
    saved: list[int] = []
    progress = SimpleNamespace(data_step=0, global_step=0)
    state: Any = SimpleNamespace(
        stream=SimpleNamespace(batches=lambda start_step, epochs: iter(range(10))),
        progress=progress,
        epochs=1,
        checkpointer=SimpleNamespace(save=lambda p: saved.append(p.global_step)),
        saved_at=0,
    )
    stop = StopRequest()

    def step(state: Any, batch: int, stop: StopRequest) -> None:
        stop.end_step()
        progress.global_step += 1
        if progress.global_step == 3:
            stop._signal(signal.SIGTERM)

    monkeypatch.setattr(loop, "_step", step)
    loop._steps(state, stop)
    assert (progress.global_step, saved, state.saved_at) == (3, [3], 3)
