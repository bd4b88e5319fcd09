"""End to end: a gang the cluster cannot place says so. The node agent plays the scheduler and
writes `PodScheduled=False/Unschedulable` as kube-scheduler does; the job's `Scheduled` condition
quotes it within seconds, with one Warning event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.kube import create_job, job_status, running_controller
from tests.support.manifests import training_job
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def controller(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace, device_faults=False) as running:
        yield running


def test_a_gang_that_does_not_fit_quotes_the_scheduler(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    job = training_job("big", command=["sleep", "3600"])
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"huawei.com/Ascend910": 16}}
    create_job(api_client, namespace, job)

    def waiting() -> dict[str, Any] | None:
        conditions = job_status(api_client, namespace, "big").get("conditions") or []
        return next((c for c in conditions if c["type"] == "Scheduled" and c["status"] == "False"), None)

    condition = wait_for("the Scheduled condition", waiting, 60)
    assert condition["reason"] == "Unschedulable"
    assert condition["message"].startswith("attempt 0: 0/")
    assert "nodes are available" in condition["message"] and "huawei.com/Ascend910" in condition["message"]

    def quoted() -> list[Any]:
        events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        return [e for e in events if e.type == "Warning" and e.reason == "Unschedulable"]

    # The event follows the status write that set the condition.
    [event] = wait_for("the Warning event", quoted, 30)
    assert event.message == condition["message"]
    assert job_status(api_client, namespace, "big")["phase"] == "Pending"
