"""`respawn status` of a job restarted in place: its failures belong to the attempts that failed,
not to the attempt in whose name the kept pods still run (respawn_cli/status.py, `build`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from respawn_cli.status import build


def event(reason: str, message: str, at: str) -> Any:
    return SimpleNamespace(
        reason=reason,
        message=message,
        last_timestamp=at,
        event_time=None,
        first_timestamp=None,
        metadata=None,
    )


def test_failures_of_attempts_run_in_kept_pods_are_theirs() -> None:
    job = {
        "metadata": {"namespace": "team", "name": "llm"},
        "status": {
            "phase": "Restarting",
            "attempt": 2,
            "podAttempt": 0,
            "restarts": 2,
            "lastFailure": {
                "time": "t",
                "reason": "Error",
                "pod": "llm-a0-0",
                "exitCode": 1,
                "counted": True,
            },
        },
    }
    events = [
        event("AttemptCreated", "attempt 0: 2 workers", "2026-12-06T10:00:00Z"),
        event(
            "Restarting",
            "Error on llm-a0-1: container trainer exited with code 137; "
            "restart counted, in place, attempt 1 in 1s",
            "2026-12-06T10:01:00Z",
        ),
        event("AttemptCreated", "attempt 1: 2 workers, in the pods of attempt 0", "2026-12-06T10:01:03Z"),
        event(
            "Restarting",
            "Error on llm-a0-0: container trainer exited with code 1; "
            "restart counted, in place, attempt 2 in 1s",
            "2026-12-06T10:02:00Z",
        ),
    ]
    report = build(job, events)
    failures = {a.number: a.failure for a in report.attempts}
    assert failures[0] is not None and (failures[0].pod, failures[0].exit_code) == ("llm-a0-1", 137)
    assert failures[1] is not None and (failures[1].pod, failures[1].exit_code) == ("llm-a0-0", 1)
    assert failures[2] is None
