"""End to end: restarts in place (failurePolicy.restartInPlace), real trainers under their pods'
supervisors, the real API server.

A SIGKILLed rank restarts the gang's processes in the same pods (same names, same uids): the
controller tells every supervisor through its pod to stop, then to start attempt 1, and the ranks
resume bitwise on the reference curve. A device fault on a worker's chips still recreates the pods,
off the faulty node. Device faults are written as MindCluster's device plugin writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from devcluster.faults import FaultError
from respawn_protocol import inplace
from tests.support.ascend import device_info, fault_entry
from tests.support.e2e import assert_on_reference_curve, long_run, losses, trainer_job
from tests.support.kube import create_job, final_status, job_pods, job_status, running_controller
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def uids(api: client.ApiClient, namespace: str, job: str) -> dict[str, str]:
    return {p.metadata.name: p.metadata.uid for p in job_pods(api, namespace, job)}


def events(api: client.ApiClient, namespace: str, job: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={job}"
    )
    return sorted(listed.items, key=lambda e: e.metadata.creation_timestamp)


def test_a_killed_rank_restarts_in_place_and_resumes_exactly(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(long_run(3)))
    create_job(api_client, namespace, trainer_job("ref", shared_root))
    create_job(api_client, namespace, trainer_job("llm", shared_root, restartInPlace=True))
    wait_for(
        "a complete checkpoint",
        lambda: (
            job_status(api_client, namespace, "llm").get("lastCompleteCheckpoint", {}).get("step", 0) >= 10
        ),
        180,
    )
    before = uids(api_client, namespace, "llm")
    assert sorted(before) == ["llm-a0-0", "llm-a0-1"]
    # The rank behind, so the kill lands mid-run; its trainer process, not the pod's supervisor.
    killed = None
    for rank in sorted((1, 0), key=lambda r: len(losses(shared_root, namespace, "llm", r))):
        try:
            node_agent.kill_rank(namespace, f"llm-a0-{rank}", rank)
        except FaultError:
            continue
        killed = rank
        break
    assert killed is not None, "no rank of llm was training"
    killed_after = len(losses(shared_root, namespace, "llm", killed))

    status = final_status(api_client, namespace, "llm", 300)
    final_status(api_client, namespace, "ref", 300)
    total = max(r["global_step"] for r in losses(shared_root, namespace, "ref", 0))
    assert killed_after < total, "training finished before the fault was injected"
    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["uncountedRestarts"], status["attempt"]) == (1, 0, 1)
    assert status["podAttempt"] == 0, "the restart kept the pods of attempt 0"
    failure = status["lastFailure"]
    assert (failure["pod"], failure["exitCode"], failure["reason"]) == (f"llm-a0-{killed}", 137, "Error")
    assert f"rank {killed}" in failure["message"], failure  # the supervisor's word for it
    # The same pods, never recreated: the supervisors ran attempt 1 in them.
    assert uids(api_client, namespace, "llm") == before
    for pod in job_pods(api_client, namespace, "llm"):
        assert pod.status.phase == "Succeeded"
        state = inplace.decode_state(pod.metadata.annotations[inplace.STATE])
        assert state is not None and state.attempt == 1
    said = [e.message for e in events(api_client, namespace, "llm") if e.reason == "Restarting"]
    assert len(said) == 1 and "restart counted, in place" in said[0], said
    assert status["lastCompleteCheckpoint"]["step"] == total
    recovery = status["lastRecovery"]
    assert recovery["attempt"] == 1 and recovery["totalSeconds"] > 0, recovery
    role = client.RbacAuthorizationV1Api(api_client).read_namespaced_role("respawn-llm", namespace)
    assert role.rules[0].verbs == ["patch", "get", "list", "watch"]
    assert role.rules[0].resource_names == ["llm-a0-0", "llm-a0-1"]

    for rank in (0, 1):
        records = assert_on_reference_curve(shared_root, namespace, "llm", "ref", rank, total)
        resumed = [r["resumed_from"] for r in records if "resumed_from" in r]
        assert len(resumed) == 2 and resumed[0] is None and resumed[1] is not None
        assert resumed[1]["global_step"] == status["resumedFromStep"]


def test_a_device_fault_still_recreates_the_pods_off_the_node(
    api_client: client.ApiClient, namespace: str, shared_root: Path, node_agent: NodeAgentHandle
) -> None:
    with running_controller(api_client, namespace):  # with the device plugin's ConfigMaps watched
        device_fault_recreates(api_client, namespace, shared_root)


def device_fault_recreates(api_client: client.ApiClient, namespace: str, shared_root: Path) -> None:
    # Long enough to be running when the fault comes on an idle machine; it ends with the namespace.
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(long_run(60)))
    create_job(api_client, namespace, trainer_job("npu", shared_root, restartInPlace=True))

    def supervised() -> list[Any] | None:
        pods = job_pods(api_client, namespace, "npu", 0)
        said = [inplace.decode_state((p.metadata.annotations or {}).get(inplace.STATE)) for p in pods]
        return pods if len(pods) == 2 and all(s and s.state == inplace.RUNNING for s in said) else None

    node = wait_for("attempt 0 running under its supervisors", supervised, 120)[0].spec.node_name
    with device_info(
        api_client, node, fault_entry("Ascend910-0", "SeparateNPU", "80E18402"), unhealthy="Ascend910-0"
    ):

        def recreated() -> list[Any] | None:
            pods = [p for p in job_pods(api_client, namespace, "npu", 1) if p.status.phase == "Running"]
            return pods if len(pods) == 2 else None

        moved = wait_for("attempt 1 in new pods", recreated, 120)
        assert all(p.spec.node_name != node for p in moved)
        status = job_status(api_client, namespace, "npu")
        assert status["lastFailure"]["reason"] == "DeviceFault" and status["lastFailure"]["counted"] is False
        assert "podAttempt" not in status, status
        assert status["faultyNodes"] == [node]
        said = [e.message for e in events(api_client, namespace, "npu") if e.reason == "Restarting"]
        assert len(said) == 1 and "in place" not in said[0], said
