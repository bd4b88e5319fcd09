"""The pure decision core: (job, pods, observations, now) -> Plan.

A restart is state, not an action: it bumps `status.attempt`, and every later pass deletes pods
of older attempts, waits until they are gone, waits out the backoff, then creates the new
attempt. Each pass reads only its inputs, so the same inputs always give the same plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from controller.api.constants import Action, Condition, Phase, Reason
from controller.api.types import FailureRecord, JobStatus, TrainingJob
from controller.core import podspec
from controller.core.observations import Observations, format_time, parse_time
from controller.core.plan import Event, Plan, PodDeletion, Restart
from controller.core.policy import failures
from respawn_protocol.crd import LABEL_ATTEMPT, LABEL_RANK

MAX_FAULTY_NODES = 16


def attempt_of(pod: dict[str, Any]) -> int | None:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def rank_of(pod: dict[str, Any]) -> int | None:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_RANK)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def backoff_seconds(consecutive_failures: int, *, initial: float, maximum: float) -> float:
    if consecutive_failures <= 0 or initial <= 0:
        return 0.0
    return min(initial * 2 ** (consecutive_failures - 1), maximum)


def set_condition(
    conditions: tuple[dict[str, Any], ...],
    type_: Condition,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
) -> tuple[dict[str, Any], ...]:
    """Upsert one condition; lastTransitionTime changes only when the status does."""
    value = "True" if status else "False"
    others = [c for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    if previous is None or previous.get("status") != value:
        transition = format_time(now)
    else:
        transition = previous.get("lastTransitionTime", format_time(now))
    new = {
        "type": type_.value,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    return (*others, new)


def _deletions(pods: Sequence[dict[str, Any]], obs: Observations) -> list[PodDeletion]:
    out = []
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName") or ""
        lost = node in obs.nodes and not obs.nodes[node].ready
        terminating = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
        if not terminating or lost:
            out.append(PodDeletion(pod["metadata"]["name"], force=lost))
    return out


def decide(job: TrainingJob, pods: Sequence[dict[str, Any]], obs: Observations, now: datetime) -> Plan:
    plan = Plan()
    if job.deleting:
        return plan
    status = _with_observations(job, obs, now)
    current = [p for p in pods if attempt_of(p) == status.attempt]
    older = [p for p in pods if attempt_of(p) != status.attempt]
    plan.delete_pods.extend(_deletions(older, obs))

    if status.phase.terminal:
        if status.phase is Phase.FAILED:
            plan.delete_pods.extend(_deletions(current, obs))
    elif status.phase is Phase.RESTARTING:
        status = _continue_restart(job, status, current, older, obs, now, plan)
    elif status.replicas is None:
        status = _create_attempt(job, status, current, older, obs, now, plan)
    else:
        status = _watch_attempt(job, status, current, obs, now, plan)

    if status != job.status:
        plan.status = status
    return plan


def _with_observations(job: TrainingJob, obs: Observations, now: datetime) -> JobStatus:
    """Fold in what the checkpoint observer saw; progress after a restart refunds its budget."""
    status = dataclasses.replace(job.status, observed_generation=job.generation)
    if obs.checkpoint is None:
        return status
    status = dataclasses.replace(status, last_complete_checkpoint=obs.checkpoint)
    baseline = status.checkpoint_step_at_restart
    # Only the new attempt's own progress counts; the old one may still be committing while it dies.
    running = status.phase in (Phase.PENDING, Phase.RUNNING)
    if running and status.consecutive_failures and (baseline is None or obs.checkpoint.step > baseline):
        status = dataclasses.replace(
            status,
            budget_used=max(0, status.budget_used - 1),
            consecutive_failures=0,
            checkpoint_step_at_restart=None,
        )
    return status


def _continue_restart(
    job: TrainingJob,
    status: JobStatus,
    current: list[dict[str, Any]],
    older: list[dict[str, Any]],
    obs: Observations,
    now: datetime,
    plan: Plan,
) -> JobStatus:
    if older:
        return status  # the old attempt must be entirely gone first: two gangs never overlap
    ready_at = parse_time(status.next_attempt_after) or now
    if ready_at > now:
        plan.requeue_after = (ready_at - now).total_seconds()
        return status
    status = dataclasses.replace(status, phase=Phase.PENDING)
    return _create_attempt(job, status, current, older, obs, now, plan)


def _create_attempt(
    job: TrainingJob,
    status: JobStatus,
    current: list[dict[str, Any]],
    older: list[dict[str, Any]],
    obs: Observations,
    now: datetime,
    plan: Plan,
) -> JobStatus:
    if older:
        return status
    replicas = job.spec.replicas
    existing = {rank_of(p) for p in current}
    avoid = status.faulty_nodes if job.spec.failure_policy.avoid_faulty_nodes else ()
    plan.ensure_service = podspec.headless_service(job)
    plan.create_pods = [
        podspec.worker_pod(job, attempt=status.attempt, rank=rank, replicas=replicas, avoid_nodes=avoid)
        for rank in range(replicas)
        if rank not in existing
    ]
    plan.events.append(Event("Normal", "AttemptCreated", f"attempt {status.attempt}: {replicas} workers"))
    # The trainer resolves its resume point with the same function the observer uses.
    resumed = status.checkpoint_step_at_restart
    if obs.checkpoint is not None:
        resumed = obs.checkpoint.step
    return dataclasses.replace(
        status,
        replicas=replicas,
        start_time=status.start_time or format_time(now),
        resumed_from_step=resumed,
        next_attempt_after=None,
    )


def _watch_attempt(
    job: TrainingJob,
    status: JobStatus,
    current: list[dict[str, Any]],
    obs: Observations,
    now: datetime,
    plan: Plan,
) -> JobStatus:
    policy = job.spec.failure_policy
    trainer = job.spec.trainer_container
    found = [
        f for p in current if (f := failures.detect(p, trainer=trainer, obs=obs, policy=policy, now=now))
    ]
    replicas = status.replicas or job.spec.replicas
    missing = sorted(set(range(replicas)) - {rank_of(p) for p in current})
    if missing:
        found.append(
            failures.Failure(
                Reason.POD_DELETED,
                f"worker rank {missing[0]} disappeared",
                now,
                podspec.pod_name(job.name, status.attempt, missing[0]),
            )
        )
    cause = failures.root_cause(found)
    if cause is None and policy.progress_timeout and obs.progress_tracked and status.phase is Phase.RUNNING:
        cause = _hang(job, status, obs, now)
    if cause is not None:
        return _fail_attempt(job, status, current, failures.classify(cause, policy), obs, now, plan)
    plan.requeue_after = _next_deadline(job, status, current, obs, now)

    phases = [(p.get("status") or {}).get("phase") for p in current]
    if phases and all(ph == "Succeeded" for ph in phases):
        plan.events.append(Event("Normal", "Succeeded", f"all {len(phases)} workers completed"))
        conditions = set_condition(status.conditions, Condition.RUNNING, False, "Succeeded", "", now)
        conditions = set_condition(
            conditions,
            Condition.SUCCEEDED,
            True,
            "AllWorkersSucceeded",
            f"all {len(phases)} workers exited 0",
            now,
        )
        return dataclasses.replace(
            status, phase=Phase.SUCCEEDED, completion_time=format_time(now), conditions=conditions
        )
    if phases and all(ph in ("Running", "Succeeded") for ph in phases) and status.phase is not Phase.RUNNING:
        seen = parse_time(status.failure_seen_at)
        if seen is not None:
            plan.recovered_after = (now - seen).total_seconds()
        plan.events.append(Event("Normal", "Running", f"attempt {status.attempt}: all workers running"))
        conditions = set_condition(
            status.conditions, Condition.RUNNING, True, "AllWorkersRunning", f"attempt {status.attempt}", now
        )
        conditions = set_condition(conditions, Condition.RESTARTING, False, "AllWorkersRunning", "", now)
        return dataclasses.replace(status, phase=Phase.RUNNING, failure_seen_at=None, conditions=conditions)
    return status


def _next_deadline(
    job: TrainingJob, status: JobStatus, current: list[dict[str, Any]], obs: Observations, now: datetime
) -> float | None:
    """Seconds until a timeout could fire with no further event: a NotReady node or a hang."""
    policy = job.spec.failure_policy
    waits = []
    for pod in current:
        state = obs.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if state is not None and not state.ready:
            since = state.not_ready_since or now
            waits.append(policy.node_lost_timeout - (now - since).total_seconds())
    if policy.progress_timeout and obs.progress_tracked:
        started = parse_time(status.start_time) or now
        last = max(filter(None, (obs.last_progress, started)))
        waits.append(policy.progress_timeout - (now - last).total_seconds())
    return max(0.0, min(waits)) if waits else None


def _hang(job: TrainingJob, status: JobStatus, obs: Observations, now: datetime) -> failures.Failure | None:
    timeout = job.spec.failure_policy.progress_timeout or 0
    started = parse_time(status.start_time) or now
    last = max(filter(None, (obs.last_progress, started)))
    if (now - last).total_seconds() < timeout:
        return None
    return failures.Failure(Reason.PROGRESS_TIMEOUT, f"no progress for {timeout:.0f}s", now)


def _fail_attempt(
    job: TrainingJob,
    status: JobStatus,
    current: list[dict[str, Any]],
    verdict: failures.Verdict,
    obs: Observations,
    now: datetime,
    plan: Plan,
) -> JobStatus:
    f = verdict.failure
    policy = job.spec.failure_policy
    action = verdict.action
    message = f.message
    if action is Action.RESTART_JOB and status.budget_used >= policy.max_restarts:
        action = Action.FAIL_JOB
        message = f"{f.message}; restart budget of {policy.max_restarts} exhausted"
    record = FailureRecord(
        time=format_time(f.at),
        reason=f.reason.value,
        action=action.value,
        message=message,
        pod=f.pod,
        node=f.node,
        exit_code=f.exit_code,
        counted=action is Action.RESTART_JOB,
    )
    plan.status_first = True
    plan.delete_pods.extend(_deletions(current, obs))
    if action is Action.FAIL_JOB:
        reason = Reason.BUDGET_EXCEEDED.value if message != f.message else f.reason.value
        plan.events.append(Event("Warning", "JobFailed", message))
        conditions = set_condition(status.conditions, Condition.RUNNING, False, reason, message, now)
        conditions = set_condition(conditions, Condition.FAILED, True, reason, message, now)
        return dataclasses.replace(
            status,
            phase=Phase.FAILED,
            last_failure=record,
            completion_time=format_time(now),
            conditions=conditions,
        )

    counted = action is Action.RESTART_JOB
    consecutive = status.consecutive_failures + 1
    delay = backoff_seconds(consecutive, initial=policy.backoff_initial, maximum=policy.backoff_max)
    faulty = status.faulty_nodes
    if verdict.faulty_node and policy.avoid_faulty_nodes and verdict.faulty_node not in faulty:
        faulty = (*faulty, verdict.faulty_node)[-MAX_FAULTY_NODES:]
    step = obs.checkpoint.step if obs.checkpoint else None
    steps_lost = obs.last_step - step if obs.last_step is not None and step is not None else None
    plan.restart = Restart(f.reason.value, counted, steps_lost)
    plan.requeue_after = delay
    kind = "counted" if counted else "not counted"
    plan.events.append(
        Event(
            "Warning",
            "Restarting",
            f"{f.reason.value} on {f.pod or 'job'}: {message}; restart {kind}, "
            f"attempt {status.attempt + 1} in {delay:.0f}s",
        )
    )
    conditions = set_condition(status.conditions, Condition.RUNNING, False, f.reason.value, message, now)
    conditions = set_condition(conditions, Condition.RESTARTING, True, f.reason.value, message, now)
    return dataclasses.replace(
        status,
        phase=Phase.RESTARTING,
        attempt=status.attempt + 1,
        restarts=status.restarts + counted,
        uncounted_restarts=status.uncounted_restarts + (not counted),
        budget_used=status.budget_used + counted,
        consecutive_failures=consecutive,
        next_attempt_after=format_time(now + timedelta(seconds=delay)),
        failure_seen_at=status.failure_seen_at or format_time(now),
        checkpoint_step_at_restart=step,
        faulty_nodes=faulty,
        last_failure=record,
        replicas=None,
        conditions=conditions,
    )
