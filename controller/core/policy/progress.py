"""Progress: the last complete checkpoint the controller has seen, and hang detection.

What the trainers report on their pods (core/reports.py) comes first; the optional checkpoint
observer (a read-only mount of the shared volume) fills in when nothing is reported. A hang is
only judged once the job's trainers have reported (or the observer tracks it): without that, a
hung job cannot be told from a quiet healthy one, or from a trainer that does not report. Each
attempt has its own clock: it starts when every worker of the attempt runs
(`status.runningSince`), never at an earlier attempt's progress, and until the attempt's first
progress it also allows `progressGraceSeconds` for import, rendezvous, compile and checkpoint
load.
"""

from __future__ import annotations

import dataclasses

from controller.api.constants import Phase, Reason
from controller.api.store import StoreStatus
from controller.api.types import CheckpointRef, JobStatus, ProgressRef
from controller.core.context import Context
from controller.core.observations import Observations
from controller.core.plan import EmitEvent
from controller.core.policy.failures import Failure
from controller.core.reports import Summary
from controller.core.timefmt import parse_time

PROGRESS_STATUS_EVERY = 300.0
UPLOAD_FAILING = "CheckpointUploadFailing"


def _advances(new: CheckpointRef, old: CheckpointRef | None) -> bool:
    """Reports from a dying attempt's pods must not move the checkpoint back."""
    if old is None or (new.attempt is not None and old.attempt is not None and new.attempt > old.attempt):
        return True
    return new.step >= old.step


def _worth_writing(new: ProgressRef, old: ProgressRef | None) -> bool:
    """A heartbeat is a status write only every PROGRESS_STATUS_EVERY seconds (and at an attempt's
    first): the hang clock reads the pods' reports themselves, status only remembers them."""
    if old is None or old.attempt != new.attempt:
        return True
    new_time, old_time = parse_time(new.time), parse_time(old.time)
    if new_time is None or old_time is None:
        return new.time != old.time
    return (new_time - old_time).total_seconds() >= PROGRESS_STATUS_EVERY


def observe(status: JobStatus, obs: Observations, reports: Summary) -> tuple[JobStatus, Observations]:
    """The status and observations with what the trainers reported (or the observer saw) applied."""
    checkpoint = reports.checkpoint or obs.checkpoint
    if checkpoint is not None and (
        reports.checkpoint is None or _advances(checkpoint, status.last_complete_checkpoint)
    ):
        status = dataclasses.replace(status, last_complete_checkpoint=checkpoint)
    else:
        checkpoint = None
    if reports.progress is not None and _worth_writing(reports.progress, status.last_progress):
        status = dataclasses.replace(status, last_progress=reports.progress)
    if reports.store is not None:
        status = dataclasses.replace(status, checkpoint_store=reports.store)
    if reports.startup is not None:
        status = dataclasses.replace(status, startup=reports.startup)
        if reports.startup.resumed_from is not None and reports.startup.attempt == status.attempt:
            # What the trainers did resume, over the prediction made at the restart (a SIGKILL can
            # take a rank's last commit report with it, and a resolver may find a step unusable).
            status = dataclasses.replace(status, resumed_from_step=reports.startup.resumed_from)
    progress = reports.progress or (
        status.last_progress
        if status.last_progress and status.last_progress.attempt == status.attempt
        else None
    )
    obs = dataclasses.replace(
        obs,
        checkpoint=checkpoint,
        progress_tracked=obs.progress_tracked or reports.seen or status.last_progress is not None,
        last_progress=parse_time(progress.time) if progress else obs.last_progress,
        last_step=progress.step if progress else obs.last_step,
    )
    return status, obs


def upload_notices(before: StoreStatus | None, after: StoreStatus | None) -> tuple[EmitEvent, ...]:
    """One Warning when the uploads to the checkpoint store start failing, not one per failed try
    (status and metrics count them); training goes on with local checkpoints meanwhile."""
    if after is None or not after.failures or (before is not None and before.failures):
        return ()
    message = f"uploads to the checkpoint store are failing: {after.error or 'no message'}"
    return (EmitEvent("Warning", UPLOAD_FAILING, message),)


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
