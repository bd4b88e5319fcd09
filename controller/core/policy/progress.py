"""Progress: the last complete checkpoint the controller has seen, and hang detection.

A hang is only judged when the controller tracks progress (it mounts the shared volume): without
it, a hung job cannot be told from a quiet healthy one. Each attempt has its own clock: it starts
when every worker of the attempt runs (`status.runningSince`), never at an earlier attempt's
progress, and until the attempt's first progress it also allows `progressGraceSeconds` for
import, rendezvous, compile and checkpoint load.
"""

from __future__ import annotations

import dataclasses

from controller.api.constants import Phase, Reason
from controller.api.types import JobStatus
from controller.core.context import Context
from controller.core.observations import Observations
from controller.core.policy.failures import Failure
from controller.core.timefmt import parse_time


def observe_checkpoint(status: JobStatus, obs: Observations) -> JobStatus:
    if obs.checkpoint is None:
        return status
    return dataclasses.replace(status, last_complete_checkpoint=obs.checkpoint)


def hang_in(ctx: Context, status: JobStatus) -> float | None:
    """Seconds until the attempt counts as hung (at zero or below it is); None when hangs are not
    judged. Detection and the requeue deadline both read this one answer."""
    timeout = ctx.policy.progress_timeout
    running = parse_time(status.running_since)
    if not timeout or not ctx.obs.progress_tracked or running is None:
        return None
    last = ctx.obs.last_progress
    if last is not None and last > running:
        return timeout - (ctx.now - last).total_seconds()
    return timeout + ctx.policy.progress_grace - (ctx.now - running).total_seconds()


def hang(ctx: Context, status: JobStatus) -> Failure | None:
    """A running attempt with no progress for progressTimeoutSeconds."""
    remaining = hang_in(ctx, status)
    if status.phase is not Phase.RUNNING or remaining is None or remaining > 0:
        return None
    timeout = ctx.policy.progress_timeout or 0
    return Failure(Reason.PROGRESS_TIMEOUT, f"no progress for {timeout:.0f}s", ctx.now)
