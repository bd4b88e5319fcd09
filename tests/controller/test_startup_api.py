"""A gang that cannot start, against the real API server (the test plays kube-scheduler, which this
control plane does not run, by writing the `PodScheduled=False` condition it would): the job says
why within seconds, with one Warning event per distinct message, and a start-up deadline
(`failurePolicy.startupTimeoutSeconds`) fails the attempt with reason `StartupTimeout`, counted,
until the budget is used and the job fails instead of restarting forever."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.kube import create_job, get_job, job_pods, job_status, running_controller
from tests.support.manifests import played_job
from tests.support.poll import wait_for

MSG = (
    "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910. preemption: 0/2 nodes are "
    "available: 2 No preemption victims found for incoming pod."
)
OTHER = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
WITHIN_SECONDS = 30.0  # the condition follows the scheduler's word at once; sized for a loaded machine


@pytest.fixture
def controller(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace) as running:
        yield running


def unschedulable(api: client.ApiClient, namespace: str, pod: str, message: str) -> str:
    """Write what kube-scheduler writes for a pod it cannot place; the pod's new resourceVersion."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }
    body = {"status": {"phase": "Pending", "conditions": [condition]}}
    patched = client.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, body)
    return str(patched.metadata.resource_version)


def gang(api: client.ApiClient, namespace: str, name: str, attempt: int) -> list[str]:
    pods = wait_for(
        f"attempt {attempt}",
        lambda: len(p := job_pods(api, namespace, name, attempt)) == 2 and p,
    )
    return sorted(p.metadata.name for p in pods)


def scheduled(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = (get_job(api, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Scheduled"), None)


def warnings(api: client.ApiClient, namespace: str, reason: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e.message for e in events if e.reason == reason and e.type == "Warning"]


def says(api: client.ApiClient, namespace: str, name: str, message: str) -> dict[str, Any] | None:
    c = scheduled(api, namespace, name)
    return c if c is not None and c["message"] == message else None


def test_an_unschedulable_gang_says_why_once_per_message(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    create_job(api_client, namespace, played_job("nosched"))
    pods = gang(api_client, namespace, "nosched", 0)
    for pod in pods:
        unschedulable(api_client, namespace, pod, MSG)

    said = wait_for(
        "the scheduler quoted",
        lambda: says(api_client, namespace, "nosched", f"attempt 0: {MSG}"),
        WITHIN_SECONDS,
    )
    assert (said["status"], said["reason"]) == ("False", "Unschedulable")
    assert job_status(api_client, namespace, "nosched")["phase"] == "Pending"
    wait_for("a Warning event", lambda: warnings(api_client, namespace, "Unschedulable"), WITHIN_SECONDS)

    # The scheduler retries and writes the same words again: passes run, nothing more is said.
    versions = {pod: unschedulable(api_client, namespace, pod, MSG) for pod in pods}
    wait_for(
        "the controller's cache holds the retries",
        lambda: all(
            (controller.caches.pods.get(f"{namespace}/{pod}") or {})
            .get("metadata", {})
            .get("resourceVersion")
            == rv
            for pod, rv in versions.items()
        ),
    )
    # New words are said, once.
    unschedulable(api_client, namespace, pods[0], OTHER)
    wait_for(
        "the new message",
        lambda: says(api_client, namespace, "nosched", f"attempt 0: {OTHER}"),
        WITHIN_SECONDS,
    )
    wait_for("its event", lambda: len(warnings(api_client, namespace, "Unschedulable")) >= 2, WITHIN_SECONDS)
    said_twice = sorted(warnings(api_client, namespace, "Unschedulable"))
    assert said_twice == sorted([f"attempt 0: {MSG}", f"attempt 0: {OTHER}"])


def test_a_gang_that_never_starts_times_out_counted_then_fails_the_job(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    create_job(api_client, namespace, played_job("late", maxRestarts=1))
    for pod in gang(api_client, namespace, "late", 0):
        unschedulable(api_client, namespace, pod, MSG)
    wait_for(
        "the scheduler quoted",
        lambda: says(api_client, namespace, "late", f"attempt 0: {MSG}"),
        WITHIN_SECONDS,
    )

    # A deadline set now counts from the attempt's creation, recorded in status.
    created = job_status(api_client, namespace, "late")["attemptCreatedAt"]
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "late", {"spec": {"failurePolicy": {"startupTimeoutSeconds": 3}}}
    )
    failure = wait_for(
        "a StartupTimeout",
        lambda: (f := job_status(api_client, namespace, "late").get("lastFailure")) and f,
    )
    assert (failure["reason"], failure["action"], failure["counted"]) == (
        "StartupTimeout",
        "RestartJob",
        True,
    )
    assert failure["message"].startswith(
        "2 of 2 workers not running 3s after attempt 0 was created; late-a0-0: "
    )
    assert MSG in failure["message"]
    # The event follows the status write that records the failure.
    restarting = wait_for("the Restarting event", lambda: warnings(api_client, namespace, "Restarting"))
    assert len(restarting) == 1 and MSG in restarting[0] and "restart counted" in restarting[0]

    # Attempt 1 has its own clock, and the same fate (its pods are never even looked at): the
    # budget of one is used, the job fails instead of restarting forever.
    status = wait_for(
        "job failed", lambda: (s := job_status(api_client, namespace, "late"))["phase"] == "Failed" and s
    )
    assert status["attemptCreatedAt"] > created
    assert (status["attempt"], status["restarts"], status["lastFailure"]["reason"]) == (
        1,
        1,
        "StartupTimeout",
    )
    assert (
        "after attempt 1 was created; late-a1-0: Pending, not scheduled yet"
        in status["lastFailure"]["message"]
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (
        failed["reason"] == "RestartBudgetExceeded" and "restart budget of 1 exhausted" in failed["message"]
    )
    wait_for("the gang removed", lambda: job_pods(api_client, namespace, "late") == [])
