"""The controller against the real API server, with the test playing kubelet.

Pods here are never bound to a node, so the API server deletes them at once and the test can
write their status the way a kubelet would. Real processes run in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from controller.adapters.kubewriter import KubeWriter
from controller.app import Controller
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.kube import create_job, get_job, job_pods, run_attempt, running_controller, set_phase
from tests.support.manifests import played_job
from tests.support.poll import wait_for


@pytest.fixture
def start_controller(api_client: client.ApiClient, namespace: str) -> Iterator[Callable[..., Controller]]:
    with ExitStack() as running:

        def start(writer: KubeWriter | None = None) -> Controller:
            def use_writer(controller: Controller) -> None:
                if writer is not None:
                    controller.writer = writer
                    controller.reconciler._writer = writer

            return running.enter_context(running_controller(api_client, namespace, prepare=use_writer))

        yield start


def test_failure_restarts_the_gang_and_success_completes(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    start_controller()
    create_job(api_client, namespace, played_job("gang"))
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
    # The event follows the status write that says Succeeded.
    core = client.CoreV1Api(api_client)
    wait_for(
        "the Restarting and Succeeded events",
        lambda: (
            {"Restarting", "Succeeded"} <= {e.reason for e in core.list_namespaced_event(namespace).items}
        ),
    )


def test_a_deleted_jobs_restart_series_are_deleted_too(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    controller = start_controller()
    create_job(api_client, namespace, played_job("gone"))
    create_job(api_client, namespace, played_job("kept"))
    for job in ("gone", "kept"):
        run_attempt(api_client, namespace, job, 0)
        set_phase(api_client, namespace, f"{job}-a0-1", "Failed", exit_code=137)
        run_attempt(api_client, namespace, job, 1)

    def restarts(job: str) -> float | None:
        labels = {"namespace": namespace, "trainingjob": job, "reason": "Error", "class": "counted"}
        return controller.registry.get_sample_value("respawn_restarts_total", labels)

    assert restarts("gone") == restarts("kept") == 1
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "gone"
    )
    wait_for("the deleted job's series gone", lambda: restarts("gone") is None)
    assert restarts("kept") == 1
    exposition = generate_latest(controller.registry).decode()
    assert 'trainingjob="gone"' not in exposition and 'trainingjob="kept"' in exposition


def test_permanent_exit_code_fails_the_job(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    start_controller()
    create_job(api_client, namespace, played_job("perm"))
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
    body = played_job("bad")
    body["spec"]["trainerContainer"] = "nope"
    create_job(api_client, namespace, body)
    status = wait_for("Failed", lambda: get_job(api_client, namespace, "bad").get("status"))
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InvalidSpec" and "'nope' is not a container" in condition["message"]
    assert job_pods(api_client, namespace, "bad") == []
    assert controller.queue.num_requeues(f"{namespace}/bad") == 0


class _CrashBeforeCreate(KubeWriter):
    """Dies like a SIGKILLed controller right after deleting the old attempt."""

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise SystemExit("killed between deleting old pods and creating new ones")


# The crashing worker thread dying is the point of this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_controller_killed_mid_restart_resumes_it_once(
    api_client: client.ApiClient, namespace: str, start_controller: Callable[..., Controller]
) -> None:
    first = start_controller()
    create_job(api_client, namespace, played_job("crash"))
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
