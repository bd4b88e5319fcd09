"""One reconcile pass for one job key: read caches, decide, apply, write status once, emit events.

The pass is level-triggered: it never looks at which event woke it. Two guards make cached reads
safe: expectations (after creating pods, wait until the pod cache shows them before deciding
again, as client-go's ReplicaSet controller does) and a status overlay (after a status write,
use the returned object until the job cache catches up). Both only avoid wasted passes; the
resourceVersion on the status write is what prevents a stale decision from being applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.adapters.checkpoint_observer import CheckpointObserver
from controller.adapters.kubewriter import KubeWriter
from controller.adapters.metrics import Metrics
from controller.api.constants import Condition, Phase, Reason
from controller.api.types import InvalidSpec, TrainingJob, parse_job, parse_status, status_to_dict
from controller.core.decide import decide, set_condition
from controller.core.devicefaults import faults_by_node
from controller.core.observations import NodeState, Observations, parse_time
from controller.core.plan import Plan
from controller.runtime.informer import Informer

log = logging.getLogger(__name__)
EXPECTATION_TIMEOUT = 30.0
POD_BY_JOB = "job"
POD_BY_NODE = "node"


@dataclass
class _Expectation:
    names: frozenset[str]
    deadline: float


@dataclass
class Caches:
    jobs: Informer
    pods: Informer
    nodes: Informer
    device_configmaps: Informer | None = None


class Reconciler:
    def __init__(
        self,
        *,
        caches: Caches,
        writer: KubeWriter,
        metrics: Metrics,
        checkpoints: CheckpointObserver | None = None,
        now: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caches = caches
        self._writer = writer
        self._metrics = metrics
        self._checkpoints = checkpoints
        self._now = now
        self._monotonic = monotonic
        self._expectations: dict[str, _Expectation] = {}
        self._overlay: dict[str, tuple[str, dict[str, Any]]] = {}

    def job(self, key: str) -> dict[str, Any] | None:
        cached = self._caches.jobs.get(key)
        written = self._overlay.get(key)
        if cached is None or written is None:
            self._overlay.pop(key, None)
            return cached
        based_on, new = written
        if cached["metadata"].get("resourceVersion") == based_on:
            return new
        del self._overlay[key]
        return cached

    def reconcile(self, key: str) -> float | None:
        """Returns seconds after which to look again without an event, or None."""
        started = time.perf_counter()
        try:
            return self._reconcile(key)
        finally:
            self._metrics.reconcile_duration.observe(time.perf_counter() - started)

    def _reconcile(self, key: str) -> float | None:
        body = self.job(key)
        if body is None:
            self._expectations.pop(key, None)
            if self._checkpoints is not None:
                self._checkpoints.untrack(key)
            return None
        try:
            job = parse_job(body)
        except InvalidSpec as exc:
            self._mark_invalid(body, str(exc))
            return None
        pods = self._caches.pods.by_index(POD_BY_JOB, key)
        if not self._expectations_met(key, pods):
            return 0.2
        self._metrics.seen_namespace(job.namespace)
        if self._checkpoints is not None:
            self._checkpoints.track(key, job.spec.output_dir, job.spec.replicas)
            if not job.status.phase.terminal and _attempt_ending(pods):
                # A trainer commits before it exits, but its last events may still be in the
                # observer's queue: read the disk so the terminal status and the failure's
                # steps lost see that commit.
                self._checkpoints.refresh(key)
        plan = decide(job, pods, self._observe(job, pods), self._now())
        self._apply(job, plan)
        return plan.requeue_after

    def _expectations_met(self, key: str, pods: list[dict[str, Any]]) -> bool:
        expected = self._expectations.get(key)
        if expected is None:
            return True
        seen = {p["metadata"]["name"] for p in pods}
        if expected.names <= seen or self._monotonic() > expected.deadline:
            del self._expectations[key]
            return True
        return False

    def _observe(self, job: TrainingJob, pods: list[dict[str, Any]]) -> Observations:
        nodes: dict[str, NodeState] = {}
        for name in {(p.get("spec") or {}).get("nodeName") for p in pods} - {None, ""}:
            node = self._caches.nodes.get(str(name))
            if node is not None:
                nodes[str(name)] = node_state(node)
        faults: dict[str, str] = {}
        if self._caches.device_configmaps is not None:
            faults = {
                n: d for n, d in faults_by_node(self._caches.device_configmaps.list()).items() if n in nodes
            }
        if self._checkpoints is None:
            return Observations(nodes=nodes, device_faults=faults)
        snap = self._checkpoints.snapshot(job.key)
        return Observations(
            nodes=nodes,
            device_faults=faults,
            progress_tracked=True,
            checkpoint=snap.checkpoint,
            last_progress=snap.last_progress,
            last_step=snap.last_step,
        )

    def _apply(self, job: TrainingJob, plan: Plan) -> None:
        if plan.status is not None and plan.status_first:
            self._write_status(job, status_to_dict(plan.status))
        for deletion in plan.delete_pods:
            self._writer.delete_pod(job.namespace, deletion.name, force=deletion.force)
        if plan.ensure_service is not None:
            self._writer.ensure_service(job.namespace, plan.ensure_service)
        if plan.create_pods:
            self._expectations[job.key] = _Expectation(
                frozenset(p["metadata"]["name"] for p in plan.create_pods),
                self._monotonic() + EXPECTATION_TIMEOUT,
            )
            for pod in plan.create_pods:
                self._writer.create_pod(job.namespace, pod)
        if plan.status is not None and not plan.status_first:
            self._write_status(job, status_to_dict(plan.status))
        for event in plan.events:
            self._writer.emit_event(job.raw, type_=event.type, reason=event.reason, message=event.message)
            log.info(event.message, extra={"job": job.key, "reason": event.reason})
        if plan.restart is not None:
            kind = "counted" if plan.restart.counted else "uncounted"
            self._metrics.restarts.labels(job.namespace, job.name, plan.restart.reason, kind).inc()
            if plan.restart.steps_lost is not None:
                self._metrics.steps_lost.labels(job.namespace).observe(max(0, plan.restart.steps_lost))
        if plan.recovered_after is not None:
            self._metrics.time_to_recover.labels(job.namespace).observe(plan.recovered_after)

    def _write_status(self, job: TrainingJob, status: dict[str, Any]) -> None:
        new = self._writer.write_status(job.raw, status)
        self._overlay[job.key] = (job.resource_version, new)

    def _mark_invalid(self, body: dict[str, Any], message: str) -> None:
        """An unusable spec fails the job once with a clear condition; it is not retried."""
        status = parse_status(body.get("status") or {})
        if status.phase is Phase.FAILED:
            return
        now = self._now()
        conditions = set_condition(
            status.conditions, Condition.FAILED, True, Reason.INVALID_SPEC, message, now
        )
        new = {**(body.get("status") or {}), "phase": Phase.FAILED.value, "conditions": list(conditions)}
        self._writer.write_status(body, new)
        self._writer.emit_event(body, type_="Warning", reason=Reason.INVALID_SPEC, message=message)


def node_state(node: dict[str, Any]) -> NodeState:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            return NodeState(ready, None if ready else parse_time(condition.get("lastTransitionTime")))
    return NodeState(False, None)


def _attempt_ending(pods: list[dict[str, Any]]) -> bool:
    """A pod failed or every pod succeeded. Not one rank done ahead of the others: that can last
    the whole run, and the observer's events serve it."""
    phases = [(p.get("status") or {}).get("phase") for p in pods]
    return "Failed" in phases or (bool(phases) and all(ph == "Succeeded" for ph in phases))
