"""The trainer's reporter (trainer_image/training/report.py) with a recording sender: what reaches
the pod, when, and that a failing API server never holds up training or the exit."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from respawn_protocol import report as protocol
from tests.support.poll import wait_for
from trainer_image.training.report import Reporter, process_started


class Pod:
    """Plays the API server: the annotations a JSON merge patch leaves on the pod."""

    def __init__(self, fail: int = 0) -> None:
        self.annotations: dict[str, str] = {}
        self.writes = 0
        self.fail = fail
        self.lock = threading.Lock()

    def send(self, key: str, value: str) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("API server unreachable")
            self.writes += 1
            self.annotations[key] = value

    def report(self, rank: int = 0) -> dict[str, Any]:
        with self.lock:
            return json.loads(self.annotations.get(protocol.annotation_key(rank), "{}"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_commits_go_out_at_once_and_progress_at_most_once_per_interval() -> None:
    pod, clock = Pod(), Clock()
    reporter = Reporter(rank=0, attempt=3, send=pod.send, interval=30, clock=clock)
    reporter.stepped(1, 0.5)
    wait_for("the first progress", lambda: pod.report().get("step") == 1, 10)
    for step in range(2, 50):
        reporter.stepped(step, 0.5)
    reporter.committed(step=40, epoch=1, file="llm_rank_0-1_40.ckpt", attempt=3)
    wait_for("the commit", lambda: pod.report().get("commit", {}).get("step") == 40, 10)
    assert pod.writes == 2, "49 steps and a commit within one interval: two writes"
    clock.now = 31.0
    reporter.stepped(50, 0.5)
    wait_for("the next interval's progress", lambda: pod.report().get("step") == 50, 10)
    reporter.close()
    assert pod.report()["attempt"] == 3 and pod.report()["commit"]["file"] == "llm_rank_0-1_40.ckpt"


def test_other_ranks_send_commits_and_startup_but_no_heartbeat() -> None:
    pod = Pod()
    reporter = Reporter(rank=1, attempt=0, send=pod.send, interval=5)
    reporter.started({"import": 3.0, "load": 0.1, "compile": 1.0, "firstStep": 1.2, "bogus": 9.0})
    reporter.committed(step=10, epoch=0, file="f", attempt=0)
    reporter.stepped(11, 0.2)
    reporter.close()
    report = pod.report(1)
    assert "step" not in report and report["commit"]["step"] == 10
    assert {k: v for k, v in report["startup"].items() if not k.endswith("At")} == {"firstStep": 0.2}, (
        "a start of one step: no compile to tell"
    )
    assert protocol.decode(1, protocol.Report(1, startup={"bogus": 1.0}).encode()) == protocol.Report(1)
    decoded = protocol.decode(1, pod.annotations[protocol.annotation_key(1)])
    assert decoded is not None and decoded.commit is not None and decoded.commit.step == 10
    assert (
        decoded.started_at == report["startup"]["startedAt"]
        and decoded.ready_at == report["startup"]["readyAt"]
    )


def test_a_failed_write_is_retried_with_the_next_change() -> None:
    pod = Pod(fail=1)
    reporter = Reporter(rank=0, attempt=0, send=pod.send, interval=1000)
    reporter.committed(step=5, epoch=0, file="a", attempt=0)
    wait_for("the failed attempt", lambda: pod.fail == 0, 10)
    reporter.committed(step=10, epoch=0, file="b", attempt=0)
    reporter.close()
    assert pod.report()["commit"]["step"] == 10


def test_close_does_not_wait_for_an_unreachable_api_server() -> None:
    pod = Pod(fail=10**6)
    reporter = Reporter(rank=0, attempt=0, send=pod.send, interval=1000)
    reporter.committed(step=5, epoch=0, file="a", attempt=0)
    reporter.close(timeout=5)
    assert reporter._thread is not None and not reporter._thread.is_alive()


@pytest.mark.parametrize("environ", [{}, {protocol.POD_NAME: "llm-a0-0"}, {protocol.POD_NAMESPACE: "team"}])
def test_outside_kubernetes_reporting_is_off(environ: dict[str, str]) -> None:
    reporter = Reporter.from_env(environ, rank=0, attempt=None)
    assert not reporter.enabled
    reporter.stepped(1, 0.1)  # no-ops
    reporter.committed(step=1, epoch=0, file="a", attempt=None)
    reporter.close()


def test_startup_timings_go_out_after_the_second_step_with_the_compile_told_apart() -> None:
    pod = Pod()
    reporter = Reporter(rank=1, attempt=2, send=pod.send)
    reporter.phase("import", 4.0)
    reporter.phase("import", 9.0)  # the first measurement of a phase stands
    reporter.phase("load", 0.25)
    reporter.stepped(7, 3.0)
    assert not pod.report(1), "nothing to say after the first step alone"
    reporter.stepped(8, 0.5)
    wait_for("the start-up report", lambda: "startup" in pod.report(1), 10)
    reporter.close()
    startup = pod.report(1)["startup"]
    started, ready = (datetime.fromisoformat(startup.pop(k)) for k in ("startedAt", "readyAt"))
    assert startup == {"import": 4.0, "load": 0.25, "firstStep": 3.0, "compile": 2.5}
    # Wall-clock times: the process's own start (before this test ran), the first step's end.
    assert started < ready <= datetime.now(UTC)
    assert started.timestamp() == pytest.approx(process_started(), abs=0.05)


def test_the_store_uploads_state_goes_out_as_it_changes() -> None:
    pod = Pod()
    reporter = Reporter(rank=1, attempt=0, send=pod.send)
    reporter.uploaded(
        protocol.Upload(step=None, pending=1, lag_seconds=0.25, failures=1, error="access denied")
    )
    wait_for("the failure", lambda: pod.report(1).get("upload", {}).get("failures") == 1, 10)
    reporter.uploaded(protocol.Upload(step=12, pending=0))
    wait_for("the upload", lambda: pod.report(1).get("upload", {}).get("step") == 12, 10)
    reporter.close()
    assert pod.report(1)["upload"] == {
        "step": 12,
        "pending": 0,
        "lagSeconds": 0.0,
        "failures": 0,
        "error": None,
    }
