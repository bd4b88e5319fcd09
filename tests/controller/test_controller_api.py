"""The controller against the real API server, with the test playing kubelet.

Pods here are never bound to a node, so the API server deletes them at once and the test can
write their status the way a kubelet would. Real processes run in tests/e2e.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.adapters.kubewriter import KubeWriter
from controller.app import Controller, Settings
from respawn_protocol.crd import GROUP, LABEL_ATTEMPT, LABEL_JOB, PLURAL, VERSION


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def training_job(name: str, replicas: int = 2, **policy: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            # The test plays kubelet: no scheduler (the node agent's included) may take these pods.
            "template": {
                "spec": {
                    "schedulerName": "kubelet-played-by-the-test",
                    "containers": [{"name": "trainer", "image": "trainer", "command": ["true"]}],
                }
            },
            "failurePolicy": {"backoff": {"initialSeconds": 0, "maxSeconds": 0}, **policy},
        },
    }


@pytest.fixture
def start_controller(api_client: client.ApiClient, namespace: str) -> Iterator[Callable[..., Controller]]:
    running: list[Controller] = []

    def start(writer: KubeWriter | None = None) -> Controller:
        controller = Controller(
            api_client,
            Settings(namespace=namespace, leader_election=False, health_port=0, health_host="127.0.0.1"),
        )
        if writer is not None:
            controller.writer = writer
            controller.reconciler._writer = writer
        controller.start()
        running.append(controller)
        return controller

    yield start
    for controller in running:
        controller.stop()
        controller.shutdown()


def job_pods(api: client.ApiClient, namespace: str, job: str, attempt: int | None = None) -> list[Any]:
    selector = f"{LABEL_JOB}={job}" + (f",{LABEL_ATTEMPT}={attempt}" if attempt is not None else "")
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def set_phase(
    api: client.ApiClient, namespace: str, pod: str, phase: str, exit_code: int | None = None
) -> None:
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-23T00:00:00Z"}}
    if exit_code is not None:
        reason = "Completed" if exit_code == 0 else "Error"
        state = {
            "terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": "2026-11-23T00:00:01Z"}
        }
    body = {
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "trainer",
                    "imageID": "",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, body)


def get_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def create_job(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def run_attempt(api: client.ApiClient, namespace: str, job: str, attempt: int, replicas: int = 2) -> None:
    pods = wait_for(
        f"attempt {attempt}",
        lambda: (
            len(job_pods(api, namespace, job, attempt)) == replicas and job_pods(api, namespace, job, attempt)
        ),
    )
    for pod in pods:
        set_phase(api, namespace, pod.metadata.name, "Running")
    wait_for(
        "phase Running", lambda: get_job(api, namespace, job).get("status", {}).get("phase") == "Running"
    )


def test_failure_restarts_the_gang_and_success_completes(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    start_controller()
    create_job(api_client, namespace, training_job("gang"))
    run_attempt(api_client, namespace, "gang", 0)
    service = client.CoreV1Api(api_client).read_namespaced_service("gang", namespace)
    assert service.spec.cluster_ip == "None"

    set_phase(api_client, namespace, "gang-a0-1", "Failed", exit_code=137)
    run_attempt(api_client, namespace, "gang", 1)
    assert job_pods(api_client, namespace, "gang", 0) == []
    status = get_job(api_client, namespace, "gang")["status"]
    assert (status["restarts"], status["uncountedRestarts"], status["attempt"]) == (1, 0, 1)
    assert status["lastFailure"]["pod"] == "gang-a0-1" and status["lastFailure"]["exitCode"] == 137

    for rank in (0, 1):
        set_phase(api_client, namespace, f"gang-a1-{rank}", "Succeeded", exit_code=0)
    wait_for("Succeeded", lambda: get_job(api_client, namespace, "gang")["status"]["phase"] == "Succeeded")
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert {"Restarting", "Succeeded"} <= {e.reason for e in events}


def test_permanent_exit_code_fails_the_job(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    start_controller()
    create_job(api_client, namespace, training_job("perm"))
    run_attempt(api_client, namespace, "perm", 0)
    set_phase(api_client, namespace, "perm-a0-0", "Failed", exit_code=78)
    status = wait_for(
        "Failed",
        lambda: (
            (s := get_job(api_client, namespace, "perm").get("status", {})).get("phase") == "Failed" and s
        ),
    )
    assert status["restarts"] == 0
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentError"
    wait_for("pods cleaned up", lambda: job_pods(api_client, namespace, "perm") == [])


def test_invalid_spec_is_marked_failed_not_retried(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    controller = start_controller()
    body = training_job("bad")
    body["spec"]["trainerContainer"] = "nope"
    create_job(api_client, namespace, body)
    status = wait_for("Failed", lambda: get_job(api_client, namespace, "bad").get("status"))
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InvalidSpec" and "'nope' is not a container" in condition["message"]
    assert job_pods(api_client, namespace, "bad") == []
    assert controller.queue.num_requeues(f"{namespace}/bad") == 0


class _CrashBeforeCreate(KubeWriter):
    """Dies like a SIGKILLed controller right after deleting the old attempt."""

    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        raise SystemExit("killed between deleting old pods and creating new ones")


# The crashing worker thread dying is the point of this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_controller_killed_mid_restart_resumes_it_once(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    first = start_controller()
    create_job(api_client, namespace, training_job("crash"))
    run_attempt(api_client, namespace, "crash", 0)
    first.stop()
    first.shutdown()

    crashing = start_controller(writer=_CrashBeforeCreate(api_client))
    set_phase(api_client, namespace, "crash-a0-0", "Failed", exit_code=1)
    wait_for("old attempt deleted", lambda: job_pods(api_client, namespace, "crash") == [])
    status = get_job(api_client, namespace, "crash")["status"]
    assert (status["attempt"], status["restarts"], status["phase"]) == (1, 1, "Restarting")
    crashing.stop()
    crashing.shutdown()

    start_controller()
    run_attempt(api_client, namespace, "crash", 1)
    assert sorted(p.metadata.name for p in job_pods(api_client, namespace, "crash")) == [
        "crash-a1-0",
        "crash-a1-1",
    ]
    status = get_job(api_client, namespace, "crash")["status"]
    assert (status["attempt"], status["restarts"]) == (1, 1)
