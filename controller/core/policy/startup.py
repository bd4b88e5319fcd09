"""Starting an attempt: wait until the old gang is gone and the backoff has passed, create the
Service and every missing rank, and mark the job Running once every worker runs. Until then, say
on the job why the scheduler cannot place a worker, and fail the attempt when the gang is not all
running `startupTimeoutSeconds` after it was created (reason StartupTimeout)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from controller.api.constants import Phase, Reason
from controller.api.types import JobStatus
from controller.core import gang, inplace, podspec
from controller.core.context import Context, Transition
from controller.core.plan import (
    CreatePods,
    EmitEvent,
    EnsurePodGroup,
    EnsureReportAccess,
    EnsureService,
    RecordRecovery,
    Step,
)
from controller.core.pods import Pod, container_status, node_of, phase_of, rank_of
from controller.core.policy import conditions, recovery
from controller.core.policy.failures import Failure
from controller.core.timefmt import format_time, parse_time

_STARTED = ("Running", "Succeeded")  # phases of a worker that has started


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
    missing = tuple(rank for rank in range(replicas) if rank not in existing)
    changes: tuple[Step, ...] = (EnsureService(podspec.headless_service(job)),)
    advice = status.checkpoint_interval if job.spec.auto_interval else None
    save_steps = advice.steps if advice is not None else None
    if status.pod_attempt is not None:  # kept pods: their supervisors start the attempt
        changes += inplace.start(ctx.current, status.attempt, save_steps)
    elif missing:
        access = podspec.report_access(job, attempt=status.attempt, replicas=replicas)
        create = CreatePods(job, status.attempt, replicas, missing, tuple(avoid), save_steps)
        changes += (EnsureReportAccess(access),)
        if (group := gang.pod_group(job, replicas, podspec.owner_reference(job))) is not None:
            changes += (EnsurePodGroup(group),)
        changes += (create,)
    # The trainer resolves its resume point with the same function the observer uses.
    resumed = ctx.obs.checkpoint.step if ctx.obs.checkpoint is not None else status.checkpoint_step_at_restart
    created = dataclasses.replace(
        status,
        replicas=replicas,
        ranks_per_pod=job.spec.ranks_per_pod,
        start_time=status.start_time or format_time(ctx.now),
        attempt_created_at=format_time(ctx.now),
        resumed_from_step=resumed,
        next_attempt_after=None,
    )
    size = f" x {job.spec.ranks_per_pod} ranks" if job.spec.ranks_per_pod > 1 else ""
    if job.spec.auto_interval and status.checkpoint_interval is not None:
        size += f"; checkpoint every {status.checkpoint_interval.steps} steps (Auto)"
    if status.pod_attempt is not None:
        size += f", in the pods of attempt {status.pod_attempt}"
    event = EmitEvent("Normal", "AttemptCreated", f"attempt {status.attempt}: {replicas} workers{size}")
    return Transition(created, changes=changes, notices=(event,))


def running(ctx: Context, status: JobStatus) -> Transition | None:
    """Every worker runs (or has finished): the attempt is Running and the restart has recovered."""
    phases = [phase_of(p) for p in ctx.current]
    if not phases or status.phase is Phase.RUNNING or not all(ph in _STARTED for ph in phases):
        return None
    notices: tuple[Step, ...] = (
        EmitEvent("Normal", "Running", f"attempt {status.attempt}: all workers running"),
    )
    seen = parse_time(status.failure_seen_at)
    if seen is not None:
        notices += (RecordRecovery((ctx.now - seen).total_seconds()),)
    up = dataclasses.replace(
        recovery.begin(ctx, status),
        phase=Phase.RUNNING,
        running_since=status.running_since or format_time(ctx.now),
        failure_seen_at=None,
        conditions=conditions.scheduled(
            conditions.running(status.conditions, status.attempt, ctx.now), status.attempt, ctx.now
        ),
    )
    return Transition(up, notices=notices)


def waiting(ctx: Context, status: JobStatus) -> Transition | None:
    """An attempt not all running yet: say on the job why the scheduler cannot place a worker
    (condition Scheduled=False in the scheduler's words, a Warning event once per distinct
    message), and clear that once every worker is on a node. None when there is nothing new."""
    if status.phase is not Phase.PENDING or status.replicas is None:
        return None
    blocked = next((words for p in _by_rank(ctx.current) if (words := _scheduler_says(p))), None)
    notices: tuple[Step, ...] = ()
    if blocked is not None:
        reason, message = blocked[0], f"attempt {status.attempt}: {blocked[1]}"
        said = conditions.unschedulable(status.conditions, reason, message, ctx.now)
        notices = (EmitEvent("Warning", reason, message),)
    elif len(ctx.current) >= status.replicas and all(node_of(p) for p in ctx.current):
        said = conditions.scheduled(status.conditions, status.attempt, ctx.now)
    else:
        return None  # workers the scheduler has not looked at yet
    if said == status.conditions:
        return None
    return Transition(dataclasses.replace(status, conditions=said), notices=notices)


def startup_timeout_in(ctx: Context, status: JobStatus) -> float | None:
    """Seconds until the attempt counts as not started (at zero or below it is); None when no
    deadline applies: none is set, every worker runs, or when the attempt was created is unknown.
    Detection and the requeue deadline both read this one answer."""
    timeout = ctx.policy.startup_timeout
    if not timeout or status.phase is not Phase.PENDING or status.replicas is None or not _late(ctx):
        return None
    created = parse_time(status.attempt_created_at) or _first_created(ctx.current)
    if created is None:
        return None
    return timeout - (ctx.now - created).total_seconds()


def not_started(ctx: Context, status: JobStatus) -> Failure | None:
    """The gang is not all running startupTimeoutSeconds after its attempt was created. The
    failure names the first worker that is late and why: the scheduler's last words, a waiting
    container's reason, or its phase."""
    remaining = startup_timeout_in(ctx, status)
    if remaining is None or remaining > 0:
        return None
    late = _late(ctx)
    pod, timeout = late[0], ctx.policy.startup_timeout or 0
    name = (pod.get("metadata") or {}).get("name")
    message = (
        f"{len(late)} of {status.replicas} workers not running {timeout:.0f}s after attempt "
        f"{status.attempt} was created; {name}: {_why(pod, ctx.job.spec.trainer_container)}"
    )
    pairs = frozenset((c.get("type", ""), c.get("status", "")) for c in _conditions(pod))
    return Failure(
        Reason.STARTUP_TIMEOUT, message, ctx.now, pod=name, node=node_of(pod) or None, conditions=pairs
    )


