"""A restart timed from the failure to the next trained step (core/policy/recovery.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from controller.api.types import status_to_dict
from controller.core.plan import RecordRecoveryPhases
from controller.core.timefmt import format_time
from respawn_protocol.report import annotation_key
from tests.support.core_inputs import NOW, job, pod, run

FAILED = NOW - timedelta(seconds=20)


def at(seconds: float) -> str:
    return format_time(FAILED + timedelta(seconds=seconds))


def started_pod(rank: int, container_started: float, **report: Any) -> dict[str, Any]:
    body = pod(rank, attempt=1)
    body["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": at(container_started)}}
    if report:
        body["metadata"]["annotations"] = {annotation_key(rank): json.dumps({"attempt": 1, **report})}
    return body


RESTARTED = {
    "phase": "Pending",
    "attempt": 1,
    "replicas": 2,
    "restarts": 1,
    "lastFailure": {"time": at(0), "reason": "Error", "action": "RestartJob", "pod": "llm-a0-1"},
    "failureSeenAt": at(0.4),
    "attemptCreatedAt": at(1.6),
}


def test_the_controller_s_phases_are_known_when_the_next_attempt_runs() -> None:
    status = run(job(RESTARTED), [started_pod(0, 2.5), started_pod(1, 3.0)]).status
    assert status is not None and status.last_recovery is not None
    r = status.last_recovery
    assert (r.attempt, r.reason, r.failed_at, r.total) == (1, "Error", at(0), None)
    assert r.seconds == {"detect": 0.4, "teardown": 1.2, "podStart": 1.4}, "to the last container's start"


def test_the_trainers_reports_complete_it_once_with_the_total() -> None:
    running = run(job(RESTARTED), [started_pod(0, 2.5), started_pod(1, 3.0)]).status
    assert running is not None and running.last_recovery is not None
    timings = {"import": 4.0, "rendezvous": 1.0, "load": 0.5, "compile": 2.0, "firstStep": 2.4}
    pods = [
        started_pod(0, 2.5, startup={**timings, "startedAt": at(3.1), "readyAt": at(11.0)}),
        started_pod(1, 3.0, startup={**timings, "import": 4.5, "startedAt": at(3.2), "readyAt": at(11.5)}),
    ]
    plan = run(job(status_to_dict(running)), pods)
    assert plan.status is not None and plan.status.last_recovery is not None
    r = plan.status.last_recovery
    assert r.total == 11.5, "failure -> the last rank's first step"
    assert r.seconds["processStart"] == 0.2 and r.seconds["import"] == 4.5 and r.seconds["firstStep"] == 2.4
    [recorded] = plan.of(RecordRecoveryPhases)
    assert recorded.total == 11.5 and recorded.seconds == r.seconds
    again = run(job(status_to_dict(plan.status)), pods)
    assert again.of(RecordRecoveryPhases) == [], "observed once"


def test_no_total_without_the_trainers_wall_clock_or_for_a_first_attempt() -> None:
    running = run(job(RESTARTED), [started_pod(0, 2.5), started_pod(1, 3.0)]).status
    assert running is not None
    older_trainer = [started_pod(r, 3.0, startup={"import": 4.0, "firstStep": 2.0}) for r in (0, 1)]
    plan = run(job(status_to_dict(running)), older_trainer)
    assert plan.status is not None and plan.status.last_recovery is not None
    assert plan.status.last_recovery.total is None and plan.of(RecordRecoveryPhases) == []
    first = {"phase": "Pending", "attempt": 0, "replicas": 2}
    fresh = run(job(first), [pod(0), pod(1)]).status
    assert fresh is not None and fresh.last_recovery is None
