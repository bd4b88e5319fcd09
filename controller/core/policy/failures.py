"""Failure detection and classification: pure functions over raw pod bodies and observations.

Detection finds every worker of the current attempt that is failing and why; the earliest is the
root cause (the other ranks usually die after it because the collective broke). Classification
applies the user's rules first, then the defaults: infrastructure faults restart without using
the budget, the trainer's permanent-error code fails the job, everything else uses the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.api.constants import Action, Reason
from controller.api.types import FailurePolicy, Rule
from controller.core.observations import Observations, parse_time
from respawn_protocol.contract import ExitCode

# Reasons that say nothing about the job itself: they restart it without using the budget.
INFRASTRUCTURE = frozenset(
    {Reason.EVICTED, Reason.PREEMPTED, Reason.NODE_LOST, Reason.DEVICE_FAULT, Reason.STOPPED}
)
# Reasons that point at a machine; with avoidance on, the next attempt stays off it.
NODE_FAULTS = frozenset({Reason.NODE_LOST, Reason.DEVICE_FAULT})

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


@dataclass(frozen=True)
class Verdict:
    failure: Failure
    action: Action

    @property
    def counted(self) -> bool:
        return self.action is Action.RESTART_JOB

    @property
    def faulty_node(self) -> str | None:
        return self.failure.node if self.failure.reason in NODE_FAULTS else None


def container_status(pod: Mapping[str, Any], container: str) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return status
    return {}


def _conditions(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (pod.get("status") or {}).get("conditions") or []}


def detect(
    pod: Mapping[str, Any], *, trainer: str, obs: Observations, policy: FailurePolicy, now: datetime
) -> Failure | None:
    """Why this worker pod of the current attempt is failing, or None if it is not."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name, node = meta.get("name"), (pod.get("spec") or {}).get("nodeName")
    conditions = _conditions(pod)
    pairs = frozenset((t, c.get("status", "")) for t, c in conditions.items())
    terminated = (container_status(pod, trainer).get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    at = parse_time(terminated.get("finishedAt")) or now

    def failure(reason: Reason, message: str, when: datetime = at) -> Failure:
        return Failure(reason, message, when, name, node, exit_code, pairs)

    disruption = conditions.get("DisruptionTarget")
    if disruption and disruption.get("status") == "True":
        reason = _DISRUPTION_REASONS.get(disruption.get("reason", ""), Reason.EVICTED)
        when = parse_time(disruption.get("lastTransitionTime")) or now
        return failure(reason, disruption.get("message") or disruption.get("reason", "disrupted"), when)
    phase = status.get("phase")
    if phase == "Failed":
        if status.get("reason") == "Evicted":
            return failure(Reason.EVICTED, status.get("message", "evicted by the kubelet"))
        if terminated.get("reason") == "OOMKilled":
            return failure(Reason.OOM_KILLED, f"container {trainer} was OOM-killed")
        if exit_code == ExitCode.CONFIG_ERROR:
            return failure(Reason.PERMANENT_ERROR, f"trainer exited {exit_code}: configuration or data error")
        if exit_code == ExitCode.STOPPED:
            return failure(Reason.STOPPED, "trainer checkpointed and stopped on request")
        return failure(Reason.ERROR, f"container {trainer} exited with code {exit_code}")
    if phase == "Succeeded":
        return None
    if meta.get("deletionTimestamp"):
        return failure(
            Reason.POD_DELETED, "worker pod was deleted", parse_time(meta["deletionTimestamp"]) or now
        )
    if node:
        state = obs.nodes.get(node)
        if state is not None and not state.ready:
            since = state.not_ready_since or now
            if (now - since).total_seconds() >= policy.node_lost_timeout:
                return failure(Reason.NODE_LOST, f"node {node} not ready since {since.isoformat()}", since)
        if node in obs.device_faults:
            return failure(Reason.DEVICE_FAULT, f"device fault on {node}: {obs.device_faults[node]}", now)
    return None


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