def _by_rank(pods: Iterable[Pod]) -> list[Pod]:
    return sorted(pods, key=lambda p: (rank_of(p) is None, rank_of(p) or 0))


def _late(ctx: Context) -> list[Pod]:
    return [p for p in _by_rank(ctx.current) if phase_of(p) not in _STARTED]


def _conditions(pod: Pod) -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])


def _scheduler_says(pod: Pod) -> tuple[str, str] | None:
    """(reason, message) of the pod's PodScheduled=False condition: the scheduler cannot place it."""
    for c in _conditions(pod):
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c.get("reason") or "Unschedulable", c.get("message") or "no node for this worker"
    return None


def _first_created(pods: Sequence[Pod]) -> datetime | None:
    """For a status written before attemptCreatedAt: the attempt's oldest pod stands in."""
    times = [t for p in pods if (t := parse_time((p.get("metadata") or {}).get("creationTimestamp")))]
    return min(times, default=None)


def _why(pod: Pod, trainer: str) -> str:
    said = _scheduler_says(pod)
    if said is not None:
        return f"{said[0]}: {said[1]}"
    waiting_ = (container_status(pod, trainer).get("state") or {}).get("waiting") or {}
    if waiting_.get("reason"):
        detail = f" ({waiting_['message']})" if waiting_.get("message") else ""
        return f"container {trainer} waiting: {waiting_['reason']}{detail}"
    phase, node = phase_of(pod) or "Pending", node_of(pod)
    return f"{phase} on {node}" if node else f"{phase}, not scheduled yet"
