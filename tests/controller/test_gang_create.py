"""Creating a gang through the reconcile pass, with a recording writer: pods go out in growing
batches (1, 2, 4, ... up to BATCH_MAX), each batch's bodies built only when it is sent, and the
first refusal stops the gang and removes what was made."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from controller.adapters.kubewriter import KubeWriter
from controller.adapters.metrics import Metrics
from controller.adapters.reconcile_pass import BATCH_MAX, Caches, CreateRefused, ReconcilePass, slow_start
from controller.core import podspec
from tests.support.core_inputs import job


class Store:
    """The few reads the pass makes of an informer's cache."""

    def __init__(self, objects: dict[str, dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get(key)

    def by_index(self, _index: str, _value: str) -> list[dict[str, Any]]:
        return []


class RecordingWriter(KubeWriter):
    def __init__(self, log: list[tuple[str, str]], refuse: str | None = None) -> None:
        self.requests = 0
        self.log = log
        self.refuse = refuse
        self.deleted: list[str] = []
        self._lock = threading.Lock()

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        with self._lock:
            self.log.append(("create", name))
        if name == self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        return {"metadata": {"name": name, "uid": f"uid-{name}"}}

    def delete_pod(self, namespace: str, name: str, *, uid: str | None = None, force: bool = False) -> None:
        assert uid == f"uid-{name}"
        self.deleted.append(name)

    def ensure_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def ensure_owned(self, namespace: str, body: dict[str, Any]) -> None:
        pass

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        return {**job, "status": status}

    def emit_event(self, job: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        pass


def reconcile(writer: RecordingWriter, replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    build = podspec.worker_pod

    def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = build(*args, **kwargs)
        writer.log.append(("build", body["metadata"]["name"]))
        return body

    monkeypatch.setattr(podspec, "worker_pod", recorded)
    jobs = Store({"team/llm": job(replicas=replicas)})
    caches = Caches(jobs=cast(Any, jobs), pods=cast(Any, Store()), nodes=cast(Any, Store()))
    reconciler = ReconcilePass(
        caches=caches, writer=writer, metrics=Metrics(CollectorRegistry()), now=lambda: datetime.now(UTC)
    )
    reconciler.reconcile("team/llm")


def runs(log: list[tuple[str, str]]) -> list[tuple[str, int]]:
    return [(kind, len(list(group))) for kind, group in itertools.groupby(kind for kind, _ in log)]


@pytest.mark.parametrize(("n", "cap", "sizes"), [(0, 4, []), (1, 4, [1]), (20, 4, [1, 2, 4, 4, 4, 4, 1])])
def test_slow_start_doubles_up_to_the_cap(n: int, cap: int, sizes: list[int]) -> None:
    batches = list(slow_start(range(n), cap))
    assert [len(b) for b in batches] == sizes and [i for b in batches for i in b] == list(range(n))


def test_bodies_are_built_a_batch_at_a_time_as_the_batches_grow(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RecordingWriter([])
    reconcile(writer, 200, monkeypatch)
    sizes = [1, 2, 4, 8, 16, 32, BATCH_MAX, BATCH_MAX, 200 - 127 - BATCH_MAX]
    assert runs(writer.log) == [(kind, size) for size in sizes for kind in ("build", "create")]
    assert {name for kind, name in writer.log if kind == "create"} == {f"llm-a0-{i}" for i in range(200)}
    assert writer.deleted == []


def test_the_first_refused_batch_stops_the_gang_and_what_was_made_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = RecordingWriter([], refuse="llm-a0-5")
    with pytest.raises(CreateRefused, match="pod team/llm-a0-5: "):
        reconcile(writer, 10, monkeypatch)
    # Batches [0], [1, 2], [3, 4, 5, 6]: the third is sent whole, the fourth never.
    assert {name for kind, name in writer.log if kind == "create"} == {f"llm-a0-{i}" for i in range(7)}
    assert sorted(writer.deleted) == [f"llm-a0-{i}" for i in (0, 1, 2, 3, 4, 6)]
