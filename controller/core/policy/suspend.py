"""`spec.suspend`, as Job and Kueue mean it: a suspended job has no pods and keeps its status; when
it is unsuspended, a new attempt starts and resumes from the last complete checkpoint.

Suspending a running gang deletes its pods (the trainers get SIGTERM, commit their last step and
stop) and moves on to the next attempt number at once, so the gang started on resume never shares
an attempt id with the one that was stopped (a step pairs files of one attempt). A suspension is
not a failure: it is neither a counted nor an uncounted restart. A finished job ignores it.
"""

from __future__ import annotations

import dataclasses

from controller.api.constants import Phase
from controller.api.types import JobStatus
from controller.core import pods
from controller.core.context import Context, Transition
from controller.core.plan import EmitEvent
from controller.core.policy import conditions, startup


def suspend(ctx: Context, status: JobStatus) -> Transition:
    if status.phase is Phase.SUSPENDED:
        return Transition(status)  # the stopped attempt's pods are older now: decide's cleanup deletes them
    started = status.replicas is not None or bool(ctx.current)
    stopped = status.attempt if started else None
    checkpoint = status.last_complete_checkpoint
    held = dataclasses.replace(
        status,
        phase=Phase.SUSPENDED,
        attempt=status.attempt + 1 if started else status.attempt,
        replicas=None,
        ranks_per_pod=None,
        running_since=None,
        pod_attempt=None,  # a suspended job has no pods to keep
        next_attempt_after=None,
        failure_seen_at=None,
        checkpoint_step_at_restart=checkpoint.step if checkpoint else status.checkpoint_step_at_restart,
        conditions=conditions.suspended(status.conditions, stopped, ctx.now),
    )
    said = f"attempt {stopped} stopped" if stopped is not None else "no attempt started"
    event = EmitEvent("Normal", "Suspended", f"spec.suspend is true: {said}")
    teardown = tuple(pods.deletions(ctx.current, ctx.obs))
    return Transition(held, changes=teardown, notices=(event,), record_first=True)


def resume(ctx: Context, status: JobStatus) -> Transition:
    """Unsuspended: the next attempt is created once the stopped one's pods are all gone."""
    pending = dataclasses.replace(
        status, phase=Phase.PENDING, conditions=conditions.resumed(status.conditions, status.attempt, ctx.now)
    )
    event = EmitEvent("Normal", "Resumed", f"spec.suspend is false: attempt {status.attempt}")
    started = startup.create_attempt(ctx, pending)
    if started.status == pending:  # the stopped gang is still going: the next pass creates it
        return Transition(pending, notices=(event,))
    return dataclasses.replace(started, notices=(event, *started.notices))
