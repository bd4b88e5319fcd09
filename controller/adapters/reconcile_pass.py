"""One reconcile pass for one job key: read caches, ask the core, carry out its plan in order.

The pass is level-triggered: it never looks at which event woke it. Two guards make cached reads
safe: expectations (after creating pods, wait until the pod cache shows them before deciding
again, as client-go's ReplicaSet controller does) and a status overlay (after a status write,
use the returned object until the job cache catches up). Both only avoid wasted passes; the
resourceVersion on the status write is what prevents a stale decision from being applied.
Nothing here decides: the plan's steps are applied as they come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.adapters.checkpoint_observer import CheckpointObserver
from controller.adapters.kubewriter import ForeignObject, KubeWriter, api_message
from controller.adapters.metrics import Metrics
from controller.api.constants import Phase
from controller.api.types import InvalidSpec, TrainingJob, parse_job, status_to_dict
from controller.core.decide import decide, decide_error, decide_invalid
from controller.core.devicefaults import CONFIGMAP_NAMESPACE, CONFIGMAP_PREFIX, NodeReport, node_report
from controller.core.observations import NodeState, Observations, node_state
from controller.core.plan import (
    AnnotatePod,
    CreatePods,
    DeleteJob,
    DeletePod,
    EmitEvent,
    EnsurePodGroup,
    EnsureReportAccess,
    EnsureService,
    Plan,
    RecordRecovery,
    RecordRecoveryPhases,
    RecordRestart,
    WriteStatus,
)
from controller.core.policy.success import attempt_ending
from controller.core.timefmt import parse_time
from controller.runtime.informer import Informer
from controller.runtime.informer_group import InformerGroup

log = logging.getLogger(__name__)
EXPECTATION_TIMEOUT = 30.0
# A deleted pod's last state is kept this long for its trainers' reports: a stopping rank reports
# its final commit moments before its pod is gone, and a pass may first run after that.
DEPARTED_SECONDS = 120.0
DEPARTED_PER_JOB = 256
BATCH_MAX = 64  # pods created at once, at most (and bodies built and held at once)
CREATE_THREADS = 16  # requests in flight for one batch (shared by the workers)
POD_BY_JOB = "job"
POD_BY_NODE = "node"
JOB_BY_NAMESPACE = "namespace"
NAMESPACE_MTBF_SECONDS = 60.0


class CreateRefused(Exception):
    """The API server refused to create a pod of the gang (quota, admission, validation)."""


@dataclass
class _Expectation:
    names: frozenset[str]
    deadline: float


@dataclass
class Caches:
    jobs: Informer | InformerGroup  # a group: one informer per watched namespace
    pods: Informer | InformerGroup
    nodes: Informer
    device_configmaps: Informer | None = None


@dataclass(frozen=True)
class _Target:
    """The job a plan is applied to, as the API knows it (a parsed job or, for an invalid spec, the body)."""

    body: dict[str, Any]

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace", ""))

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ReconcilePass:
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
        self._departed: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._namespace_mtbf: dict[str, tuple[float, tuple[float, int]]] = {}  # ns -> (when, value)
        self._overlay: dict[str, tuple[str, dict[str, Any]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=CREATE_THREADS, thread_name_prefix="create")

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

    def departed(self, key: str, pod: dict[str, Any]) -> None:
        """A pod of job `key` left the cache (the informer's final state of it)."""
        kept = [p for p in self._departed.get(key, []) if self._monotonic() - p[0] < DEPARTED_SECONDS]
        self._departed[key] = [*kept, (self._monotonic(), pod)][-DEPARTED_PER_JOB:]

    def _recently_departed(self, key: str) -> tuple[dict[str, Any], ...]:
        kept = [p for p in self._departed.get(key, []) if self._monotonic() - p[0] < DEPARTED_SECONDS]
        if kept:
            self._departed[key] = kept
        else:
            self._departed.pop(key, None)
        return tuple(pod for _, pod in kept)

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
            namespace, _, name = key.rpartition("/")
            self._metrics.forget_job(namespace, name)
            self._expectations.pop(key, None)
            self._departed.pop(key, None)
            if self._checkpoints is not None:
                self._checkpoints.untrack(key)
            return None
        try:
            job = parse_job(body)
        except InvalidSpec as exc:
            self._apply(_Target(body), decide_invalid(body.get("status") or {}, str(exc), self._now()))
            return None
        pods = self._caches.pods.by_index(POD_BY_JOB, key)
        if not self._expectations_met(key, pods):
            return 0.2
        self._metrics.seen_job(job.namespace, job.name)
        if self._checkpoints is not None:
            self._checkpoints.track(key, job.spec.output_dir, job.spec.world_size)
            if not job.status.phase.terminal and attempt_ending(pods):
                # A trainer commits before it exits, but its last events may still be in the
                # observer's queue: ask for a fresh read so the terminal status and the failure's
                # steps lost see that commit. The observer's thread reads; this waits a bounded
                # time (none while the filesystem is stuck) and a late answer requeues the job.
                self._checkpoints.refresh(key)
        plan = decide(job, pods, self._observe(job, pods), self._now())
        self._apply(_Target(job.raw), plan)
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
        reports: dict[str, NodeReport] = {}
        if (configmaps := self._caches.device_configmaps) is not None:
            # The pods' nodes, the nodes the job avoids, and its last failure's (a late report).
            wanted = {str((p.get("spec") or {}).get("nodeName") or "") for p in pods}
            last = job.status.last_failure
            wanted |= {*job.status.faulty_nodes, (last.node if last is not None else None) or ""}
            for name in sorted(wanted - {""}):
                configmap = configmaps.get(f"{CONFIGMAP_NAMESPACE}/{CONFIGMAP_PREFIX}{name}")
                if configmap is not None and (report := node_report(configmap)) is not None:
                    reports[name] = report
        departed = self._recently_departed(job.key)
        failures = self._namespace_failures(job)
        if self._checkpoints is None:
            return Observations(
                nodes=nodes, device_reports=reports, departed=departed, namespace_failures=failures
            )
        snap = self._checkpoints.snapshot(job.key)
        return Observations(
            nodes=nodes,
            device_reports=reports,
            departed=departed,
            namespace_failures=failures,
            progress_tracked=True,
            checkpoint=snap.checkpoint,
            last_progress=snap.last_progress,
            last_step=snap.last_step,
        )

    def _namespace_failures(self, job: TrainingJob) -> tuple[float, int]:
        """The namespace's jobs, this one included: (seconds they have run, their failures), for the
        MTBF of a running job that has not failed yet (core/policy/interval.py); read only then."""
        s = job.status
        if s.phase is not Phase.RUNNING or s.restarts + s.uncounted_restarts:
            return (0.0, 0)
        # A walk over the namespace's jobs, at most once a minute per namespace: every report
        # reconciles its job, and a namespace may hold thousands.
        cached = self._namespace_mtbf.get(job.namespace)
        if cached is not None and self._monotonic() - cached[0] < NAMESPACE_MTBF_SECONDS:
            return cached[1]
        now, ran, failures = self._now(), 0.0, 0
        for body in self._caches.jobs.by_index(JOB_BY_NAMESPACE, job.namespace):
            other = body.get("status") or {}
            started = parse_time(other.get("startTime"))
            ended = parse_time(other.get("completionTime")) or now
            if started is None:
                continue
            ran += max(0.0, (ended - started).total_seconds())
            failures += int(other.get("restarts") or 0) + int(other.get("uncountedRestarts") or 0)
        self._namespace_mtbf[job.namespace] = (self._monotonic(), (ran, failures))
        return (ran, failures)

    def report(self, key: str, exc: Exception) -> None:
        """Say on the job why its last pass failed (condition and Warning event); best effort, the
        caller retries the pass with backoff either way."""
        body = self.job(key)
        if body is None or (isinstance(exc, ForeignObject) and exc.leftover):
            return  # a deleted namesake's objects on their way out: wait for them, nothing is wrong
        reason, message = _describe(exc)
        try:
            self._apply(_Target(body), decide_error(body.get("status") or {}, reason, message, self._now()))
        except Exception as failed:  # the API may be what failed: never mask the original error
            log.warning("could not report a reconcile error", extra={"job": key, "error": str(failed)})

    def _create_gang(self, job: _Target, step: CreatePods) -> None:
        """Create every pod of the gang, or none: a partial gang cannot rendezvous, so the pods
        made before a refusal (quota, admission, a name held by a foreign object) are removed.

        In growing batches, as Kubernetes' Job controller does (1, 2, 4, ... up to BATCH_MAX, the
        pods of a batch in parallel): a gang the API refuses costs one request, not thousands, and
        only one batch of bodies is ever built and held. Of what was made only names and uids are
        kept."""
        made: list[tuple[str, str | None]] = []
        try:
            for batch in slow_start(step.indices, BATCH_MAX):
                made += self._create_batch(job, [step.body(i) for i in batch])
        except Exception:
            for name, uid in made:
                self._writer.delete_pod(job.namespace, name, uid=uid)
            raise
        names = frozenset(name for name, _ in made)
        self._expectations[job.key] = _Expectation(names, self._monotonic() + EXPECTATION_TIMEOUT)

    def _create_batch(self, job: _Target, bodies: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        """Send one batch at once and return what was made. On a refusal, once every request of
        the batch has answered, the batch's own pods are removed and the first refusal raised."""
        futures = [self._pool.submit(self._writer.create_pod, job.namespace, body) for body in bodies]
        made: list[tuple[str, str | None]] = []
        failed: tuple[str, BaseException] | None = None
        for body, future in zip(bodies, futures, strict=True):
            try:
                meta = future.result()["metadata"]
                made.append((meta["name"], meta.get("uid")))
            except Exception as exc:
                failed = failed or (body["metadata"]["name"], exc)
        if failed is None:
            return made
        for name, uid in made:
            self._writer.delete_pod(job.namespace, name, uid=uid)
        name, refusal = failed
        if isinstance(refusal, ApiException):
            raise CreateRefused(f"pod {job.namespace}/{name}: {api_message(refusal)}") from refusal
        raise refusal

    def _apply(self, job: _Target, plan: Plan) -> None:
        for step in plan.steps:
            match step:
                case WriteStatus(status):
                    new = self._writer.write_status(job.body, status_to_dict(status))
                    self._overlay[job.key] = (job.body["metadata"].get("resourceVersion", ""), new)
                case DeletePod(name, uid, force):
                    self._writer.delete_pod(job.namespace, name, uid=uid, force=force)
                case AnnotatePod(name, uid, key, value):
                    self._writer.annotate_pod(job.namespace, name, uid=uid, key=key, value=value)
                case DeleteJob(uid):
                    self._writer.delete_job(job.namespace, job.body["metadata"]["name"], uid=uid)
                    log.info("deleted: finished, ttlSecondsAfterFinished passed", extra={"job": job.key})
                case EnsureService(body):
                    self._writer.ensure_service(job.namespace, body)
                case EnsureReportAccess(objects):
                    for body in objects:
                        self._writer.ensure_owned(job.namespace, body)
                case EnsurePodGroup(body):
                    self._writer.ensure_owned(job.namespace, body)
                case CreatePods():
                    self._create_gang(job, step)
                case EmitEvent(type_, reason, message):
                    self._writer.emit_event(job.body, type_=type_, reason=reason, message=message)
                    log.info(message, extra={"job": job.key, "reason": reason})
                case RecordRestart(reason, counted, steps_lost):
                    self._metrics.record_restart(job.namespace, job.name, reason, counted)
                    if steps_lost is not None:
                        self._metrics.steps_lost.labels(job.namespace).observe(max(0, steps_lost))
                case RecordRecovery(seconds):
                    self._metrics.time_to_recover.labels(job.namespace).observe(seconds)
                case RecordRecoveryPhases(phases, total):
                    self._metrics.record_recovery(job.namespace, phases, total)


def _describe(exc: Exception) -> tuple[str, str]:
    """(event and condition reason, message) for a failed pass, in the API server's words."""
    if isinstance(exc, ForeignObject):
        return "ForeignObject", str(exc)
    if isinstance(exc, CreateRefused):
        return "FailedCreate", str(exc)
    if isinstance(exc, ApiException):
        return "APIError", api_message(exc)
    return "InternalError", f"{type(exc).__name__}: {exc}"


def slow_start(items: Sequence[int], cap: int) -> Iterator[Sequence[int]]:
    """`items` in batches of 1, 2, 4, ... up to `cap`."""
    size, start = 1, 0
    while start < len(items):
        yield items[start : start + size]
        start, size = start + size, min(size * 2, cap)
