"""`spec.failurePolicy`: how many restarts, how fast, and what each kind of failure does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.api.constants import Action
from controller.api.paths import InvalidSpec


@dataclass(frozen=True)
class Rule:
    action: Action
    exit_codes_operator: str | None = None  # "In" | "NotIn"
    exit_codes: frozenset[int] = frozenset()
    pod_conditions: tuple[tuple[str, str], ...] = ()  # (type, status)
    reasons: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FailurePolicy:
    max_restarts: int = 3
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    rules: tuple[Rule, ...] = ()
    avoid_faulty_nodes: bool = True
    progress_timeout: float | None = None
    # More silence allowed before an attempt's first progress: import, rendezvous, compile, load.
    progress_grace: float = 300.0
    node_lost_timeout: float = 30.0
    # The gang must be all running this long after its attempt was created; None waits forever.
    startup_timeout: float | None = None
    # An exit this close (either side) to a device fault on the worker's chips is the fault's.
    device_fault_window: float = 60.0
    # A faulty node no report calls healthy again is allowed again after this; 0 = never.
    faulty_node_ttl: float = 3600.0
    # A trainer's failure on a healthy node restarts the gang's processes in their pods
    # (respawn_protocol/inplace.py) instead of recreating the pods.
    restart_in_place: bool = False


def parse_failure_policy(policy: dict[str, Any]) -> FailurePolicy:
    backoff = policy.get("backoff") or {}
    initial = float(backoff.get("initialSeconds", 10))
    maximum = float(backoff.get("maxSeconds", 300))
    if maximum < initial:
        raise InvalidSpec("failurePolicy.backoff.maxSeconds must be >= initialSeconds")
    timeout = policy.get("progressTimeoutSeconds")
    startup = policy.get("startupTimeoutSeconds")
    return FailurePolicy(
        max_restarts=int(policy.get("maxRestarts", 3)),
        backoff_initial=initial,
        backoff_max=maximum,
        rules=tuple(_parse_rule(i, r) for i, r in enumerate(policy.get("rules") or [])),
        avoid_faulty_nodes=bool(policy.get("avoidFaultyNodes", True)),
        progress_timeout=float(timeout) if timeout else None,
        progress_grace=float(policy.get("progressGraceSeconds", 300)),
        node_lost_timeout=float(policy.get("nodeLostTimeoutSeconds", 30)),
        startup_timeout=float(startup) if startup else None,
        device_fault_window=float(policy.get("deviceFaultWindowSeconds", 60)),
        faulty_node_ttl=float(policy.get("faultyNodeTTLSeconds", 3600)),
        restart_in_place=policy.get("restartInPlace") is True,
    )


def _parse_rule(index: int, rule: dict[str, Any]) -> Rule:
    where = f"failurePolicy.rules[{index}]"
    try:
        action = Action(rule["action"])
    except (KeyError, ValueError):
        raise InvalidSpec(f"{where}.action must be one of {[a.value for a in Action]}") from None
    exit_codes = rule.get("onExitCodes")
    conditions = rule.get("onPodConditions")
    reasons = rule.get("onReasons")
    if sum(x is not None for x in (exit_codes, conditions, reasons)) != 1:
        raise InvalidSpec(f"{where} needs exactly one of onExitCodes, onPodConditions or onReasons")
    if exit_codes is not None:
        return Rule(action, exit_codes["operator"], frozenset(int(v) for v in exit_codes["values"]))
    if conditions is not None:
        pairs = tuple((c["type"], c.get("status", "True")) for c in conditions)
        return Rule(action, pod_conditions=pairs)
    return Rule(action, reasons=frozenset(reasons or ()))
