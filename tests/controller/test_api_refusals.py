"""What the API server holds and refuses, against the real one (the test plays kubelet and the
quota controller, which this control plane does not run): pod templates reach it untouched, a
refused pod creation and a name held by a foreign object are said on the job, and foreign
objects are never adopted, changed or deleted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.kube import create_job, get_job, job_pods, running_controller
from tests.support.manifests import played_job
from tests.support.poll import wait_for


@pytest.fixture
def controller(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace) as running:
        yield running


def condition(api: client.ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    conditions = (get_job(api, namespace, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), None)


def warnings(api: client.ApiClient, namespace: str, reason: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e.message for e in events if e.reason == reason and e.type == "Warning"]


def test_integer_and_float_quantities_reach_the_api_server(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    body = played_job("npu", replicas=1)
    limits = {"huawei.com/Ascend910": 8, "cpu": 0.5, "memory": "1Gi"}
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": limits}
    create_job(api_client, namespace, body)
    [pod] = wait_for("the worker pod", lambda: job_pods(api_client, namespace, "npu"))
    assert pod.spec.containers[0].resources.limits == {
        "huawei.com/Ascend910": "8",
        "cpu": "500m",
        "memory": "1Gi",
    }
    assert condition(api_client, namespace, "npu", "ReconcileError") is None


def test_a_refused_pod_creation_is_said_on_the_job_and_retried(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    core = client.CoreV1Api(api_client)
    quota = {"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}}
    core.create_namespaced_resource_quota(namespace, quota)
    # Played quota controller: admission charges against status, which nothing else writes here.
    used = {"status": {"hard": {"pods": "1"}, "used": {"pods": "0"}}}
    core.patch_namespaced_resource_quota_status("one-pod", namespace, used)
    create_job(api_client, namespace, played_job("quota"))

    error = wait_for("ReconcileError", lambda: condition(api_client, namespace, "quota", "ReconcileError"))
    assert (error["status"], error["reason"]) == ("True", "FailedCreate")
    assert error["message"].startswith(f"pod {namespace}/quota-a0-")
    assert "exceeded quota: one-pod" in error["message"]
    # First rank 0 was admitted and rank 1 refused; the played quota controller never frees the
    # charge, so later retries are refused at rank 0.
    refused = warnings(api_client, namespace, "FailedCreate")
    assert any(m.startswith(f"pod {namespace}/quota-a0-1: ") and "exceeded quota" in m for m in refused)
    # The half-made gang is removed: one pod alone could never rendezvous.
    wait_for("no partial gang", lambda: job_pods(api_client, namespace, "quota") == [])

    core.delete_namespaced_resource_quota("one-pod", namespace)
    wait_for("the gang", lambda: len(job_pods(api_client, namespace, "quota", 0)) == 2)
    cleared = wait_for(
        "error cleared",
        lambda: (
            (c := condition(api_client, namespace, "quota", "ReconcileError"))
            and c["status"] == "False"
            and c
        ),
    )
    assert cleared["reason"] == "Reconciled"


def test_a_foreign_service_blocks_the_gang_and_is_left_alone(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    core = client.CoreV1Api(api_client)
    foreign = core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "svc"}, "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}},
    )
    create_job(api_client, namespace, played_job("svc"))
    error = wait_for("ReconcileError", lambda: condition(api_client, namespace, "svc", "ReconcileError"))
    assert error["reason"] == "ForeignObject"
    assert error["message"] == f"Service {namespace}/svc exists and is not owned by this TrainingJob"
    assert warnings(api_client, namespace, "ForeignObject")
    assert job_pods(api_client, namespace, "svc") == [], "no pods that could not find each other"
    after = core.read_namespaced_service("svc", namespace)
    assert (after.metadata.uid, after.metadata.resource_version) == (
        foreign.metadata.uid,
        foreign.metadata.resource_version,
    )
    assert after.metadata.owner_references is None and after.spec.selector == {"app": "theirs"}


def test_a_squatting_pod_blocks_the_gang_and_is_left_alone(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    core = client.CoreV1Api(api_client)
    squatter = played_job("squat")["spec"]["template"]["spec"]
    squatter_pod = core.create_namespaced_pod(
        namespace, {"metadata": {"name": "squat-a0-1", "labels": {"app": "theirs"}}, "spec": squatter}
    )
    create_job(api_client, namespace, played_job("squat"))
    error = wait_for("ReconcileError", lambda: condition(api_client, namespace, "squat", "ReconcileError"))
    assert error["reason"] == "ForeignObject"
    assert error["message"] == f"Pod {namespace}/squat-a0-1 exists and is not owned by this TrainingJob"
    wait_for("rank 0 removed again", lambda: job_pods(api_client, namespace, "squat") == [])
    after = core.read_namespaced_pod("squat-a0-1", namespace)
    assert (after.metadata.uid, after.metadata.resource_version) == (
        squatter_pod.metadata.uid,
        squatter_pod.metadata.resource_version,
    )
    assert after.metadata.deletion_timestamp is None


def test_a_recreated_job_waits_for_its_namesakes_pods(
    api_client: client.ApiClient, namespace: str, controller: Controller
) -> None:
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    create_job(api_client, namespace, played_job("again"))
    old = wait_for("first gang", lambda: len(pods := job_pods(api_client, namespace, "again")) == 2 and pods)
    # Old pods that linger: a finalizer keeps them terminating, as a slow kubelet would.
    for pod in old:
        core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": ["test/hold"]}})
        core.delete_namespaced_pod(pod.metadata.name, namespace)

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again")
    wait_for(
        "job gone",
        lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
    )
    create_job(api_client, namespace, played_job("again"))
    new_uid = wait_for("recreated", lambda: get_job(api_client, namespace, "again")["metadata"]["uid"])

    # Played garbage collector (not run here): the namesake's Service and report access go, its
    # pods finish.
    core.delete_namespaced_service("again", namespace)
    core.delete_namespaced_service_account("respawn-again", namespace)
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.delete_namespaced_role("respawn-again", namespace)
    rbac.delete_namespaced_role_binding("respawn-again", namespace)
    for pod in old:
        core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": None}})
    fresh = wait_for(
        "the new gang",
        lambda: (
            len(
                pods := [
                    p
                    for p in job_pods(api_client, namespace, "again")
                    if p.metadata.owner_references and p.metadata.owner_references[0].uid == new_uid
                ]
            )
            == 2
            and pods
        ),
    )
    assert {p.metadata.name for p in fresh} == {"again-a0-0", "again-a0-1"}
    assert condition(api_client, namespace, "again", "ReconcileError") is None, "waiting is not an error"
