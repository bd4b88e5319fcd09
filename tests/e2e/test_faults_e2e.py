"""Infrastructure faults through the same objects a real cluster shows, with real pod processes.

Eviction, node loss and Ascend device faults restart the job without using its budget, and the
last two keep the next attempt off the node; a job that keeps failing runs out of budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.kube import create_job, job_pods, job_status, running_controller
from tests.support.manifests import training_job
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def sleeper_job(
    name: str, replicas: int = 1, command: list[str] | None = None, **policy: Any
) -> dict[str, Any]:
    return training_job(
        name,
        replicas=replicas,
        image="busybox",
        command=command or ["sleep", "3600"],
        pod={"terminationGracePeriodSeconds": 5},
        backoff=(0, 0),
        **policy,
    )


@pytest.fixture
def controller(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace) as c:
        yield c


def running_pods(
    api: client.ApiClient, namespace: str, job: str, attempt: int, replicas: int = 1
) -> list[Any]:
    def probe() -> list[Any] | None:
        running = [p for p in job_pods(api, namespace, job, attempt) if p.status.phase == "Running"]
        return running if len(running) == replicas else None

    return wait_for(f"{job} attempt {attempt} running", probe, 60)


def test_eviction_restarts_without_using_the_budget(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    create_job(api_client, namespace, sleeper_job("evict", replicas=2))
    running_pods(api_client, namespace, "evict", 0, replicas=2)
    node_agent.evict(namespace, "evict-a0-0")
    running_pods(api_client, namespace, "evict", 1, replicas=2)
    status = job_status(api_client, namespace, "evict")
    assert (status["restarts"], status["uncountedRestarts"]) == (0, 1)
    assert status["lastFailure"]["reason"] == "Evicted" and status["lastFailure"]["counted"] is False


def test_lost_node_restarts_elsewhere_without_using_the_budget(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    create_job(api_client, namespace, sleeper_job("lost", nodeLostTimeoutSeconds=1))
    node = running_pods(api_client, namespace, "lost", 0)[0].spec.node_name
    node_agent.node_not_ready(node)
    try:
        moved = running_pods(api_client, namespace, "lost", 1)[0]
        assert moved.spec.node_name != node
        status = job_status(api_client, namespace, "lost")
        assert (status["restarts"], status["uncountedRestarts"]) == (0, 1)
        assert status["lastFailure"]["reason"] == "NodeLost" and status["faultyNodes"] == [node]
    finally:
        node_agent.node_ready(node)


def test_device_fault_moves_the_next_attempt_off_the_node(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    create_job(api_client, namespace, sleeper_job("npu"))
    node = running_pods(api_client, namespace, "npu", 0)[0].spec.node_name
    core = client.CoreV1Api(api_client)
    name = f"mindx-dl-deviceinfo-{node}"
    core.create_namespaced_config_map(
        "kube-system",
        {
            "metadata": {"name": name},
            "data": {
                "DeviceInfoCfg": json.dumps(
                    {
                        "DeviceInfo": {
                            "DeviceList": {
                                "huawei.com/Ascend910": "Ascend910-0,Ascend910-1,Ascend910-2",
                                "huawei.com/Ascend910-Unhealthy": "Ascend910-3",
                            }
                        }
                    }
                )
            },
        },
    )
    try:
        moved = running_pods(api_client, namespace, "npu", 1)[0]
        assert moved.spec.node_name != node
        terms = moved.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert terms.node_selector_terms[0].match_expressions[0].values == [node]
        status = job_status(api_client, namespace, "npu")
        assert status["lastFailure"]["reason"] == "DeviceFault" and status["uncountedRestarts"] == 1
    finally:
        core.delete_namespaced_config_map(name, "kube-system")


def test_budget_is_enforced(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    create_job(api_client, namespace, sleeper_job("crashy", command=["sh", "-c", "exit 1"], maxRestarts=1))
    status = wait_for(
        "Failed",
        lambda: (s := job_status(api_client, namespace, "crashy")).get("phase") == "Failed" and s,
        60,
    )
    assert (status["restarts"], status["attempt"]) == (1, 1)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RestartBudgetExceeded" and "exhausted" in failed["message"]
