"""Wires the controller: informers feed a work queue, workers run the reconciler, and only the
replica holding the Lease runs workers. `Controller.run()` blocks until stopped or until
leadership is lost (then the process exits and Kubernetes restarts it as a follower)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client import CollectorRegistry

from controller.adapters.checkpoint_observer import CheckpointObserver
from controller.adapters.kubewriter import Conflict, ForeignObject, KubeWriter
from controller.adapters.metrics import JobSample, Metrics
from controller.adapters.reconcile_pass import (
    JOB_BY_NAMESPACE,
    POD_BY_JOB,
    POD_BY_NODE,
    Caches,
    CreateRefused,
    ReconcilePass,
)
from controller.api.types import parse_status
from controller.core.devicefaults import CONFIGMAP_NAMESPACE, CONFIGMAP_PREFIX
from controller.core.observations import node_state
from controller.core.pods import slim as slim_pod
from controller.core.timefmt import parse_time
from controller.runtime.api_responses import count_responses
from controller.runtime.health import HealthServer, informer_checks
from controller.runtime.informer import Informer
from controller.runtime.informer_group import InformerGroup
from controller.runtime.leader import LeaderElector
from controller.runtime.metrics_auth import KubeReviewer, MetricsAuth
from controller.runtime.store import index_by_field, index_by_label, object_key
from controller.runtime.tls import ReloadingContext
from controller.runtime.workqueue import WorkQueue
from respawn_protocol.crd import GROUP, LABEL_JOB, LABEL_MANAGED_BY, MANAGED_BY, PLURAL, VERSION

log = logging.getLogger(__name__)
# Jobs by the nodes their status names (last failure, faultyNodes): a device report may concern them.
JOB_BY_LEFT_NODE = "left-node"


@dataclass(frozen=True)
class Settings:
    namespace: str | None = None  # watch these namespaces (comma-separated); None = all
    workers: int = 2
    health_port: int = 8081
    health_host: str = "0.0.0.0"
    leader_election: bool = True
    lease_namespace: str = "default"
    lease_name: str = "respawn-controller"
    identity: str | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    shared_root: Path | None = None  # read-only mount of the shared volume, for checkpoint awareness
    checkpoint_poll_interval: float | None = None
    device_faults: bool = True
    # /metrics only for a bearer token allowed `get` on the URL (TokenReview + SubjectAccessReview).
    metrics_auth: bool = True
    # HTTPS on the health/metrics port (a bearer token must not cross the network in clear text).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


def _tls(settings: Settings) -> ReloadingContext | None:
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    return ReloadingContext(cert, key) if cert is not None and key is not None else None


class Controller:
    def __init__(
        self, api: client.ApiClient, settings: Settings, *, registry: CollectorRegistry | None = None
    ):
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.registry.register(count_responses(api))
        self.queue: WorkQueue[str] = WorkQueue()
        self.stopped = threading.Event()
        self.lost_leadership = False
        self.caches = self._informers(api, settings)
        self.checkpoints = (
            CheckpointObserver(
                settings.shared_root,
                on_change=self.queue.add,
                polling_interval=settings.checkpoint_poll_interval,
            )
            if settings.shared_root is not None
            else None
        )
        self.writer = KubeWriter(api)
        self.reconciler = ReconcilePass(
            caches=self.caches,
            writer=self.writer,
            metrics=self.metrics,
            checkpoints=self.checkpoints,
            now=lambda: datetime.now(UTC),
        )
        self.health = HealthServer(
            host=settings.health_host,
            port=settings.health_port,
            registry=self.registry,
            metrics_auth=MetricsAuth(KubeReviewer(api)) if settings.metrics_auth else None,
            tls=_tls(settings),
        )
        if not settings.metrics_auth:
            log.warning("/metrics is served without authentication", extra={"host": settings.health_host})
        self.elector = self._elector(api, settings) if settings.leader_election else None
        self.metrics.watch_state(
            self._job_samples,
            lambda: len(self.queue),
            self._requests,
            lambda: self.elector is None or self.elector.is_leader(),
        )
        self._workers: list[threading.Thread] = []

    # -- wiring ------------------------------------------------------------------------------

    def _elector(self, api: client.ApiClient, settings: Settings) -> LeaderElector:
        return LeaderElector(
            api,
            namespace=settings.lease_namespace,
            name=settings.lease_name,
            identity=settings.identity,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
            on_started_leading=self._start_workers,
            on_stopped_leading=self._on_stopped_leading,
        )

    def _informers(self, api: client.ApiClient, settings: Settings) -> Caches:
        core = client.CoreV1Api(api)
        jobs, pods = _job_and_pod_informers(api, watched_namespaces(settings.namespace))
        pods.add_index(POD_BY_JOB, index_by_label(LABEL_JOB))
        pods.add_index(POD_BY_NODE, index_by_field("spec", "nodeName"))
        nodes = Informer(core.list_node, name="nodes")
        configmaps = (
            Informer(
                core.list_namespaced_config_map,
                name="device-configmaps",
                list_kwargs={"namespace": CONFIGMAP_NAMESPACE},
            )
            if settings.device_faults
            else None
        )
        jobs.add_index(JOB_BY_LEFT_NODE, _nodes_left)
        jobs.add_index(JOB_BY_NAMESPACE, index_by_field("metadata", "namespace"))
        jobs.on_event(lambda _type, obj, _old: self.queue.add(object_key(obj)))
        pods.before_delete(self._pod_leaving)
        pods.on_event(self._on_pod)
        nodes.on_event(self._on_node)
        if configmaps is not None:
            configmaps.on_event(self._on_configmap)
        return Caches(jobs=jobs, pods=pods, nodes=nodes, device_configmaps=configmaps)

    def _on_pod(self, _type: str, pod: dict[str, Any], _old: dict[str, Any] | None) -> None:
        for key in index_by_label(LABEL_JOB)(pod):
            self.queue.add(key)

    def _pod_leaving(self, pod: dict[str, Any]) -> None:
        # Before the cache drops it: a pass that no longer finds the pod must find its last state.
        for key in index_by_label(LABEL_JOB)(pod):
            self.reconciler.departed(key, pod)

    def _jobs_on_node(self, node: str) -> set[str]:
        return {k for p in self.caches.pods.by_index(POD_BY_NODE, node) for k in index_by_label(LABEL_JOB)(p)}

    def _on_node(self, _type: str, node: dict[str, Any], old: dict[str, Any] | None) -> None:
        # Heartbeats rewrite every node every few seconds; only readiness changes matter here.
        if old is not None and node_state(old).ready == node_state(node).ready:
            return
        for key in self._jobs_on_node(node["metadata"]["name"]):
            self.queue.add(key)

    def _on_configmap(self, _type: str, cm: dict[str, Any], _old: dict[str, Any] | None) -> None:
        name = cm["metadata"]["name"]
        if name.startswith(CONFIGMAP_PREFIX):
            node = name[len(CONFIGMAP_PREFIX) :]
            for key in self._jobs_on_node(node) | self._jobs_that_left(node):
                self.queue.add(key)

    def _jobs_that_left(self, node: str) -> set[str]:
        """Jobs whose last failure was on the node, or that avoid it: a late fault report explains
        that failure, a healthy one lets the node back."""
        return {object_key(job) for job in self.caches.jobs.by_index(JOB_BY_LEFT_NODE, node)}

    def _requests(self) -> dict[str, int]:
        informers = self._all_informers()
        return {
            "list": sum(i.stats.lists for i in informers),
            "watch": sum(i.stats.watches for i in informers),
            "write": self.writer.requests,
        }

    def _job_samples(self) -> list[JobSample]:
        samples = []
        for body in self.caches.jobs.list():
            meta = body["metadata"]
            status = parse_status(body.get("status") or {})
            ckpt = status.last_complete_checkpoint
            committed = parse_time(ckpt.time) if ckpt else None
            samples.append(
                JobSample(
                    namespace=meta.get("namespace", ""),
                    name=meta["name"],
                    phase=status.phase.value,
                    checkpoint_step=ckpt.step if ckpt else None,
                    checkpoint_time=committed.timestamp() if committed else None,
                    restarts=status.restarts,
                    uncounted_restarts=status.uncounted_restarts,
                    suggested_interval=status.checkpoint_interval.seconds
                    if status.checkpoint_interval
                    else None,
                    budget_used=status.budget_used,
                    max_restarts=_max_restarts(body),
                    store=status.checkpoint_store,
                )
            )
        return samples

    # -- lifecycle ---------------------------------------------------------------------------

    def _all_informers(self) -> list[Informer]:
        c = self.caches
        found: list[Informer] = []
        for cache in (c.jobs, c.pods, c.nodes, c.device_configmaps):
            if isinstance(cache, InformerGroup):
                found.extend(cache.members)
            elif cache is not None:
                found.append(cache)
        return found

    def start(self, *, sync_timeout: float = 120.0) -> None:
        liveness, readiness = informer_checks(self._all_informers())
        for name, check in liveness.items():
            self.health.add_liveness_check(name, check)
        for name, check in readiness.items():
            self.health.add_readiness_check(name, check)
        self.health.start()
        for informer in self._all_informers():
            informer.start()
        for informer in self._all_informers():
            if not informer.wait_for_sync(sync_timeout):
                raise TimeoutError(f"informer {informer.name} did not sync in {sync_timeout:.0f}s")
        if self.checkpoints is not None:
            self.checkpoints.start()
        if self.elector is not None:
            self.elector.start()
        else:
            self._start_workers()

    def run(self) -> int:
        """Block until `stop()` or lost leadership; returns the process exit code."""
        self.start()
        self.stopped.wait()
        self.shutdown()
        return 1 if self.lost_leadership else 0

    def stop(self) -> None:
        self.stopped.set()

    def shutdown(self) -> None:
        self.queue.shutdown()
        for worker in self._workers:
            worker.join(timeout=30)
        if self.elector is not None:
            self.elector.stop(release=True)
        if self.checkpoints is not None:
            self.checkpoints.stop()
        for informer in self._all_informers():
            informer.stop()
        self.health.stop()

    def _on_stopped_leading(self) -> None:
        if not self.stopped.is_set():
            self.lost_leadership = True
            log.error("lost leadership; exiting so a fresh process starts as follower")
            self.stopped.set()

    def _start_workers(self) -> None:
        log.info("started leading; reconciling")
        for key in self.caches.jobs.keys():  # noqa: SIM118 - an Informer, not a dict
            self.queue.add(key)
        for i in range(self.settings.workers):
            worker = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while not self.queue.shutting_down:
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                requeue = self.reconciler.reconcile(key)
            except Conflict as exc:
                self.metrics.reconcile_errors.labels("conflict").inc()
                log.info("conflict; retrying", extra={"job": key, "error": str(exc)})
                self.queue.add_rate_limited(key)
            except (CreateRefused, ForeignObject) as exc:
                self.metrics.reconcile_errors.labels("error").inc()
                log.warning("reconcile blocked; retrying", extra={"job": key, "error": str(exc)})
                self.reconciler.report(key, exc)
                self.queue.add_rate_limited(key)
            except Exception as exc:
                self.metrics.reconcile_errors.labels("error").inc()
                log.exception("reconcile failed", extra={"job": key})
                self.reconciler.report(key, exc)
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
                if requeue is not None:
                    self.queue.add_after(key, requeue)
            finally:
                self.queue.done(key)


def _job_and_pod_informers(
    api: client.ApiClient, namespaces: tuple[str, ...]
) -> tuple[Informer | InformerGroup, Informer | InformerGroup]:
    """TrainingJobs and managed pods: cluster-wide, or one informer per watched namespace (the
    controller's permissions there are Roles, so it may not list across namespaces)."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    managed = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    if not namespaces:
        jobs = Informer(
            custom.list_cluster_custom_object,
            name="trainingjobs",
            list_kwargs={"group": GROUP, "version": VERSION, "plural": PLURAL},
            transform=_without_managed_fields,
        )
        pods = Informer(
            core.list_pod_for_all_namespaces,
            name="pods",
            list_kwargs={"label_selector": managed},
            transform=slim_pod,
        )
        return jobs, pods

    job_kwargs = {"group": GROUP, "version": VERSION, "plural": PLURAL}
    job_informers = [
        Informer(
            custom.list_namespaced_custom_object,
            name="trainingjobs" if len(namespaces) == 1 else f"trainingjobs-{ns}",
            list_kwargs={**job_kwargs, "namespace": ns},
            transform=_without_managed_fields,
        )
        for ns in namespaces
    ]
    pod_informers = [
        Informer(
            core.list_namespaced_pod,
            name="pods" if len(namespaces) == 1 else f"pods-{ns}",
            list_kwargs={"namespace": ns, "label_selector": managed},
            transform=slim_pod,
        )
        for ns in namespaces
    ]
    if len(namespaces) == 1:
        return job_informers[0], pod_informers[0]
    return InformerGroup(job_informers), InformerGroup(pod_informers)


def _without_managed_fields(job: dict[str, Any]) -> dict[str, Any]:
    """A TrainingJob as cached: its managedFields (who set which field) are never read."""
    meta = job.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return job


def _max_restarts(job: dict[str, Any]) -> int | None:
    """spec.failurePolicy.maxRestarts as the controller applies it (3 when unset); None when it is
    not a number (the job is then failed as invalid and has no budget)."""
    policy = (job.get("spec") or {}).get("failurePolicy") or {}
    value = policy.get("maxRestarts", 3) if isinstance(policy, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def watched_namespaces(flag: str | None) -> tuple[str, ...]:
    """`--namespace a,b` as a tuple, order kept, duplicates and blanks dropped; () = all namespaces."""
    names = (n.strip() for n in (flag or "").split(","))
    return tuple(dict.fromkeys(n for n in names if n))


def _nodes_left(job: dict[str, Any]) -> list[str]:
    """The nodes a job failed on last or avoids, from its status."""
    status = job.get("status") or {}
    last = (status.get("lastFailure") or {}).get("node")
    return sorted({*(status.get("faultyNodes") or ()), *([last] if last else [])})
