"""The informer against a real API server: events, indexes, a restarted server, a forced 410."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.runtime.informer import ADDED, DELETED, MODIFIED, Informer
from controller.runtime.store import index_by_field, index_by_label
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.informer import Recorder
from tests.support.manifests import training_job
from tests.support.poll import FAST, wait_for


def config_map(name: str, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)


def pod(name: str, *, labels: dict[str, str], node: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="busybox")]),
    )


class Gate:
    """Holds watch requests at the door while a test changes the cluster behind the informer's back."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.held = threading.Event()

    def close(self) -> None:
        self.held.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def pass_through(self) -> None:
        if not self._open.is_set():
            self.held.set()
            assert self._open.wait(60), "gate never opened"


@pytest.fixture
def informers() -> Iterator[list[Informer]]:
    started: list[Informer] = []
    yield started
    for informer in started:
        informer.stop(timeout=10)
        assert not informer.is_alive()


def run(informers: list[Informer], informer: Informer, recorder: Recorder | None = None) -> Informer:
    if recorder is not None:
        informer.on_event(recorder)
    informer.start()
    informers.append(informer)
    assert informer.wait_for_sync(30)
    return informer


def test_custom_resources_create_update_delete(
    api_client: client.ApiClient, namespace: str, informers: list[Informer]
) -> None:
    custom = client.CustomObjectsApi(api_client)
    kwargs = {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": PLURAL}
    recorder = Recorder()
    jobs = run(
        informers, Informer(custom.list_namespaced_custom_object, list_kwargs=kwargs, name="jobs"), recorder
    )
    key = f"{namespace}/train"

    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, training_job("train", replicas=1, image="trainer")
    )
    wait_for("created job cached", lambda: jobs.get(key) is not None, interval=FAST)
    cached = jobs.get(key)
    assert cached is not None
    assert (
        cached["kind"] == "TrainingJob" and cached["spec"]["failurePolicy"]["maxRestarts"] == 3
    )  # camelCase
    created_rv = cached["metadata"]["resourceVersion"]

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "train", {"spec": {"replicas": 2}}
    )
    wait_for(
        "update cached", lambda: (jobs.get(key) or {}).get("spec", {}).get("replicas") == 2, interval=FAST
    )

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "train")
    wait_for("delete applied", lambda: jobs.get(key) is None, interval=FAST)
    assert [event[:2] for event in recorder.events] == [(ADDED, key), (MODIFIED, key), (DELETED, key)]
    assert recorder.events[1][2] == created_rv, "MODIFIED carries the previous cached object"
    assert jobs.stats.lists == 1 and jobs.stats.relists == 0


def test_pods_by_job_label_and_by_node_are_served_from_the_cache(
    api_client: client.ApiClient, namespace: str, informers: list[Informer]
) -> None:
    core = client.CoreV1Api(api_client)
    mine = {"respawn-test": namespace}
    core.create_namespaced_pod(namespace, pod("p1", labels={**mine, "job": "j1"}, node="n1"))
    pods = Informer(
        core.list_pod_for_all_namespaces,
        list_kwargs={"label_selector": f"respawn-test={namespace}"},
        name="pods",
    )
    pods.add_index("job", index_by_label("job"))
    pods.add_index("node", index_by_field("spec", "nodeName"))
    run(informers, pods)

    listed = pods.get(f"{namespace}/p1")
    assert listed is not None
    assert (listed["apiVersion"], listed["kind"], listed["spec"]["nodeName"]) == ("v1", "Pod", "n1")
    assert "creationTimestamp" in listed["metadata"], "the server's JSON, not client model attributes"

    core.create_namespaced_pod(namespace, pod("p2", labels={**mine, "job": "j1"}, node="n2"))
    core.create_namespaced_pod(namespace, pod("p3", labels={**mine, "job": "j2"}, node="n1"))
    core.create_namespaced_pod(namespace, pod("other", labels={"job": "j1"}, node="n1"))  # not selected
    wait_for("three selected pods cached", lambda: len(pods.list()) == 3, interval=FAST)

    def names(objs: list[dict[str, Any]]) -> list[str]:
        return [o["metadata"]["name"] for o in objs]

    lists_before = pods.stats.lists
    for _ in range(200):  # what many reconciles would read
        assert names(pods.by_index("job", f"{namespace}/j1")) == ["p1", "p2"]
        assert names(pods.by_index("node", "n1")) == ["p1", "p3"]
    assert pods.stats.lists == lists_before == 1, "reads must not LIST"

    core.delete_namespaced_pod("p1", namespace, grace_period_seconds=0)
    wait_for(
        "delete left the index",
        lambda: names(pods.by_index("job", f"{namespace}/j1")) == ["p2"],
        interval=FAST,
    )
    assert names(pods.by_index("node", "n1")) == ["p3"]


