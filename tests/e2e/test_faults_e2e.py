"""Infrastructure faults through the same objects a real cluster shows, with real pod processes.

Eviction, node loss and Ascend device faults restart the job without using its budget, and the
last two keep the next attempt off the node; a worker that dies seconds before the device plugin
reports its chip's fault is the fault's too (the counted restart is converted); a device fault
MindCluster does not act on (NotHandleFault) leaves the job alone; a job that keeps failing runs
out of budget. Device faults are written as MindCluster's Ascend Device Plugin writes
`mindx-dl-deviceinfo-<node>` (Ascend/mind-cluster docs/en/scheduling/api/ascend_device_plugin.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from controller.app import Controller
from tests.support.ascend import device_info, fault_entry
from tests.support.kube import create_job, job_pods, job_status, running_controller
from tests.support.manifests import training_job
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import poll, wait_for

pytestmark = pytest.mark.slow

# Nothing happening cannot be waited for: a harmless fault is watched for this long instead.
QUIET_WINDOW = 30.0


def sleeper_job(
    name: str,
    replicas: int = 1,
    command: list[str] | None = None,
    backoff: tuple[float, float] = (0, 0),
    **policy: Any,
) -> dict[str, Any]:
    return training_job(
        name,
        replicas=replicas,
        image="busybox",
        command=command or ["sleep", "3600"],
        pod={"terminationGracePeriodSeconds": 5},
        backoff=backoff,
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
    with device_info(
        api_client, node, fault_entry("Ascend910-3", "SeparateNPU", "80E18402"), unhealthy="Ascend910-3"
    ):
        moved = running_pods(api_client, namespace, "npu", 1)[0]
        assert moved.spec.node_name != node
        terms = moved.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert terms.node_selector_terms[0].match_expressions[0].values == [node]
        status = job_status(api_client, namespace, "npu")
        assert (status["restarts"], status["uncountedRestarts"], status["faultyNodes"]) == (0, 1, [node])
        assert status["lastFailure"]["reason"] == "DeviceFault" and status["lastFailure"]["counted"] is False
        assert "Ascend910-3 SeparateNPU (80E18402)" in status["lastFailure"]["message"]


def exit_seen(api: client.ApiClient, namespace: str, pod: Any, timeout: int = 60) -> float:
    """time.monotonic() when a watch from `pod`'s version shows its trainer terminated. A watch, not
    a poll: the controller deletes the failed pod right after recording the failure."""
    core = client.CoreV1Api(api)
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={pod.metadata.name}",
        resource_version=pod.metadata.resource_version,
        timeout_seconds=timeout,
    )
    for event in stream:
        statuses = event["object"].status.container_statuses or []
        if any(s.state.terminated is not None for s in statuses):
            return time.monotonic()
    raise AssertionError(f"{pod.metadata.name} not seen terminated within {timeout}s")


def test_an_exit_reported_as_a_device_fault_seconds_later_is_the_faults(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    """The usual order on Ascend: the process dies (137), the device plugin reports the chip 2 s
    later. The restart already recorded as a counted Error becomes an uncounted DeviceFault, and
    the next attempt, still in its backoff, avoids the node."""
    create_job(api_client, namespace, sleeper_job("late", backoff=(15, 15)))
    worker = running_pods(api_client, namespace, "late", 0)[0]
    node = worker.spec.node_name
    node_agent.kill(namespace, "late-a0-0")
    exited = exit_seen(api_client, namespace, worker)
    counted = wait_for(
        "the exit recorded as a counted Error",
        lambda: (s := job_status(api_client, namespace, "late")).get("restarts") == 1 and s,
    )
    assert counted["lastFailure"]["reason"] == "Error" and counted["lastFailure"]["exitCode"] == 137
    time.sleep(max(0.0, exited + 2.0 - time.monotonic()))  # the scenario: the report comes 2 s later
    fault = fault_entry("Ascend910-0", "SeparateNPU", "80E18402")
    with device_info(api_client, node, fault, unhealthy="Ascend910-0"):
        moved = running_pods(api_client, namespace, "late", 1)[0]
        assert moved.spec.node_name != node
        terms = moved.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert terms.node_selector_terms[0].match_expressions[0].values == [node]
        status = job_status(api_client, namespace, "late")
        assert (status["restarts"], status["uncountedRestarts"], status["budgetUsed"]) == (0, 1, 0)
        assert status["faultyNodes"] == [node] and node in status["faultyNodesSince"]
        last = status["lastFailure"]
        assert (last["reason"], last["counted"], last["exitCode"], last["pod"]) == (
            "DeviceFault",
            False,
            137,
            "late-a0-0",
        )
        assert "Ascend910-0 SeparateNPU (80E18402)" in last["message"] and "after the exit" in last["message"]
        events = client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector="involvedObject.name=late,reason=DeviceFault"
        )
        assert [e.type for e in events.items] == ["Warning"], events.items


def test_a_fault_mindcluster_does_not_handle_leaves_the_job_running(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    create_job(api_client, namespace, sleeper_job("harmless"))
    node = running_pods(api_client, namespace, "harmless", 0)[0].spec.node_name
    wait_for("phase Running", lambda: job_status(api_client, namespace, "harmless").get("phase") == "Running")
    with device_info(api_client, node, fault_entry("Ascend910-0", "NotHandleFault", "80E21007")) as cm:
        # The controller has the document (so the window below tests its judgement, not its lag).
        cache = controller.caches.device_configmaps
        assert cache is not None
        key, version = f"kube-system/{cm['metadata']['name']}", cm["metadata"]["resource_version"]
        wait_for(
            "the controller's copy",
            lambda: (cache.get(key) or {}).get("metadata", {}).get("resourceVersion") == version,
        )
        # "Nothing happens" has no event to wait for: watch the job for a fixed window instead.
        changed = poll(
            lambda: (
                (s := job_status(api_client, namespace, "harmless")).get("attempt", 0) != 0
                or s.get("phase") != "Running"
            ),
            QUIET_WINDOW,
            interval=0.5,
        )
        status = job_status(api_client, namespace, "harmless")
        assert not changed, status
        assert (status.get("attempt", 0), status["phase"], status.get("faultyNodes")) == (0, "Running", None)


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
