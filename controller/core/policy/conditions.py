"""Status conditions: which ones each transition sets, and when lastTransitionTime moves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.api.constants import Condition, Reason
from controller.core.timefmt import format_time

Conditions = tuple[dict[str, Any], ...]


def set_condition(
    conditions: Conditions, type_: Condition, status: bool, reason: str, message: str, now: datetime
) -> Conditions:
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


def running(conditions: Conditions, attempt: int, now: datetime) -> Conditions:
    conditions = set_condition(
        conditions, Condition.RUNNING, True, "AllWorkersRunning", f"attempt {attempt}", now
    )
    return set_condition(conditions, Condition.RESTARTING, False, "AllWorkersRunning", "", now)


def restarting(conditions: Conditions, reason: str, message: str, now: datetime) -> Conditions:
    conditions = set_condition(conditions, Condition.RUNNING, False, reason, message, now)
    return set_condition(conditions, Condition.RESTARTING, True, reason, message, now)


def succeeded(conditions: Conditions, workers: int, now: datetime) -> Conditions:
    conditions = set_condition(conditions, Condition.RUNNING, False, "Succeeded", "", now)
    return set_condition(
        conditions, Condition.SUCCEEDED, True, "AllWorkersSucceeded", f"all {workers} workers exited 0", now
    )


def failed(conditions: Conditions, reason: str, message: str, now: datetime) -> Conditions:
    conditions = set_condition(conditions, Condition.RUNNING, False, reason, message, now)
    return set_condition(conditions, Condition.FAILED, True, reason, message, now)


def reconcile_error(conditions: Conditions, reason: str, message: str, now: datetime) -> Conditions:
    return set_condition(conditions, Condition.RECONCILE_ERROR, True, reason, message, now)


def reconciled(conditions: Conditions, now: datetime) -> Conditions:
    """A pass whose plan is carried out clears an earlier reconcile error; nothing else changes."""
    if not any(c.get("type") == Condition.RECONCILE_ERROR and c.get("status") == "True" for c in conditions):
        return conditions
    return set_condition(conditions, Condition.RECONCILE_ERROR, False, "Reconciled", "", now)


def invalid(conditions: Conditions, message: str, now: datetime) -> Conditions:
    """An unusable spec: Failed, with the parser's message for the user."""
    return set_condition(conditions, Condition.FAILED, True, Reason.INVALID_SPEC, message, now)


def unschedulable(conditions: Conditions, reason: str, message: str, now: datetime) -> Conditions:
    """The scheduler cannot place a worker: Scheduled=False with its reason and words. Unchanged
    (same tuple) when that is already said, so the caller says it once per distinct message."""
    said = {"status": "False", "reason": reason, "message": message}
    if any(c.get("type") == Condition.SCHEDULED and c.items() >= said.items() for c in conditions):
        return conditions
    return set_condition(conditions, Condition.SCHEDULED, False, reason, message, now)


def scheduled(conditions: Conditions, attempt: int, now: datetime) -> Conditions:
    """Every worker is on a node: clears an earlier Scheduled=False; a job that never waited for
    the scheduler gets no condition."""
    if not any(c.get("type") == Condition.SCHEDULED and c.get("status") == "False" for c in conditions):
        return conditions
    return set_condition(
        conditions, Condition.SCHEDULED, True, "AllWorkersScheduled", f"attempt {attempt}", now
    )


def suspended(conditions: Conditions, stopped: int | None, now: datetime) -> Conditions:
    message = (
        f"spec.suspend is true; attempt {stopped} stopped" if stopped is not None else "spec.suspend is true"
    )
    conditions = set_condition(conditions, Condition.RUNNING, False, "Suspended", message, now)
    return set_condition(conditions, Condition.SUSPENDED, True, "Suspended", message, now)


def resumed(conditions: Conditions, attempt: int, now: datetime) -> Conditions:
    return set_condition(
        conditions, Condition.SUSPENDED, False, "Resumed", f"spec.suspend is false; attempt {attempt}", now
    )
