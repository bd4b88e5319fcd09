"""What the controller knows besides the job and its pods, handed to the pure decision as values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.api.types import CheckpointRef


@dataclass(frozen=True)
class NodeState:
    ready: bool
    not_ready_since: datetime | None = None


@dataclass(frozen=True)
class Observations:
    nodes: Mapping[str, NodeState] = field(default_factory=dict)
    # node name -> description, from the Ascend device plugin's mindx-dl-deviceinfo-<node> ConfigMaps
    device_faults: Mapping[str, str] = field(default_factory=dict)
    # From the checkpoint observer; None when the controller does not mount the shared volume.
    progress_tracked: bool = False  # without it, a hang cannot be told from a quiet healthy job
    checkpoint: CheckpointRef | None = None
    last_progress: datetime | None = None
    last_step: int | None = None


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    # Sub-second precision: backoffs of zero or a few seconds must not round to the wrong side.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
