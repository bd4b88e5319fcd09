"""Device faults in the decisions: which fault on a worker's chips explains its failure, which one
explains an exit recorded before its report came, and when a faulty node may be used again.

The reports are MindCluster's (`controller.core.devicefaults`). A worker holds the chips the
device plugin annotated on its pod; a node fault (no chip) touches every chip, and a pod without
the annotation counts as holding the whole node. Only restart- and separate-class faults count.

- **An exit** (a non-zero exit code) is the fault's when a fault on the worker's chips has a time
  within `deviceFaultWindowSeconds` of the container's `finishedAt`, before or after it, plus
  CLOCK_SKEW. MindCluster's health check reports a fault seconds after it happens, so the process
  usually dies first; the conversion (`restart.reattribute`) handles a report that comes after the
  restart was recorded. The fault's own time is compared (the plugin's clock is the node's, as the
  kubelet's `finishedAt` is); for a plugin that writes none, the document's UpdateTime stands in.
- **A running worker** is interrupted by a separate-class fault on its chips, and by a
  restart-class fault whose own time is after the worker started: an entry that persists from
  before (the fault the last attempt was restarted for) must not restart every new attempt, and
  an entry without a time of its own (a chip being reset, plugins before 6.0.0) cannot be told
  from one.
- **faultyNodes** hold when each node was added (`faultyNodesSince`; a node recorded without a time,
  by an older controller, is timed from the first pass that sees it). A node is forgotten when its
  report, written after the node was added, has no restart- or separate-class fault; or after
  `faultyNodeTTLSeconds` (0: never), unless its report still separates a chip. A node without a
  report is unknown and kept until the TTL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from controller.api.types import FailureRecord, JobStatus
from controller.core.context import Context
from controller.core.devicefaults import Fault, FaultClass, NodeReport, chips_of_pod
from controller.core.pods import Pod, node_of
from controller.core.timefmt import format_time, parse_time

# Added to the window on both sides: finishedAt and the fault time come from the same node's clock,
# but a worker whose finishedAt is missing stands in with the controller's.
CLOCK_SKEW = timedelta(seconds=5)
_ACTING = (FaultClass.RESTART, FaultClass.SEPARATE)
_NEVER = datetime.min.replace(tzinfo=UTC)


def on_chips(report: NodeReport, chips: Iterable[str] | None) -> list[Fault]:
    """The restart- and separate-class faults that touch `chips` (None: the whole node)."""
    held = None if chips is None else {*chips, ""}
    return [f for f in report.faults if f.action in _ACTING and (held is None or f.chip in held)]


def near_exit(
    report: NodeReport | None, chips: Iterable[str] | None, exited: datetime, window: float
) -> Fault | None:
    """The fault that explains an exit at `exited`: on `chips`, its time within the window before
    or after; the most severe, then the nearest. None when the window is 0 (attribution off)."""
    if report is None or window <= 0:
        return None
    limit = timedelta(seconds=window) + CLOCK_SKEW
    found = [
        (f, abs(when - exited))
        for f in on_chips(report, chips)
        if (when := f.time or report.reported_at) is not None and abs(when - exited) <= limit
    ]
    best = min(found, key=lambda pair: (-pair[0].action.severity, pair[1]), default=None)
    return best[0] if best is not None else None


def interrupting(report: NodeReport, chips: Iterable[str] | None, started: datetime | None) -> Fault | None:
    """The fault that stops a worker running since `started` (None: unknown, any time counts):
    separate class whenever it happened, restart class only with a time of its own after `started`."""
    found = [
        f
        for f in on_chips(report, chips)
        if f.action is FaultClass.SEPARATE or (f.time is not None and (started is None or f.time > started))
    ]
    return max(found, key=lambda f: (f.action.severity, f.time or _NEVER), default=None)


def started(pod: Pod) -> datetime | None:
    """When the kubelet started the pod (the node's clock, as the plugin's), else its creation."""
    status, meta = pod.get("status") or {}, pod.get("metadata") or {}
    return parse_time(status.get("startTime")) or parse_time(meta.get("creationTimestamp"))


def exit_fault(pod: Pod, ctx: Context, exited: datetime) -> Fault | None:
    report = ctx.obs.device_reports.get(node_of(pod))
    return near_exit(report, chips_of_pod(pod), exited, ctx.policy.device_fault_window)


def running_fault(pod: Pod, report: NodeReport) -> Fault | None:
    return interrupting(report, chips_of_pod(pod), started(pod))


def late_fault(ctx: Context, record: FailureRecord) -> Fault | None:
    """The fault that explains a failure already recorded: on its node and chips, near its time."""
    exited = parse_time(record.time)
    if not record.node or exited is None:
        return None
    report = ctx.obs.device_reports.get(record.node)
    return near_exit(report, record.chips, exited, ctx.policy.device_fault_window)


def explain(node: str | None, fault: Fault, exited: datetime | None = None, exit_message: str = "") -> str:
    text = f"device fault on {node or 'the node'}: {fault.describe()}"
    if fault.time is not None:
        text += f" at {format_time(fault.time)}"
        if exited is not None:
            offset = (fault.time - exited).total_seconds()
            text += f", {abs(offset):.0f}s {'after' if offset >= 0 else 'before'} the exit"
    return f"{text} ({exit_message})" if exit_message else text


def avoid(status: JobStatus, node: str, now: datetime, limit: int) -> JobStatus:
    """`node` added to faultyNodes, timed `now`; the newest `limit` nodes are kept."""
    if node in status.faulty_nodes:
        return status
    nodes = (*status.faulty_nodes, node)[-limit:]
    since = {**status.faulty_nodes_since, node: format_time(now)}
    return dataclasses.replace(
        status, faulty_nodes=nodes, faulty_nodes_since={n: since[n] for n in nodes if n in since}
    )


def forget(ctx: Context, status: JobStatus) -> JobStatus:
    """faultyNodes without the nodes that may be used again, every one timed."""
    if status.phase.terminal or not (status.faulty_nodes or status.faulty_nodes_since):
        return status
    since: dict[str, str] = {}
    for node in status.faulty_nodes:
        recorded = status.faulty_nodes_since.get(node, "")
        since[node] = recorded if parse_time(recorded) is not None else format_time(ctx.now)
    kept = tuple(n for n in status.faulty_nodes if not _usable(ctx, n, parse_time(since[n]) or ctx.now))
    return dataclasses.replace(status, faulty_nodes=kept, faulty_nodes_since={n: since[n] for n in kept})


def _usable(ctx: Context, node: str, added: datetime) -> bool:
    report = ctx.obs.device_reports.get(node)
    said_at = report.reported_at if report is not None and report.action is None else None
    if said_at is not None and said_at > added:
        return True  # healthy again, said after the node was added
    ttl = ctx.policy.faulty_node_ttl
    separating = report is not None and bool(report.chips(FaultClass.SEPARATE))
    return ttl > 0 and (ctx.now - added).total_seconds() >= ttl and not separating
