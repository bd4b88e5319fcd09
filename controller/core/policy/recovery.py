"""Time to recover, per restart: from the failure to the next attempt's first trained step.

The controller's part (detect, teardown, pod start) is known when the next attempt runs; the
trainers' part when every rank has reported its start-up with wall-clock times (core/reports.py).
Times come from three clocks — the kubelet's (exit, container start), the controller's, the
trainers' — so each phase is clamped at zero; on a cluster with synchronised clocks the error is
the synchronisation's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from controller.api.timings import Recovery
from controller.api.types import JobStatus
from controller.core.context import Context
from controller.core.plan import RecordRecoveryPhases, Step
from controller.core.pods import container_status
from controller.core.timefmt import format_time, parse_time


def _seconds(since: datetime | None, until: datetime | None) -> float | None:
    return max(0.0, (until - since).total_seconds()) if since and until else None


def _containers_running(ctx: Context) -> datetime:
    """When the last trainer container of the attempt started (the kubelet's word), else now."""
    trainer = ctx.job.spec.trainer_container
    started: Iterable[datetime | None] = (
        parse_time(((container_status(p, trainer).get("state") or {}).get("running") or {}).get("startedAt"))
        for p in ctx.current
    )
    known = [s for s in started if s is not None]
    return max(known) if len(known) == len(ctx.current) and known else ctx.now


def begin(ctx: Context, status: JobStatus) -> JobStatus:
    """The next attempt runs: its restart's controller-side phases. Not for the first attempt."""
    failure = status.last_failure
    failed, seen = parse_time(failure.time if failure else None), parse_time(status.failure_seen_at)
    if failure is None or failed is None or seen is None or status.attempt == 0:
        return status
    running = _containers_running(ctx)
    phases = {
        "detect": _seconds(failed, seen),
        "teardown": _seconds(seen, parse_time(status.attempt_created_at)),
        "podStart": _seconds(parse_time(status.attempt_created_at), running),
    }
    recovery = Recovery(
        attempt=status.attempt,
        reason=failure.reason,
        failed_at=failure.time,
        running_at=format_time(running),
        seconds={k: v for k, v in phases.items() if v is not None},
    )
    return dataclasses.replace(status, last_recovery=recovery)


def complete(status: JobStatus) -> tuple[JobStatus, tuple[Step, ...]]:
    """Every rank of the recovering attempt has reported its start-up: the trainers' phases and the
    total, once (metrics observe it then)."""
    r, startup = status.last_recovery, status.startup
    if r is None or r.total is not None or startup is None or startup.attempt != r.attempt:
        return status, ()
    total = _seconds(parse_time(r.failed_at), parse_time(startup.ready_at))
    if total is None:
        return status, ()  # a trainer that does not say when it started: no end-to-end figure
    seconds = dict(r.seconds)
    if (process := _seconds(parse_time(r.running_at), parse_time(startup.started_at))) is not None:
        seconds["processStart"] = process
    seconds |= startup.seconds
    done = dataclasses.replace(r, seconds=seconds, total=total)
    return dataclasses.replace(status, last_recovery=done), (RecordRecoveryPhases(dict(seconds), total),)
