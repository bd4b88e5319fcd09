"""Prometheus metrics of the controller. Everything is registered on a registry passed in, so
tests and the process each get their own; values that age (checkpoint age, jobs by phase, queue
depth) are computed at scrape time from the controller's state, never from a timer.

Per-job series live as long as the job: the state gauges come from the informer's cache, and the
restart counter's children are created at 0 when the job is first reconciled (so `increase()`
sees its first restart: a series born at 1 has no earlier sample to increase from) and removed
when it is deleted."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.api.constants import Phase, Reason
from controller.api.store import StoreStatus
from controller.version import VERSION
from respawn_protocol.crd import RECOVERY_PHASES as PHASES

RECOVERY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
STEPS_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
# The reasons a restart can carry: a job's counter children exist at 0 for each from its first
# reconcile. An invalid spec or a spent budget fails the job and never restarts it.
RESTART_REASONS = tuple(r.value for r in Reason if r not in (Reason.INVALID_SPEC, Reason.BUDGET_EXCEEDED))
RESTART_CLASSES = ("counted", "uncounted")


@dataclass(frozen=True)
class JobSample:
    namespace: str
    name: str
    phase: str
    checkpoint_step: int | None
    checkpoint_time: float | None  # unix seconds
    restarts: int = 0
    uncounted_restarts: int = 0
    suggested_interval: float | None = None  # status.checkpointInterval.seconds
    budget_used: int = 0  # status.budgetUsed: counted restarts since the job last made progress
    max_restarts: int | None = None  # spec.failurePolicy.maxRestarts
    store: StoreStatus | None = None  # status.checkpointStore


class _StateCollector(Collector):
    def __init__(
        self,
        jobs: Callable[[], Iterable[JobSample]],
        queue_depth: Callable[[], int],
        leading: Callable[[], bool],
    ) -> None:
        self._jobs = jobs
        self._queue_depth = queue_depth
        self._leading = leading

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from _job_families(list(self._jobs()), time.time())
        depth = GaugeMetricFamily("respawn_workqueue_depth", "Job keys waiting to be reconciled.")
        depth.add_metric([], self._queue_depth())
        # A follower's queue fills from its informers and never drains; dashboards filter on this.
        leader = GaugeMetricFamily("respawn_leader", "1 on the replica that reconciles, 0 on followers.")
        leader.add_metric([], 1.0 if self._leading() else 0.0)
        yield from (depth, leader)


def _per_job(name: str, documentation: str, *extra: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["namespace", "trainingjob", *extra])


# (key, name, help, labels after namespace and trainingjob) of the gauges every job has.
_PER_JOB = (
    # kube-state-metrics style: every phase of every job, 1 for the current one, so an alert on
    # phase="Failed" == 1 resolves when the job leaves that phase instead of going stale.
    ("phase", "respawn_job_phase", "The job's phase: 1 for the current one, 0 for the others.", ("phase",)),
    (
        "age",
        "respawn_checkpoint_age_seconds",
        "Seconds since the job's last checkpoint that is complete on every rank.",
        (),
    ),
    (
        "step",
        "respawn_last_complete_checkpoint_step",
        "Global step of the job's last checkpoint that is complete on every rank.",
        (),
    ),
    # From the job's status, so it exists at 0 from the job's first reconcile (the dashboard's
    # namespace list and per-job panels need no restart to have happened) and survives a
    # controller restart, unlike the process-local respawn_restarts_total.
    (
        "restarts",
        "respawn_job_restarts",
        "Restarts of the job so far, from its status; class = counted / uncounted.",
        ("class",),
    ),
    (
        "budget_used",
        "respawn_job_restart_budget_used",
        "Counted restarts since the job last made progress (status.budgetUsed); it fails past the limit.",
        (),
    ),
    (
        "budget",
        "respawn_job_restart_budget",
        "The job's restart budget (spec.failurePolicy.maxRestarts).",
        (),
    ),
    (
        "interval",
        "respawn_checkpoint_interval_suggested_seconds",
        "The checkpoint interval the job's failures and save cost suggest: sqrt(2 x save cost x MTBF).",
        (),
    ),
    # spec.checkpointStore: the current attempt's uploads, worst rank (status.checkpointStore).
    (
        "store_step",
        "respawn_checkpoint_store_step",
        "Newest step every rank has in the checkpoint store.",
        (),
    ),
    (
        "upload_pending",
        "respawn_checkpoint_upload_pending",
        "Local commits a rank has not uploaded yet (most).",
        (),
    ),
    (
        "upload_lag",
        "respawn_checkpoint_upload_lag_seconds",
        "How long the oldest commit not uploaded yet has waited (longest of the ranks).",
        (),
    ),
    (
        "upload_failures",
        "respawn_checkpoint_upload_failures",
        "Failed upload tries in a row since the last upload that succeeded (most of the ranks).",
        (),
    ),
)


def _job_families(jobs: list[JobSample], now: float) -> list[GaugeMetricFamily]:
    families = {key: _per_job(name, doc, *extra) for key, name, doc, extra in _PER_JOB}
    counts = {p.value: 0 for p in Phase}
    for job in jobs:
        counts[job.phase] = counts.get(job.phase, 0) + 1
        _add_job(families, job, list(counts), now)
    phases = GaugeMetricFamily("respawn_jobs", "TrainingJobs by phase.", labels=["phase"])
    for phase, count in counts.items():
        phases.add_metric([phase], count)
    return [phases, *families.values()]


def _add_job(families: dict[str, GaugeMetricFamily], job: JobSample, phases: list[str], now: float) -> None:
    key = [job.namespace, job.name]
    for phase in phases:
        families["phase"].add_metric([*key, phase], 1.0 if phase == job.phase else 0.0)
    families["restarts"].add_metric([*key, "counted"], job.restarts)
    families["restarts"].add_metric([*key, "uncounted"], job.uncounted_restarts)
    families["budget_used"].add_metric(key, job.budget_used)
    if job.max_restarts is not None:
        families["budget"].add_metric(key, job.max_restarts)
    if job.checkpoint_time is not None and not Phase(job.phase).terminal:
        families["age"].add_metric(key, max(0.0, now - job.checkpoint_time))
    if job.checkpoint_step is not None:
        families["step"].add_metric(key, job.checkpoint_step)
    if job.suggested_interval is not None:
        families["interval"].add_metric(key, job.suggested_interval)
    if (store := job.store) is not None:
        if store.step is not None:
            families["store_step"].add_metric(key, store.step)
        families["upload_pending"].add_metric(key, store.pending)
        families["upload_lag"].add_metric(key, store.lag_seconds)
        families["upload_failures"].add_metric(key, store.failures)


class _RequestsCollector(Collector):
    """API requests by kind: informer LISTs and WATCHes, and the writer's calls. A LIST per
    reconcile would show here as lists growing with reconciles instead of staying flat."""

    def __init__(self, requests: Callable[[], dict[str, int]]) -> None:
        self._requests = requests

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "respawn_api_requests", "API requests made by the controller.", labels=["kind"]
        )
        for kind, count in sorted(self._requests().items()):
            family.add_metric([kind], count)
        yield family


def _recovery_histograms(registry: CollectorRegistry) -> tuple[Histogram, Histogram]:
    total = Histogram(
        "respawn_recovery_seconds",
        "From a failure to the first step the next attempt finished (status.lastRecovery).",
        ["namespace"],
        buckets=RECOVERY_BUCKETS,
        registry=registry,
    )
    phases = Histogram(
        "respawn_recovery_phase_seconds",
        "Each phase of a recovery: detect, teardown, podStart, processStart, import, rendezvous, "
        "load, compile, firstStep (which includes compile).",
        ["namespace", "phase"],
        buckets=PHASE_BUCKETS,
        registry=registry,
    )
    return total, phases


class _RestartsCollector(Collector):
    """respawn_restarts_total: every reason and class of every job, from a job's first reconcile.

    A client-library Counter child per series cost about 94 MiB at 5,000 jobs (26 series each,
    every one an object with its own lock); here a job is one small dict of the counts that are not
    zero, and the zeros are written at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], dict[tuple[str, str], int]] = {}

    def seen(self, namespace: str, job: str) -> None:
        with self._lock:
            self._counts.setdefault((namespace, job), {})

    def inc(self, namespace: str, job: str, reason: str, kind: str) -> None:
        with self._lock:
            counts = self._counts.setdefault((namespace, job), {})
            counts[(reason, kind)] = counts.get((reason, kind), 0) + 1

    def forget(self, namespace: str, job: str) -> None:
        with self._lock:
            self._counts.pop((namespace, job), None)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "respawn_restarts",
            "Whole-job restarts, by failure reason and whether they used the restart budget.",
            labels=["namespace", "trainingjob", "reason", "class"],
        )
        with self._lock:
            jobs = [(key, dict(counts)) for key, counts in self._counts.items()]
        for (namespace, job), counts in jobs:
            # A reason recorded that is not among RESTART_REASONS is still exported.
            labels = dict.fromkeys((r, k) for r in RESTART_REASONS for k in RESTART_CLASSES) | counts
            for reason, kind in labels:
                family.add_metric([namespace, job, reason, kind], counts.get((reason, kind), 0))
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._namespaces: set[str] = set()
        self._restarts = _RestartsCollector()
        registry.register(self._restarts)
        self.time_to_recover = Histogram(
            "respawn_time_to_recover_seconds",
            "From a failure seen to every worker of the next attempt running.",
            ["namespace"],
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        )
        self.recovery, self.recovery_phase = _recovery_histograms(registry)
        self.steps_lost = Histogram(
            "respawn_steps_lost",
            "Training steps redone after a failure: last step seen minus the resumed checkpoint step.",
            ["namespace"],
            buckets=STEPS_BUCKETS,
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "respawn_reconcile_duration_seconds", "Duration of one reconcile pass.", registry=registry
        )
        self.reconcile_errors = Counter(
            "respawn_reconcile_errors",
            "Reconcile passes that failed and were retried.",
            ["kind"],
            registry=registry,
        )
        # Exported at 0 from the start: a series that appears at 1 hides its first increase from
        # rate()/increase(), and a dashboard panel would show no data until the first error.
        for kind in ("conflict", "error"):
            self.reconcile_errors.labels(kind)
        _process_metrics(registry)

    def record_restart(self, namespace: str, job: str, reason: str, counted: bool) -> None:
        self._restarts.inc(namespace, job, reason, "counted" if counted else "uncounted")

    def seen_job(self, namespace: str, job: str) -> None:
        """Create the job's restart counters at zero, and its namespace's histograms."""
        self.seen_namespace(namespace)
        self._restarts.seen(namespace, job)

    def record_recovery(self, namespace: str, phases: dict[str, float], total: float) -> None:
        self.recovery.labels(namespace).observe(total)
        for phase, seconds in phases.items():
            if phase in PHASES:  # the label set stays bounded whatever a trainer reports
                self.recovery_phase.labels(namespace, phase).observe(seconds)

    def forget_job(self, namespace: str, job: str) -> None:
        """The job is gone: drop its series, so the exposition does not grow with every job ever
        run (the per-namespace histograms stay)."""
        self._restarts.forget(namespace, job)

    def seen_namespace(self, namespace: str) -> None:
        """Create the namespace's histogram series at zero: a series born at its first sample hides
        that sample from increase() and rate()."""
        if namespace not in self._namespaces:
            self._namespaces.add(namespace)
            self.time_to_recover.labels(namespace)
            self.recovery.labels(namespace)
            for phase in PHASES:
                self.recovery_phase.labels(namespace, phase)
            self.steps_lost.labels(namespace)

    def watch_state(
        self,
        jobs: Callable[[], Iterable[JobSample]],
        queue_depth: Callable[[], int],
        requests: Callable[[], dict[str, int]],
        leading: Callable[[], bool],
    ) -> None:
        self.registry.register(_StateCollector(jobs, queue_depth, leading))
        self.registry.register(_RequestsCollector(requests))


def _process_metrics(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, open files), python_info and respawn_build_info: which version runs,
    and whether it leaks, without a sidecar."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    build = Info("respawn_build", "The running controller's version.", registry=registry)
    build.info({"version": VERSION, "python_version": platform.python_version()})
