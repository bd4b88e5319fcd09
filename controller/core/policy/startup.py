"""Starting an attempt: wait until the old gang is gone and the backoff has passed, create the
Service and every missing rank, and mark the job Running once every worker runs."""

from __future__ import annotations

import dataclasses

from controller.api.constants import Phase
from controller.api.types import JobStatus
from controller.core import podspec
from controller.core.context import Context, Transition
from controller.core.plan import CreatePods, EmitEvent, EnsureService, RecordRecovery, Step
from controller.core.pods import phase_of, rank_of
from controller.core.policy import conditions
from controller.core.timefmt import format_time, parse_time


def continue_restart(ctx: Context, status: JobStatus) -> Transition:
    if ctx.older:
        return Transition(status)  # the old attempt must be entirely gone first: two gangs never overlap
    ready_at = parse_time(status.next_attempt_after) or ctx.now
    if ready_at > ctx.now:
        return Transition(status, requeue_after=(ready_at - ctx.now).total_seconds())
    return create_attempt(ctx, dataclasses.replace(status, phase=Phase.PENDING))


def create_attempt(ctx: Context, status: JobStatus) -> Transition:
    if ctx.older:
        return Transition(status)
    job = ctx.job
    replicas = job.spec.replicas
    existing = {rank_of(p) for p in ctx.current}
    avoid = status.faulty_nodes if job.spec.failure_policy.avoid_faulty_nodes else ()
    bodies = tuple(
        podspec.worker_pod(job, attempt=status.attempt, rank=rank, replicas=replicas, avoid_nodes=avoid)
        for rank in range(replicas)
        if rank not in existing
    )
    changes: tuple[Step, ...] = (EnsureService(podspec.headless_service(job)),)
    if bodies:
        changes += (CreatePods(bodies),)
    # The trainer resolves its resume point with the same function the observer uses.
    resumed = ctx.obs.checkpoint.step if ctx.obs.checkpoint is not None else status.checkpoint_step_at_restart
    created = dataclasses.replace(
        status,
        replicas=replicas,
        start_time=status.start_time or format_time(ctx.now),
        resumed_from_step=resumed,
        next_attempt_after=None,
    )
    event = EmitEvent("Normal", "AttemptCreated", f"attempt {status.attempt}: {replicas} workers")
    return Transition(created, changes=changes, notices=(event,))


def running(ctx: Context, status: JobStatus) -> Transition | None:
    """Every worker runs (or has finished): the attempt is Running and the restart has recovered."""
    phases = [phase_of(p) for p in ctx.current]
    if (
        not phases
        or status.phase is Phase.RUNNING
        or not all(ph in ("Running", "Succeeded") for ph in phases)
    ):
        return None
    notices: tuple[Step, ...] = (
        EmitEvent("Normal", "Running", f"attempt {status.attempt}: all workers running"),
    )
    seen = parse_time(status.failure_seen_at)
    if seen is not None:
        notices += (RecordRecovery((ctx.now - seen).total_seconds()),)
    up = dataclasses.replace(
        status,
        phase=Phase.RUNNING,
        running_since=status.running_since or format_time(ctx.now),
        failure_seen_at=None,
        conditions=conditions.running(status.conditions, status.attempt, ctx.now),
    )
    return Transition(up, notices=notices)
