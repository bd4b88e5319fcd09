"""Failure detection and classification: pure functions over raw pod bodies and observations.

Detection finds every worker of the current attempt that is failing and why; the earliest is the
root cause (the other ranks usually die after it because the collective broke). Classification
applies the user's rules first, then the defaults: infrastructure faults restart without using
the budget, the trainer's permanent-error code fails the job, everything else uses the budget.
What a trainer's exit code means comes from the protocol's `classify_exit`, the one source the
trainer documents its codes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from controller.api.constants import Action, Reason
from controller.api.failure_policy import FailurePolicy, Rule
from controller.api.types import JobStatus
from controller.core import podspec
from controller.core.context import Context
from controller.core.devicefaults import Fault, FaultClass, chips_of_pod
from controller.core.pods import Pod, attempt_of, container_status, name_of, node_of, owned_by, rank_of
from controller.core.policy import devices
from controller.core.timefmt import parse_time
from respawn_protocol.contract import ExitClass, classify_exit, preflight_check

# Reasons that say nothing about the job itself: they restart it without using the budget.
INFRASTRUCTURE = frozenset(
    {
        Reason.EVICTED,
        Reason.PREEMPTED,
        Reason.NODE_LOST,
        Reason.DEVICE_FAULT,
        Reason.STOPPED,
        Reason.PREFLIGHT_FAILED,
    }
)
# Reasons that point at a machine; with avoidance on, the next attempt stays off it (unless the
# failure `keeps_node`: a chip reset clears it, or a pre-flight check that is not the node's).
NODE_FAULTS = frozenset({Reason.NODE_LOST, Reason.DEVICE_FAULT, Reason.PREFLIGHT_FAILED})

# The first line of a container's termination message, quoted in the failure's message, at most.
_MAX_QUOTED = 200

_DISRUPTION_REASONS = {
    "PreemptionByScheduler": Reason.PREEMPTED,
    "DeletionByTaintManager": Reason.NODE_LOST,
    "DeletionByPodGC": Reason.NODE_LOST,
}


@dataclass(frozen=True)
class Failure:
    reason: Reason
    message: str
    at: datetime
    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None
    conditions: frozenset[tuple[str, str]] = frozenset()
    chips: frozenset[str] | None = None  # the worker's NPUs (device plugin annotation); None: unknown
    keeps_node: bool = False  # a device fault a chip reset clears, a check not the node's: not avoided


@dataclass(frozen=True)
class Verdict:
    failure: Failure
    action: Action
    exhausted_budget: int | None = None  # a counted restart was due, but this budget was used up

    @property
    def counted(self) -> bool:
        return self.action is Action.RESTART_JOB

    @property
    def reason(self) -> str:
        return (
            Reason.BUDGET_EXCEEDED.value if self.exhausted_budget is not None else self.failure.reason.value
        )

    @property
    def message(self) -> str:
        if self.exhausted_budget is not None:
            return f"{self.failure.message}; restart budget of {self.exhausted_budget} exhausted"
        return self.failure.message

    @property
    def faulty_node(self) -> str | None:
        if self.failure.reason not in NODE_FAULTS or self.failure.keeps_node:
            return None
        return self.failure.node


def node_lost_in(pod: Pod, ctx: Context) -> tuple[float, datetime] | None:
    """(seconds until the pod's NotReady node counts as lost, NotReady since); None if its node is
    ready or unknown. At zero or below the node is lost: detection and the requeue deadline both
    read this one answer."""
    state = ctx.obs.nodes.get(node_of(pod))
    if state is None or state.ready:
        return None
    since = state.not_ready_since or ctx.now
    return ctx.policy.node_lost_timeout - (ctx.now - since).total_seconds(), since


def _exit_failure(exit_code: Any, trainer: str, said: Any = None) -> tuple[Reason, str]:
    """The reason for an exit code, and a message that quotes the container's termination message
    (a pod of several ranks names the rank that failed there) when it wrote one."""
    meaning = classify_exit(exit_code) if isinstance(exit_code, int) else ExitClass.RETRYABLE
    if meaning is ExitClass.PERMANENT:
        reason, message = Reason.PERMANENT_ERROR, f"trainer exited {exit_code}: configuration or data error"
    elif meaning is ExitClass.STOPPED:
        reason, message = Reason.STOPPED, "trainer checkpointed and stopped on request"
    elif meaning is ExitClass.INFRASTRUCTURE:
        reason, message = (
            Reason.PREFLIGHT_FAILED,
            f"trainer exited {exit_code}: its environment failed a check",
        )
    else:
        reason, message = Reason.ERROR, f"container {trainer} exited with code {exit_code}"
    if isinstance(said, str) and (line := said.strip().split("\n", 1)[0].strip()):
        message += f" ({line[:_MAX_QUOTED]})"
    return reason, message


def detect(pod: Pod, ctx: Context) -> Failure | None:
    """Why this worker pod of the current attempt is failing, or None if it is not."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    trainer = ctx.job.spec.trainer_container
    conditions = {c.get("type", ""): c for c in status.get("conditions") or []}
    terminated = (container_status(pod, trainer).get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    base = Failure(
        Reason.ERROR,
        "",
        parse_time(terminated.get("finishedAt")) or ctx.now,
        meta.get("name"),
        (pod.get("spec") or {}).get("nodeName"),
        exit_code,
        frozenset((t, c.get("status", "")) for t, c in conditions.items()),
        chips_of_pod(pod),
    )

    disruption = conditions.get("DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        reason = _DISRUPTION_REASONS.get(disruption.get("reason", ""), Reason.EVICTED)
        message = disruption.get("message") or disruption.get("reason", "disrupted")
        return replace(base, reason=reason, message=message, at=_when(disruption, ctx))
    phase = status.get("phase")
    if phase == "Failed":
        return _failed(pod, base, ctx)
    if phase == "Succeeded":
        return None
    if meta.get("deletionTimestamp"):
        at = parse_time(meta["deletionTimestamp"]) or ctx.now
        return replace(base, reason=Reason.POD_DELETED, message="worker pod was deleted", at=at)
    return _node_failure(pod, base, ctx)


def _failed(pod: Pod, base: Failure, ctx: Context) -> Failure:
    """A worker whose pod failed: evicted by the kubelet, OOM-killed, or its trainer's exit (a
    device fault's or a lost node's when one explains it)."""
    status, trainer = pod.get("status") or {}, ctx.job.spec.trainer_container
    terminated = (container_status(pod, trainer).get("state") or {}).get("terminated") or {}
    if status.get("reason") == "Evicted":
        return replace(base, reason=Reason.EVICTED, message=status.get("message", "evicted by the kubelet"))
    if terminated.get("reason") == "OOMKilled":
        return replace(base, reason=Reason.OOM_KILLED, message=f"container {trainer} was OOM-killed")
    reason, message = _exit_failure(base.exit_code, trainer, terminated.get("message"))
    if reason is Reason.PREFLIGHT_FAILED:
        return replace(base, reason=reason, message=message, keeps_node=not _on_node(terminated))
    if reason is Reason.ERROR and (fault := devices.exit_fault(pod, ctx, base.at)) is not None:
        return _device_failure(base, fault, devices.explain(base.node, fault, base.at, message))
    if reason is Reason.ERROR and _lost_peer_exit(base.exit_code) and (down := _gang_node_down(ctx)):
        node, since = down
        message += f" while node {node} of the gang was not ready (since {since.isoformat()})"
        return replace(base, reason=Reason.NODE_LOST, message=message, node=node)
    return replace(base, reason=reason, message=message)


def _on_node(terminated: dict[str, Any]) -> bool:
    """Whether the pre-flight check the termination message names is the node's (its disk). A
    message that names none keeps the node."""
    check = preflight_check(terminated.get("message"))
    return check is not None and check.on_node


def _when(condition: dict[str, Any], ctx: Context) -> datetime:
    return parse_time(condition.get("lastTransitionTime")) or ctx.now


def _lost_peer_exit(exit_code: Any) -> bool:
    """An exit a survivor makes when its collective breaks: the trainer's own error code, not a
    signal's (a SIGKILLed or OOM-killed rank died of its own cause, whatever its peers' nodes do)."""
    return isinstance(exit_code, int) and 0 < exit_code < 128


def _gang_node_down(ctx: Context) -> tuple[str, datetime] | None:
    """A NotReady node under a worker of the attempt, not yet counted as lost: (node, since).

    Ranks that lose a peer on such a node exit with an error of their own (the collective broke)
    well before `nodeLostTimeoutSeconds`; that exit is the node's fault, not the job's."""
    for pod in sorted(ctx.current, key=name_of):
        if (lost := node_lost_in(pod, ctx)) is not None:
            return node_of(pod), lost[1]
    return None


def _node_failure(pod: Pod, base: Failure, ctx: Context) -> Failure | None:
    node = node_of(pod)
    if not node:
        return None
    lost = node_lost_in(pod, ctx)
    if lost is not None and lost[0] <= 0:
        since = lost[1]
        return replace(
            base,
            reason=Reason.NODE_LOST,
            message=f"node {node} not ready since {since.isoformat()}",
            at=since,
        )
    report = ctx.obs.device_reports.get(node)
    if report is not None:
        fault = devices.running_fault(pod, report)
        if fault is None:
            return None
        failure = _device_failure(base, fault, devices.explain(node, fault))
        return replace(failure, at=min(fault.time or ctx.now, ctx.now))
    return None


def _device_failure(base: Failure, fault: Fault, message: str) -> Failure:
    """A DeviceFault; a restart-class fault keeps the node (a chip reset clears it)."""
    keeps = fault.action is FaultClass.RESTART
    return replace(base, reason=Reason.DEVICE_FAULT, message=message, keeps_node=keeps)


def missing_ranks(ctx: Context, status: JobStatus) -> list[Failure]:
    """A rank of the current attempt whose pod is gone: deleted and already removed. Its last
    state, when the informer saw it go, says why (an eviction's DisruptionTarget): the pass that
    sees a failure may come after the pod left."""
    replicas = status.replicas or ctx.job.spec.replicas
    missing = sorted(set(range(replicas)) - {rank_of(p) for p in ctx.current})
    if not missing:
        return []
    last_seen = {
        rank_of(p): p
        for p in ctx.obs.departed
        if owned_by(p, ctx.job.uid) and attempt_of(p) == status.attempt
    }
    if (gone := last_seen.get(missing[0])) is not None and (why := detect(gone, ctx)) is not None:
        return [why]
    name = podspec.pod_name(ctx.job.name, status.attempt, missing[0])
    return [Failure(Reason.POD_DELETED, f"worker rank {missing[0]} disappeared", ctx.now, name)]


def find(ctx: Context, status: JobStatus) -> list[Failure]:
    """Every failure of the current attempt: failing workers, then missing ranks."""
    return [f for p in ctx.current if (f := detect(p, ctx))] + missing_ranks(ctx, status)


def root_cause(failures: Sequence[Failure]) -> Failure | None:
    return min(failures, key=lambda f: (f.at, f.pod or "")) if failures else None


def _rule_matches(rule: Rule, failure: Failure) -> bool:
    if rule.exit_codes_operator is not None:
        if failure.exit_code is None:
            return False
        inside = failure.exit_code in rule.exit_codes
        return inside if rule.exit_codes_operator == "In" else not inside
    if rule.pod_conditions:
        return any(pair in failure.conditions for pair in rule.pod_conditions)
    return failure.reason.value in rule.reasons


def default_action(reason: Reason) -> Action:
    if reason is Reason.PERMANENT_ERROR:
        return Action.FAIL_JOB
    if reason in INFRASTRUCTURE:
        return Action.RESTART_JOB_IGNORE_BUDGET
    return Action.RESTART_JOB


def classify(failure: Failure, policy: FailurePolicy) -> Verdict:
    for rule in policy.rules:
        if _rule_matches(rule, failure):
            return Verdict(failure, rule.action)
    return Verdict(failure, default_action(failure.reason))
