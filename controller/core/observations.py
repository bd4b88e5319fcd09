"""What the controller knows besides the job and its pods, handed to the pure decision as values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.api.types import CheckpointRef
from controller.core.devicefaults import NodeReport
from controller.core.timefmt import parse_time


@dataclass(frozen=True)
class NodeState:
    ready: bool
    not_ready_since: datetime | None = None


@dataclass(frozen=True)
class Observations:
    nodes: Mapping[str, NodeState] = field(default_factory=dict)
    # node name -> what the Ascend device plugin's mindx-dl-deviceinfo-<node> ConfigMap says, for the
    # nodes of the job's pods, its faultyNodes and its last failure; a node without a readable
    # ConfigMap is absent (unknown)
    device_reports: Mapping[str, NodeReport] = field(default_factory=dict)
    # Pods of the job deleted in the last minutes, as last seen: read only for their trainers'
    # reports (a stopping rank's final commit may come moments before its pod is gone).
    departed: Sequence[Mapping[str, Any]] = ()
    # The jobs of the job's namespace, itself included: (seconds they have run, failures): an MTBF
    # for a job that has not failed yet (core/policy/interval.py).
    namespace_failures: tuple[float, int] = (0.0, 0)
    # From the checkpoint observer; None when the controller does not mount the shared volume.
    progress_tracked: bool = False  # without it, a hang cannot be told from a quiet healthy job
    checkpoint: CheckpointRef | None = None
    last_progress: datetime | None = None
    last_step: int | None = None


def node_state(node: Mapping[str, Any]) -> NodeState:
    """Readiness of a raw Node body; a node without a Ready condition is not ready."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            return NodeState(ready, None if ready else parse_time(condition.get("lastTransitionTime")))
    return NodeState(False, None)
