"""The checkpoint interval a job's failures and save cost suggest (Young/Daly): sqrt(2 x δ x MTBF),
where δ is the time training stands still per save (the trainers report it) and MTBF the job's
observed time between failures, or its namespace's while the job has not failed. With
`spec.checkpointInterval: Auto` the next attempt saves at that interval (core/policy/startup.py).

Suggested only while an attempt runs, so the value a new attempt's pods get cannot change between
the passes that create them; and rewritten only when it moves by a quarter or more (or its basis
changes), so a noisy step time does not become a status write per heartbeat.
"""

from __future__ import annotations

import dataclasses
import math

from controller.api.constants import Phase
from controller.api.timings import IntervalAdvice
from controller.api.types import JobStatus
from controller.core.context import Context
from controller.core.reports import Summary
from controller.core.timefmt import parse_time

CHANGE = 0.25  # relative change in steps worth a status write


def mtbf(ctx: Context, status: JobStatus) -> tuple[float, int, str] | None:
    """(seconds between failures, failures counted, basis), or None without a failure to go by."""
    start = parse_time(status.start_time)
    ran = max(0.0, (ctx.now - start).total_seconds()) if start else 0.0
    failures = status.restarts + status.uncounted_restarts
    if failures and ran:
        return ran / failures, failures, "job"
    seconds, counted = ctx.obs.namespace_failures
    if counted:
        return seconds / counted, counted, "namespace"
    return None


def suggest(ctx: Context, status: JobStatus, summary: Summary) -> JobStatus:
    save, step = summary.save_cost, summary.step_time
    if status.phase is not Phase.RUNNING or save is None or not step:
        return status
    if (observed := mtbf(ctx, status)) is None:
        return status
    between, failures, basis = observed
    seconds = math.sqrt(2 * save * between)
    steps = max(1, round(seconds / step))
    old = status.checkpoint_interval
    if (
        old is not None
        and (old.basis, old.failures) == (basis, failures)
        and abs(steps - old.steps) < CHANGE * old.steps
    ):
        return status
    advice = IntervalAdvice(seconds, steps, between, save, failures, basis)
    return dataclasses.replace(status, checkpoint_interval=advice)
