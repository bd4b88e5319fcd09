"""API shortcuts for TrainingJobs and their pods, a controller run in-process, and a pod watch that
notes when each pod first appeared."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from controller.app import Controller, Settings
from respawn_protocol.crd import GROUP, LABEL_ATTEMPT, LABEL_JOB, PLURAL, VERSION
from tests.support.manifests import pod_status
from tests.support.poll import wait_for


def create_job(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def job_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_job(api, namespace, name).get("status") or {}


def final_status(api: client.ApiClient, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """The job's status once it is Succeeded or Failed."""

    def ended() -> dict[str, Any] | None:
        status = job_status(api, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(f"{name} to end", ended, timeout)


def job_pods(api: client.ApiClient, namespace: str, job: str, attempt: int | None = None) -> list[Any]:
    selector = f"{LABEL_JOB}={job}" + (f",{LABEL_ATTEMPT}={attempt}" if attempt is not None else "")
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def set_phase(
    api: client.ApiClient, namespace: str, pod: str, phase: str, exit_code: int | None = None
) -> None:
    """Write a pod's status as its kubelet would (see `manifests.pod_status`)."""
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, pod_status(phase, exit_code))


def run_attempt(api: client.ApiClient, namespace: str, job: str, attempt: int, replicas: int = 2) -> None:
    """Play kubelet for one attempt: wait for its pods, mark them Running, wait for the job to be."""
    pods = wait_for(
        f"attempt {attempt}",
        lambda: (
            len(job_pods(api, namespace, job, attempt)) == replicas and job_pods(api, namespace, job, attempt)
        ),
    )
    for pod in pods:
        set_phase(api, namespace, pod.metadata.name, "Running")
    wait_for("phase Running", lambda: job_status(api, namespace, job).get("phase") == "Running")


@contextlib.contextmanager
def running_controller(
    api: client.ApiClient,
    namespace: str,
    *,
    shared: Path | None = None,
    device_faults: bool = True,
    prepare: Callable[[Controller], None] | None = None,
    **settings: Any,
) -> Iterator[Controller]:
    """The controller in this process for one namespace, health on a free loopback port, no leader
    election and no /metrics authentication unless `settings` say otherwise (`metrics_auth=True`:
    tests that scrape as Prometheus would, tests/controller/test_metrics_auth.py); `prepare` sees it
    before it starts. Stopped on the way out."""
    controller = Controller(
        api,
        Settings(
            **{
                "namespace": namespace,
                "leader_election": False,
                "health_port": 0,
                "health_host": "127.0.0.1",
                "shared_root": shared,
                "device_faults": device_faults,
                "metrics_auth": False,
                **settings,
            }
        ),
    )
    if prepare is not None:
        prepare(controller)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()
        controller.shutdown()


class PodWatcher:
    """When each pod name was first seen, from a watch of a namespace started at construction."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str) -> None:
        self.first_seen: dict[str, float] = {}
        self.core = client.CoreV1Api(api)
        self._namespace, self._selector = namespace, selector
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._rv = self.core.list_namespaced_pod(
            namespace, label_selector=selector, limit=1
        ).metadata.resource_version
        threading.Thread(target=self._run, name="pod-watcher", daemon=True).start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            if not self._stop.is_set():
                raise

    def _watch(self) -> None:
        w = watch.Watch()
        while not self._stop.is_set():
            for event in w.stream(
                self.core.list_namespaced_pod,
                self._namespace,
                label_selector=self._selector,
                resource_version=self._rv,
                timeout_seconds=30,
            ):
                pod = event["object"]
                self._rv = pod.metadata.resource_version
                if event["type"] == "ADDED":
                    with self._cond:
                        self.first_seen.setdefault(pod.metadata.name, time.perf_counter())
                        self._cond.notify_all()
                    self.added(pod)
                if self._stop.is_set():
                    break

    def added(self, pod: Any) -> None:
        """Called on the watch thread for every new pod (after it is recorded)."""

    def wait(self, names: set[str], timeout: float = 60.0) -> float:
        """The perf_counter() time the last of `names` appeared; TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not names <= self.first_seen.keys():
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"pods never appeared: {sorted(names - self.first_seen.keys())[:5]}")
            return max(self.first_seen[n] for n in names)

    def stop(self) -> None:
        self._stop.set()


def set_suspend(api: client.ApiClient, namespace: str, name: str, value: bool) -> None:
    """spec.suspend of the TrainingJob `name`."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"suspend": value}}
    )