def test_survives_an_api_server_restart_and_catches_changes_made_while_disconnected(
    control_plane: Any, api_client: client.ApiClient, namespace: str, informers: list[Informer]
) -> None:
    core = client.CoreV1Api(api_client)
    for name in ("a", "b"):
        core.create_namespaced_config_map(namespace, config_map(name, v="1"))
    gate = Gate()

    def list_config_maps(**kwargs: Any) -> Any:
        if kwargs.get("watch"):
            gate.pass_through()
        return core.list_namespaced_config_map(**kwargs)

    recorder = Recorder()
    informer = Informer(
        list_config_maps, list_kwargs={"namespace": namespace}, name="cms", backoff_base=0.2, backoff_cap=1.0
    )
    run(informers, informer, recorder)
    wait_for("a watch open", lambda: informer.stats.watches >= 1, interval=FAST)

    try:
        # SIGKILL, as in a crash: the open watch breaks at once (a graceful stop drains it first).
        control_plane.stop_apiserver(signal.SIGKILL)
        # Reconnecting fails while the server is down, with backoff.
        wait_for("reconnect attempts fail", lambda: informer.stats.errors >= 2, 30, interval=FAST)
        assert informer.is_alive()
        gate.close()
        wait_for("next watch attempt held at the gate", gate.held.is_set, 30, interval=FAST)
    finally:
        control_plane.start_apiserver()
    try:
        core.delete_namespaced_config_map("a", namespace)
        core.patch_namespaced_config_map("b", namespace, {"data": {"v": "2"}})
        core.create_namespaced_config_map(namespace, config_map("c", v="1"))
    finally:
        gate.open()

    def caught_up() -> bool:
        b = informer.get(f"{namespace}/b")
        return (
            sorted(informer.keys()) == [f"{namespace}/b", f"{namespace}/c"]
            and b is not None
            and b["data"]["v"] == "2"
        )

    wait_for("cache matches the server after reconnecting", caught_up, 30, interval=FAST)
    assert (DELETED, f"{namespace}/a") in [event[:2] for event in recorder.events]
    assert informer.stats.watches >= 3

    core.create_namespaced_config_map(namespace, config_map("d"))
    wait_for("the new watch delivers", lambda: informer.get(f"{namespace}/d") is not None, interval=FAST)


class ErrorFirst:
    """A real watch response with a 410 ERROR event in front, as the server sends for an expired version."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.connection = real.connection

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired"}
        yield json.dumps(
            {"type": "ERROR", "object": {**status, "message": "too old resource version"}}
        ).encode()
        yield b"\n"
        yield from self._real.stream(**kwargs)

    def close(self) -> None:
        self._real.close()

    def release_conn(self) -> None:
        self._real.release_conn()


@pytest.mark.parametrize("where", ["on-open", "mid-stream"])
def test_410_gone_relists_and_delivers_the_delete_it_missed(
    api_client: client.ApiClient, namespace: str, informers: list[Informer], where: str
) -> None:
    core = client.CoreV1Api(api_client)
    for name in ("a", "b"):
        core.create_namespaced_config_map(namespace, config_map(name))
    gate = Gate()
    gate.close()  # the first watch waits until the cluster has changed
    gone_once = threading.Event()

    def list_config_maps(**kwargs: Any) -> Any:
        if not kwargs.get("watch") or gone_once.is_set():
            return core.list_namespaced_config_map(**kwargs)
        gate.pass_through()
        gone_once.set()
        if where == "on-open":
            raise ApiException(status=410, reason="Gone")
        return ErrorFirst(core.list_namespaced_config_map(**kwargs))

    recorder = Recorder()
    informer = run(
        informers, Informer(list_config_maps, list_kwargs={"namespace": namespace}, name="cms"), recorder
    )
    wait_for("the watch held at the gate", gate.held.is_set, interval=FAST)
    core.delete_namespaced_config_map("a", namespace)
    core.create_namespaced_config_map(namespace, config_map("c"))
    gate.open()

    wait_for(
        "one relist, which caches c",
        lambda: informer.stats.relists == 1 and informer.get(f"{namespace}/c") is not None,
        interval=FAST,
    )
    assert informer.get(f"{namespace}/a") is None
    assert [e[:2] for e in recorder.events[2:]] == [(ADDED, f"{namespace}/c"), (DELETED, f"{namespace}/a")]
    assert informer.stats.lists == 2
    # After the relist the informer watches again, from the relist's version, and sees new changes.
    core.create_namespaced_config_map(namespace, config_map("d"))
    wait_for("the new watch delivers d", lambda: informer.get(f"{namespace}/d") is not None, interval=FAST)


def test_stop_ends_an_open_watch_promptly(
    api_client: client.ApiClient, namespace: str, informers: list[Informer]
) -> None:
    core = client.CoreV1Api(api_client)
    informer = Informer(
        core.list_namespaced_config_map, list_kwargs={"namespace": namespace}, watch_timeout_seconds=300
    )
    informer.start()
    try:
        assert informer.wait_for_sync(30)
        core.create_namespaced_config_map(namespace, config_map("x"))
        wait_for(
            "the watch is open and delivering",
            lambda: informer.get(f"{namespace}/x") is not None,
            interval=FAST,
        )
    finally:
        started = time.monotonic()
        informer.stop(timeout=10)
    assert not informer.is_alive()
    assert time.monotonic() - started < 2.0
