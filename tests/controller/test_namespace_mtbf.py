"""A job that has not failed yet borrows its namespace's MTBF: the reconcile pass sums the other
jobs' running time and failures from the job cache (by namespace) for the interval suggestion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prometheus_client import CollectorRegistry

from controller.adapters.kubewriter import KubeWriter
from controller.adapters.metrics import Metrics
from controller.adapters.reconcile_pass import POD_BY_JOB, Caches, ReconcilePass
from controller.core.timefmt import format_time
from respawn_protocol.crd import LABEL_JOB as LABEL
from respawn_protocol.report import annotation_key
from tests.support.core_inputs import job, pod

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Cache:
    """The reads the pass makes of an informer's cache: by key, by job label, by namespace."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    def get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get(key)

    def by_index(self, index: str, value: str) -> list[dict[str, Any]]:
        if index == POD_BY_JOB:
            return [o for o in self.objects.values() if f"team/{o['metadata']['labels'].get(LABEL)}" == value]
        return [o for o in self.objects.values() if o["metadata"].get("namespace") == value]


class StatusWriter(KubeWriter):
    def __init__(self) -> None:
        self.requests = 0
        self.statuses: list[dict[str, Any]] = []

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(status)
        return {**job, "status": status}

    def emit_event(self, job: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        pass


def other(name: str, hours: float, failures: int, namespace: str = "team") -> dict[str, Any]:
    body = job(
        {"phase": "Running", "startTime": format_time(NOW - timedelta(hours=hours)), "restarts": failures}
    )
    body["metadata"] = {**body["metadata"], "name": name, "uid": f"u-{name}", "namespace": namespace}
    return body


def test_a_job_without_failures_gets_its_namespace_s_mtbf() -> None:
    start = format_time(NOW - timedelta(hours=1))
    mine = job({"phase": "Running", "attempt": 0, "replicas": 2, "startTime": start})
    jobs = {
        "team/llm": mine,
        "team/a": other("a", 5, 2),
        "team/b": other("b", 2, 0),
        "elsewhere/c": other("c", 100, 1, namespace="elsewhere"),  # another namespace: not counted
    }
    pods = {}
    for rank in (0, 1):
        body = pod(rank)
        body["metadata"]["namespace"] = "team"
        body["metadata"]["labels"][LABEL] = "llm"
        if rank == 0:
            report = {"attempt": 0, "step": 10, "stepTime": 1.0, "saveCost": 0.5, "at": format_time(NOW)}
            body["metadata"]["annotations"] = {annotation_key(0): json.dumps(report)}
        pods[f"team/llm-a0-{rank}"] = body
    writer = StatusWriter()
    caches = Caches(jobs=cast(Any, Cache(jobs)), pods=cast(Any, Cache(pods)), nodes=cast(Any, Cache({})))
    ReconcilePass(
        caches=caches, writer=writer, metrics=Metrics(CollectorRegistry()), now=lambda: NOW
    ).reconcile("team/llm")
    [status] = writer.statuses
    advice = status["checkpointInterval"]
    # (5 h + 2 h of the others + 1 h of its own) over the others' 2 failures.
    assert (advice["basis"], advice["failures"], advice["mtbfSeconds"]) == ("namespace", 2, 4 * 3600.0)
