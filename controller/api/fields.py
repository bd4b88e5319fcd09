"""Single spec fields with their bounds, parsed again in the controller: a job admitted under an
older CRD, or written where the schema is not enforced, still gets a clear InvalidSpec."""

from __future__ import annotations

from typing import Any

from controller.api.paths import InvalidSpec


def ranks_per_pod(value: Any) -> int:
    """The CRD's bounds, again: a job admitted under an older CRD has no ranksPerPod (1)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidSpec(f"spec.ranksPerPod must be an integer >= 1, got {value!r}")
    return value


def interval_policy(value: Any) -> bool:
    if value not in ("Manual", "Auto"):
        raise InvalidSpec(f"spec.checkpointInterval must be Manual or Auto, got {value!r}")
    return value == "Auto"


def ttl(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidSpec(f"spec.ttlSecondsAfterFinished must be an integer >= 0, got {value!r}")
    return value


def pod_group(value: Any, template: dict[str, Any]) -> str | None:
    """Volcano's PodGroup for pods Volcano schedules unless `None` is asked for; else as asked."""
    if value is None:
        return "Volcano" if (template.get("spec") or {}).get("schedulerName") == "volcano" else None
    if value not in ("Volcano", "Coscheduling", "None"):
        raise InvalidSpec(f"spec.podGroup must be Volcano, Coscheduling or None, got {value!r}")
    return None if value == "None" else str(value)
