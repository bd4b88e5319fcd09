"""The stop watcher, in a process of its own (it may `os._exit`): a step that ends is waited for,
a step that cannot end is cut off, and no step starts after SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

from respawn_protocol.contract import ExitCode
from tests.support import REPO
from trainer_image.training.stop import STEP_LIMIT_FACTOR, STEP_LIMIT_FLOOR, StopRequest

# The child reports "ready" once inside its step, then the test sends SIGTERM.
CHILD = """
import os, sys, time
from trainer_image.training.stop import StopRequest
stop = StopRequest()
stop.install()
assert stop.begin_step()
print("ready", flush=True)
{step}
stop.end_step()
print("next step allowed:", stop.begin_step(), flush=True)
sys.exit(75)
"""


def run_child(step: str) -> tuple[int, str]:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD.format(step=step))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=60)
    return child.returncode, output


def test_a_step_that_cannot_finish_is_cut_off_with_terminated() -> None:
    # time.sleep resumes after the Python handler runs (PEP 475), like a collective that never returns.
    code, output = run_child("time.sleep(600)")
    assert code == ExitCode.TERMINATED, output
    assert "did not finish within" in output
    assert "next step allowed" not in output


def test_a_step_that_finishes_is_waited_for_and_no_step_starts_after_sigterm() -> None:
    code, output = run_child("time.sleep(1.0)")
    assert code == 75, output
    assert "next step allowed: False" in output


def test_the_limit_grows_with_the_slowest_step_but_not_the_compiling_first() -> None:
    now = [0.0]
    stop = StopRequest(clock=lambda: now[0])
    assert stop.step_limit() == STEP_LIMIT_FLOOR
    for took in (100.0, 0.5, 2.0, 1.0):
        assert stop.begin_step()
        now[0] += took
        stop.end_step()
    assert stop.step_limit() == STEP_LIMIT_FLOOR + STEP_LIMIT_FACTOR * 2.0


def test_uninstall_restores_the_handler_and_ends_the_watcher() -> None:
    before = signal.getsignal(signal.SIGTERM)
    for _ in range(2):  # the Python API may train twice in one process
        stop = StopRequest()
        stop.install()
        installed = signal.getsignal(signal.SIGTERM)
        stop.uninstall()
        assert installed is stop
        assert signal.getsignal(signal.SIGTERM) is before
    assert not [t for t in threading.enumerate() if t.name == "stop-watcher"]
