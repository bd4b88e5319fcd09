"""Timings in status: `startup` (an attempt's start-up phases, as the trainers report them),
`lastRecovery` (the last restart timed from the failure to the next trained step) and
`checkpointInterval` (the interval that failures and save costs suggest)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StartupTimes:
    """Seconds per start-up phase of an attempt, the slowest rank's (import, rendezvous, ...)."""

    attempt: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    started_at: str | None = None  # the last rank's process started (its wall clock)
    ready_at: str | None = None  # the last rank finished its first step
    resumed_from: int | None = None  # the job checkpoint's global step the ranks resumed (as saved)


def parse_startup(value: Any) -> StartupTimes | None:
    if not isinstance(value, dict):
        return None
    seconds = value.get("seconds")
    phases = (
        {k: float(v) for k, v in seconds.items() if isinstance(v, int | float)}
        if isinstance(seconds, dict)
        else {}
    )
    started, ready = value.get("startedAt"), value.get("readyAt")
    return StartupTimes(
        opt_int(value.get("attempt")),
        phases,
        started if isinstance(started, str) else None,
        ready if isinstance(ready, str) else None,
        opt_int(value.get("resumedFrom")),
    )


def startup_to_dict(t: StartupTimes) -> dict[str, Any]:
    body = {
        "attempt": t.attempt,
        "seconds": dict(t.seconds),
        "startedAt": t.started_at,
        "readyAt": t.ready_at,
        "resumedFrom": t.resumed_from,
    }
    return {k: v for k, v in body.items() if v is not None}


@dataclass(frozen=True)
class Recovery:
    attempt: int  # the attempt that recovered
    reason: str  # of the failure that ended the attempt before
    failed_at: str
    running_at: str  # every trainer container of `attempt` running
    seconds: dict[str, float] = field(default_factory=dict)
    total: float | None = None  # failure -> first step finished; None until every rank reported it


def parse_recovery(value: Any) -> Recovery | None:
    if not isinstance(value, dict) or not isinstance(value.get("attempt"), int):
        return None
    seconds = value.get("seconds")
    total = value.get("totalSeconds")
    return Recovery(
        attempt=int(value["attempt"]),
        reason=str(value.get("reason", "")),
        failed_at=str(value.get("failedAt", "")),
        running_at=str(value.get("runningAt", "")),
        seconds={
            k: float(v)
            for k, v in (seconds.items() if isinstance(seconds, dict) else ())
            if isinstance(v, int | float) and math.isfinite(v)
        },
        total=float(total) if isinstance(total, int | float) and math.isfinite(total) else None,
    )


def recovery_to_dict(r: Recovery) -> dict[str, Any]:
    body: dict[str, Any] = {
        "attempt": r.attempt,
        "reason": r.reason,
        "failedAt": r.failed_at,
        "runningAt": r.running_at,
        "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
    }
    if r.total is not None:
        body["totalSeconds"] = round(r.total, 3)
    return body


@dataclass(frozen=True)
class IntervalAdvice:
    """Young/Daly: checkpoint every sqrt(2 x save cost x MTBF) seconds."""

    seconds: float
    steps: int  # `seconds` in global steps of the reported step time
    mtbf: float  # seconds between failures, observed
    save_cost: float  # seconds training stands still per save, reported
    failures: int  # the failures the MTBF is measured from
    basis: str  # "job": this job's failures; "namespace": its namespace's, while the job has none


def parse_interval(value: Any) -> IntervalAdvice | None:
    if not isinstance(value, dict):
        return None
    try:
        return IntervalAdvice(
            seconds=float(value["seconds"]),
            steps=int(value["steps"]),
            mtbf=float(value["mtbfSeconds"]),
            save_cost=float(value["saveSeconds"]),
            failures=int(value["failures"]),
            basis=str(value["basis"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def interval_to_dict(a: IntervalAdvice) -> dict[str, Any]:
    return {
        "seconds": round(a.seconds, 1),
        "steps": a.steps,
        "mtbfSeconds": round(a.mtbf, 1),
        "saveSeconds": round(a.save_cost, 4),
        "failures": a.failures,
        "basis": a.basis,
    }
