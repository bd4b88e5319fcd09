"""The node agent against a real API server: scheduling, pod lifecycle and status, faults.

Every wait is a deadline-bounded poll of the API (or of a file a pod writes); nothing sleeps
for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from devcluster.controlplane import ControlPlane
from devcluster.hostsfile import SLOT_SIZE, HostsEntry, HostsTable
from devcluster.podsetup import expand
from devcluster.podstatus import ContainerState, Terminated, get_phase
from devcluster.scheduler import schedule
from devcluster.statedir import process_start_time
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import DEADLINE, wait_for

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"


# -- helpers --------------------------------------------------------------------------------------


def pod_manifest(name: str, command: list[str], *, restart: str = "Never", **spec: Any) -> Obj:
    container = {"name": "main", "image": "busybox", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            **spec,
        },
    }


class Pods:
    """Create/read pods in the test namespace; long-running ones are deleted at teardown."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.created: list[str] = []

    def create(self, manifest: Obj) -> Obj:
        resp = self.core.create_namespaced_pod(self.namespace, manifest, _preload_content=False)
        self.created.append(manifest["metadata"]["name"])
        return json.loads(resp.data)

    def get(self, name: str) -> Obj | None:
        try:
            return json.loads(
                self.core.read_namespaced_pod(name, self.namespace, _preload_content=False).data
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def fetch(self, name: str) -> Obj:
        pod = self.get(name)
        assert pod is not None, f"pod {name} does not exist"
        return pod

    def wait(
        self, name: str, predicate: Callable[[Obj], Any], *, what: str = "", timeout: float = DEADLINE
    ) -> Obj:
        def check() -> Obj | None:
            pod = self.get(name)
            return pod if pod is not None and predicate(pod) else None

        return wait_for(f"{name}: {what}", check, timeout)

    def watch(self, name: str, resource_version: str, *, until: str, timeout: int = 60) -> list[Obj]:
        """Events for one pod from `resource_version` up to the first of type `until`."""
        resp = self.core.list_namespaced_pod(
            self.namespace,
            field_selector=f"metadata.name={name}",
            watch=True,
            resource_version=resource_version,
            timeout_seconds=timeout,
            _preload_content=False,
        )
        events = []
        try:
            for line in iter_resp_lines(resp):
                if line:
                    events.append(json.loads(line))
                if events and events[-1]["type"] == until:
                    return events
        finally:
            resp.close()
        raise AssertionError(f"no {until} event for {name} within {timeout}s: {[e['type'] for e in events]}")

    def wait_phase(self, name: str, *phases: str) -> Obj:
        return self.wait(
            name, lambda p: p.get("status", {}).get("phase") in phases, what=f"phase in {phases}"
        )

    def wait_running(self, name: str) -> Obj:
        return self.wait(name, lambda p: condition(p, "Ready") == "True", what="Ready")

    def wait_gone(self, name: str, timeout: float = DEADLINE) -> None:
        wait_for(f"{name} deleted", lambda: self.get(name) is None, timeout)

    def delete(self, name: str, grace: int | None = None) -> None:
        self.core.delete_namespaced_pod(
            name, self.namespace, grace_period_seconds=grace, _preload_content=False
        )

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self.delete(name, grace=0)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


def condition(pod: Obj, kind: str, field: str = "status") -> Any:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind:
            return c.get(field)
    return None


def container_status(pod: Obj, name: str = "main") -> Obj:
    return next(s for s in pod["status"]["containerStatuses"] if s["name"] == name)


def terminated(pod: Obj, name: str = "main") -> Obj:
    return container_status(pod, name)["state"]["terminated"]


def pid_dead(pid: int) -> bool:
    return process_start_time(pid) is None


@pytest.fixture
def pods(api_client: client.ApiClient, namespace: str, node_agent: NodeAgentHandle) -> Iterator[Pods]:
    helper = Pods(api_client, namespace)
    yield helper
    helper.cleanup()


# -- exit codes and status ------------------------------------------------------------------------


def test_exit_code_3_fails_with_error(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(pod_manifest("exit3", ["sh", "-c", "echo bye; exit 3"]))
    pod = pods.wait_phase("exit3", "Failed", "Succeeded")

    assert pod["status"]["phase"] == "Failed"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (3, "Error")
    assert state["startedAt"] and state["finishedAt"] and state["containerID"].startswith("devcluster://")
    status = container_status(pod)
    assert (status["ready"], status["started"], status["restartCount"]) == (False, False, 0)
    assert status["image"] == "busybox" and status["imageID"]
    assert pod["spec"]["nodeName"] in node_agent.nodes
    assert pod["status"]["podIP"].startswith("127.") and pod["status"]["hostIP"].startswith("127.")
    assert pod["status"]["startTime"]
    assert condition(pod, "PodScheduled") == "True"
    assert condition(pod, "Initialized") == "True"
    assert (condition(pod, "Ready"), condition(pod, "Ready", "reason")) == ("False", "PodFailed")
    assert condition(pod, "ContainersReady", "reason") == "PodFailed"
    assert condition(pod, "PodReadyToStartContainers") == "False"
    assert node_agent.log(pods.namespace, "exit3") == "bye\n"


def test_exit_0_succeeds_completed(pods: Pods) -> None:
    pods.create(pod_manifest("exit0", ["sh", "-c", "exit 0"]))
    pod = pods.wait_phase("exit0", "Failed", "Succeeded")

    assert pod["status"]["phase"] == "Succeeded"
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (0, "Completed")
    assert condition(pod, "Ready", "reason") == "PodCompleted"
    assert (condition(pod, "Initialized"), condition(pod, "Initialized", "reason")) == (
        "True",
        "PodCompleted",
    )


def test_running_pod_status(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(pod_manifest("runner", ["sleep", "300"]))
    pod = pods.wait_running("runner")

    assert pod["status"]["phase"] == "Running"
    status = container_status(pod)
    assert status["state"]["running"]["startedAt"] and (status["ready"], status["started"]) == (True, True)
    for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"):
        assert condition(pod, kind) == "True", kind
    record = node_agent.pod_process(pods.namespace, "runner")
    assert Path(f"/proc/{record.pid}/cmdline").read_text().split("\0")[:2] == ["sleep", "300"]


def test_sigkill_reports_137(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(pod_manifest("killed", ["sh", "-c", "sleep 300 & wait"]))
    pods.wait_running("killed")
    record = node_agent.kill(pods.namespace, "killed", signal.SIGKILL)
    pod = pods.wait_phase("killed", "Failed", "Succeeded")

    state = terminated(pod)
    assert (pod["status"]["phase"], state["exitCode"], state["reason"], state.get("signal")) == (
        "Failed",
        137,
        "Error",
        9,
    )
    # The container's children die with it: nothing is left in its process group.
    wait_for("process group of the killed container to be empty", lambda: not record.group_members())


def test_kill_with_term_through_the_cli(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(pod_manifest("termed", ["sleep", "300"]))
    pods.wait_running("termed")
    result = node_agent.fault("kill", f"{pods.namespace}/termed", "--signal", "TERM")
    assert "pid" in result.stdout
    pod = pods.wait_phase("termed", "Failed", "Succeeded")
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (143, "Error")


def test_oom_reports_oomkilled(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(pod_manifest("oomed", ["sleep", "300"]))
    pods.wait_running("oomed")
    node_agent.fault("oom", f"{pods.namespace}/oomed")
    pod = pods.wait_phase("oomed", "Failed", "Succeeded")
    assert (pod["status"]["phase"], terminated(pod)["exitCode"], terminated(pod)["reason"]) == (
        "Failed",
        137,
        "OOMKilled",
    )


def test_container_without_command_fails_clearly(pods: Pods) -> None:
    manifest = pod_manifest("nocmd", [])
    del manifest["spec"]["containers"][0]["command"]
    pods.create(manifest)
    pod = pods.wait_phase("nocmd", "Failed", "Succeeded")
    state = terminated(pod)
    assert (state["reason"], state["exitCode"]) == ("StartError", 128)
    assert "no command" in state["message"] and "ignores images" in state["message"]


def test_missing_executable_is_a_start_error(pods: Pods) -> None:
    pods.create(pod_manifest("nosuch", ["no-such-binary-xyz"]))
    pod = pods.wait_phase("nosuch", "Failed", "Succeeded")
    assert terminated(pod)["reason"] == "StartError"
    assert "executable file not found" in terminated(pod)["message"]


def test_on_failure_restarts_and_counts(pods: Pods, tmp_path: Path) -> None:
    script = "if [ -f /data/once ]; then exit 0; fi; touch /data/once; exit 1"
    pods.create(
        pod_manifest(
            "retry",
            ["sh", "-c", script],
            restart="OnFailure",
            volumes=[{"name": "data", "hostPath": {"path": str(tmp_path)}}],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        )
    )
    pod = pods.wait_phase("retry", "Failed", "Succeeded")
    status = container_status(pod)
    assert pod["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["reason"] == "Completed"


def test_init_container_runs_first(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(
        pod_manifest(
            "withinit",
            ["cat", "/work/msg"],
            initContainers=[
                {
                    "name": "init",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo from-init > /work/msg"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            volumes=[{"name": "work", "emptyDir": {}}],
            container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        )
    )
    pod = pods.wait_phase("withinit", "Failed", "Succeeded")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert node_agent.log(pods.namespace, "withinit") == "from-init\n"


def test_children_do_not_outlive_their_container(
    pods: Pods, node_agent: NodeAgentHandle, tmp_path: Path
) -> None:
    script = "sleep 300 & echo $! > /data/child; exit 0"
    pods.create(
        pod_manifest(
            "forker",
            ["sh", "-c", script],
            volumes=[{"name": "data", "hostPath": {"path": str(tmp_path)}}],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        )
    )
    pods.wait_phase("forker", "Succeeded", "Failed")
    child = int((tmp_path / "child").read_text())
    wait_for(f"background child {child} to be killed", lambda: pid_dead(child))


# -- deletion and eviction ------------------------------------------------------------------------


def test_delete_sends_sigterm_then_removes_the_pod(pods: Pods, tmp_path: Path) -> None:
    script = (
        "trap 'echo term > /data/got-term; exit 0' TERM; echo up > /data/up; while true; do sleep 0.1; done"
    )
    pods.create(
        pod_manifest(
            "victim",
            ["sh", "-c", script],
            volumes=[{"name": "data", "hostPath": {"path": str(tmp_path)}}],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        )
    )
    pods.wait_running("victim")
    wait_for("the trap to be installed", lambda: (tmp_path / "up").exists())
    rv = pods.fetch("victim")["metadata"]["resourceVersion"]
    pods.delete("victim")

    wait_for("SIGTERM to reach the container", lambda: (tmp_path / "got-term").exists())
    assert (tmp_path / "got-term").read_text() == "term\n"
    # Watched from before the delete: a terminal status is written before the object goes.
    events = pods.watch("victim", rv, until="DELETED")
    last_update = [e["object"] for e in events if e["type"] == "MODIFIED"][-1]
    assert last_update["metadata"]["deletionTimestamp"]
    assert last_update["status"]["phase"] == "Succeeded"
    assert terminated(last_update)["exitCode"] == 0
    assert pods.get("victim") is None


def test_grace_period_ends_in_sigkill(pods: Pods, node_agent: NodeAgentHandle) -> None:
    pods.create(
        pod_manifest(
            "stubborn",
            ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
            terminationGracePeriodSeconds=1,
        )
    )
    pods.wait_running("stubborn")
    record = node_agent.pod_process(pods.namespace, "stubborn")
    pods.delete("stubborn")
    pods.wait_gone("stubborn", timeout=30)
    assert pid_dead(record.pid)


def test_deleting_a_finished_pod_removes_it(pods: Pods) -> None:
    pods.create(pod_manifest("done", ["true"]))
    pods.wait_phase("done", "Succeeded")
    pods.delete("done")
    pods.wait_gone("done")


def test_eviction_adds_disruption_target(pods: Pods, node_agent: NodeAgentHandle) -> None:
    # Ignoring SIGTERM keeps the pod terminating for its grace period, long enough to look at it.
    pods.create(
        pod_manifest(
            "evictee",
            ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
            terminationGracePeriodSeconds=3,
        )
    )
    pods.wait_running("evictee")
    node_agent.evict(pods.namespace, "evictee")

    pod = pods.wait(
        "evictee", lambda p: condition(p, "DisruptionTarget") == "True", what="DisruptionTarget", timeout=10
    )
    assert condition(pod, "DisruptionTarget", "reason") == "EvictionByEvictionAPI"
    assert pod["metadata"].get("deletionTimestamp")
    pods.wait_gone("evictee")


# -- scheduling -----------------------------------------------------------------------------------


def test_not_in_affinity_on_every_node_is_unschedulable(pods: Pods, node_agent: NodeAgentHandle) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "kubernetes.io/hostname",
                                "operator": "NotIn",
                                "values": list(node_agent.nodes),
                            }
                        ]
                    }
                ]
            }
        }
    }
    pods.create(pod_manifest("nowhere", ["true"], affinity=affinity))
    pod = pods.wait("nowhere", lambda p: condition(p, "PodScheduled") == "False", what="PodScheduled=False")
    assert condition(pod, "PodScheduled", "reason") == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in condition(pod, "PodScheduled", "message")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_not_in_affinity_avoids_a_node(pods: Pods, node_agent: NodeAgentHandle) -> None:
    avoided, other = node_agent.nodes[0], node_agent.nodes[1]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [avoided]}]}
                ]
            }
        }
    }
    for i in range(3):
        pods.create(pod_manifest(f"avoid-{i}", ["true"], affinity=affinity))
    for i in range(3):
        pod = pods.wait(f"avoid-{i}", lambda p: p["spec"].get("nodeName"), what="bound")
        assert pod["spec"]["nodeName"] == other


def test_ascend_requests_fit_per_node(pods: Pods, node_agent: NodeAgentHandle) -> None:
    resources = {"limits": {"huawei.com/Ascend910": "8"}}
    pods.create(pod_manifest("npu-a", ["sleep", "300"], container={"resources": resources}))
    pods.create(pod_manifest("npu-b", ["sleep", "300"], container={"resources": resources}))
    nodes = {pods.wait_running(n)["spec"]["nodeName"] for n in ("npu-a", "npu-b")}
    assert nodes == set(node_agent.nodes)
    # Both nodes' 8 Ascend are taken now; one more cannot fit anywhere.
    pods.create(
        pod_manifest("npu-c", ["true"], container={"resources": {"limits": {"huawei.com/Ascend910": "1"}}})
    )
    pod = pods.wait("npu-c", lambda p: condition(p, "PodScheduled") == "False", what="unschedulable")
    assert "Insufficient huawei.com/Ascend910" in condition(pod, "PodScheduled", "message")
    # Freeing one node lets it schedule.
    pods.delete("npu-a", grace=0)
    pods.wait("npu-c", lambda p: p["spec"].get("nodeName"), what="scheduled after resources were freed")


def test_too_large_ascend_request_is_unschedulable(pods: Pods) -> None:
    pods.create(
        pod_manifest("npu-9", ["true"], container={"resources": {"limits": {"huawei.com/Ascend910": "9"}}})
    )
    pod = pods.wait("npu-9", lambda p: condition(p, "PodScheduled") == "False", what="unschedulable")
    assert (
        condition(pod, "PodScheduled", "message")
        == "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910."
    )


def test_taints_and_tolerations(
    pods: Pods, node_agent: NodeAgentHandle, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    tainted = node_agent.nodes[0]
    patch = {"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}}
    core.patch_node(tainted, patch, _preload_content=False, _content_type=MERGE)
    try:
        selector = {"kubernetes.io/hostname": tainted}
        pods.create(pod_manifest("intolerant", ["true"], nodeSelector=selector))
        pod = pods.wait("intolerant", lambda p: condition(p, "PodScheduled") == "False", what="unschedulable")
        assert "untolerated taint {dedicated: x}" in condition(pod, "PodScheduled", "message")
        toleration = [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]
        pods.create(pod_manifest("tolerant", ["true"], nodeSelector=selector, tolerations=toleration))
        assert (
            pods.wait("tolerant", lambda p: p["spec"].get("nodeName"), what="bound")["spec"]["nodeName"]
            == tainted
        )
    finally:
        core.patch_node(tainted, {"spec": {"taints": None}}, _preload_content=False, _content_type=MERGE)


# -- what a container sees ------------------------------------------------------------------------


PROBE = textwrap.dedent("""
    import json, os, socket, sys, time
    out = {"env": {k: v for k, v in os.environ.items() if k.startswith("T_")},
           "hostname": socket.gethostname(),
           "hostpath": open("/in/input.txt").read(),
           "config": open("/cfg/greeting").read()}
    open("/claim/written-by-pod", "w").write("pvc")
    deadline = time.time() + 40
    while True:
        try:
            out["peer"] = socket.gethostbyname(sys.argv[1])
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    out["self"] = socket.gethostbyname(sys.argv[2])
    print(json.dumps(out))
""")


def test_env_volumes_and_name_resolution(
    pods: Pods, node_agent: NodeAgentHandle, tmp_path: Path, api_client: client.ApiClient
) -> None:
    ns = pods.namespace
    (tmp_path / "input.txt").write_text("from the host")
    client.CoreV1Api(api_client).create_namespaced_config_map(
        ns,
        {"metadata": {"name": "cfg"}, "data": {"greeting": "hello", "mode": "fast"}},
        _preload_content=False,
    )
    field_refs = {
        "T_NAME": "metadata.name",
        "T_NS": "metadata.namespace",
        "T_UID": "metadata.uid",
        "T_LABEL": "metadata.labels['app']",
        "T_ANNOTATION": "metadata.annotations['note']",
        "T_NODE": "spec.nodeName",
        "T_SA": "spec.serviceAccountName",
        "T_POD_IP": "status.podIP",
        "T_HOST_IP": "status.hostIP",
    }
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field_refs.items()]
    env += [
        {"name": "T_MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "T_EXPANDED", "value": "$(T_NAME)@$(T_NODE)"},
    ]
    peer = f"w1.gang.{ns}.svc"
    pods.create(
        pod_manifest(
            "probe",
            ["python", "-c", PROBE, peer, f"w0.gang.{ns}.svc.cluster.local"],
            metadata={"labels": {"app": "trainer"}, "annotations": {"note": "n1"}},
            hostname="w0",
            subdomain="gang",
            volumes=[
                {"name": "in", "hostPath": {"path": str(tmp_path)}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "ckpt"}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
            ],
            container={
                "env": env,
                "volumeMounts": [
                    {"name": "in", "mountPath": "/in"},
                    {"name": "claim", "mountPath": "/claim"},
                    {"name": "cfg", "mountPath": "/cfg"},
                ],
            },
        )
    )
    probe = pods.wait_running("probe")
    # The peer starts after the probe is already running: its name must appear in the probe's /etc/hosts.
    pods.create(pod_manifest("peer", ["sleep", "300"], hostname="w1", subdomain="gang"))
    peer_pod = pods.wait_running("peer")
    probe = pods.wait_phase("probe", "Succeeded", "Failed")
    log = node_agent.log(ns, "probe")
    assert probe["status"]["phase"] == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])

    meta = probe["metadata"]
    assert seen["env"] == {
        "T_NAME": "probe",
        "T_NS": ns,
        "T_UID": meta["uid"],
        "T_LABEL": "trainer",
        "T_ANNOTATION": "n1",
        "T_NODE": probe["spec"]["nodeName"],
        "T_SA": "default",
        "T_POD_IP": probe["status"]["podIP"],
        "T_HOST_IP": probe["status"]["hostIP"],
        "T_MODE": "fast",
        "T_EXPANDED": f"probe@{probe['spec']['nodeName']}",
    }
    assert seen["hostname"] == "w0"
    assert seen["hostpath"] == "from the host"
    assert seen["config"] == "hello"
    assert seen["peer"] == peer_pod["status"]["podIP"]
    assert seen["self"] == probe["status"]["podIP"]
    assert probe["status"]["podIP"] != peer_pod["status"]["podIP"]
    assert (node_agent.state_dir / "volumes" / ns / "ckpt" / "written-by-pod").read_text() == "pvc"


def test_in_cluster_client_authenticates_as_the_pod_service_account(
    pods: Pods, node_agent: NodeAgentHandle
) -> None:
    script = textwrap.dedent("""
        from kubernetes import client, config
        config.load_incluster_config()
        review = client.AuthenticationV1Api().create_self_subject_review({}, _preload_content=False)
        print(review.data.decode())
    """)
    pods.create(pod_manifest("incluster", ["python", "-c", script]))
    pod = pods.wait_phase("incluster", "Succeeded", "Failed")
    log = node_agent.log(pods.namespace, "incluster")
    assert pod["status"]["phase"] == "Succeeded", log
    review = json.loads(log.strip().splitlines()[-1])
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{pods.namespace}:default"


# -- nodes ----------------------------------------------------------------------------------------


def test_nodes_registered_with_capacity_and_lease(
    node_agent: NodeAgentHandle, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    for name in node_agent.nodes:
        node = json.loads(core.read_node(name, _preload_content=False).data)
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
        assert node["status"]["allocatable"]["huawei.com/Ascend910"] == "8"
        assert {"cpu", "memory", "pods"} <= set(node["status"]["capacity"])
        assert not node["spec"].get("taints"), "the not-ready taint the API server adds must be gone"
        lease = json.loads(
            client.CoordinationV1Api(api_client)
            .read_namespaced_lease(name, "kube-node-lease", _preload_content=False)
            .data
        )
        assert lease["spec"]["holderIdentity"] == name and lease["spec"]["renewTime"]


def _ready(api_client: client.ApiClient, node: str) -> tuple[str, str, list[str]]:
    obj = json.loads(client.CoreV1Api(api_client).read_node(node, _preload_content=False).data)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    return ready["status"], ready.get("reason", ""), [t["key"] for t in obj["spec"].get("taints") or []]


def test_node_not_ready_crash_and_partition(
    node_agent_factory: Callable[..., NodeAgentHandle], api_client: client.ApiClient, namespace: str
) -> None:
    agent = node_agent_factory(nodes=2)
    crashed, partitioned = agent.nodes
    pods = Pods(api_client, namespace)
    try:
        pods.create(pod_manifest("on-crashed", ["sleep", "300"], nodeName=crashed))
        pods.create(pod_manifest("on-partitioned", ["sleep", "300"], nodeName=partitioned))
        pods.create(pod_manifest("force-deleted", ["sleep", "300"], nodeName=partitioned))
        for name in ("on-crashed", "on-partitioned", "force-deleted"):
            pods.wait_running(name)
        crashed_pid = agent.pod_process(namespace, "on-crashed").pid
        partitioned_pid = agent.pod_process(namespace, "on-partitioned").pid
        orphan_pid = agent.pod_process(namespace, "force-deleted").pid

        result = agent.fault("node-not-ready", crashed, "--kill-pods")
        assert "NotReady" in result.stdout
        agent.node_not_ready(partitioned)
        for node in agent.nodes:
            status, reason, taints = _ready(api_client, node)
            assert (status, reason) == ("Unknown", "NodeStatusUnknown")
            assert "node.kubernetes.io/unreachable" in taints
        wait_for("the crashed node's process to die", lambda: pid_dead(crashed_pid))
        assert not pid_dead(partitioned_pid), "a partitioned node's processes keep running"
        # Nobody reports for a down node: the API still shows the pod Running.
        assert pods.fetch("on-crashed")["status"]["phase"] == "Running"
        # Force-deleted while partitioned: the process runs on until the node is back.
        pods.delete("force-deleted", grace=0)
        pods.wait_gone("force-deleted")
        assert not pid_dead(orphan_pid)

        agent.fault("node-ready", crashed)
        agent.node_ready(partitioned)
        assert _ready(api_client, crashed) == ("True", "KubeletReady", [])
        pod = pods.wait_phase("on-crashed", "Failed")
        assert terminated(pod)["reason"] == "ContainerStatusUnknown"
        assert pods.fetch("on-partitioned")["status"]["phase"] == "Running"
        assert not pid_dead(partitioned_pid)
        wait_for("the force-deleted pod's process to be killed", lambda: pid_dead(orphan_pid))
    finally:
        pods.cleanup()


def test_image_entrypoint_stands_in_for_the_image(
    node_agent_factory: Callable[..., NodeAgentHandle], api_client: client.ApiClient, namespace: str
) -> None:
    agent = node_agent_factory(extra_args=("--image-entrypoint", "respawn/echo=echo from-entrypoint"))
    pods = Pods(api_client, namespace)
    manifest = pod_manifest("imaged", [], nodeName=agent.nodes[0], container={"image": "respawn/echo:v1"})
    del manifest["spec"]["containers"][0]["command"]
    manifest["spec"]["containers"][0]["args"] = ["and-args"]
    pods.create(manifest)
    assert pods.wait_phase("imaged", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert agent.log(namespace, "imaged") == "from-entrypoint and-args\n"


def test_agent_shutdown_stops_its_pods(
    node_agent_factory: Callable[..., NodeAgentHandle], api_client: client.ApiClient, namespace: str
) -> None:
    agent = node_agent_factory()
    pods = Pods(api_client, namespace)
    pods.create(pod_manifest("doomed", ["sleep", "300"], nodeName=agent.nodes[0]))
    pods.wait_running("doomed")
    pid = agent.pod_process(namespace, "doomed").pid

    returncode, leftovers = agent.stop()
    assert (returncode, leftovers) == (0, [])
    assert pid_dead(pid)
    pod = pods.fetch("doomed")
    assert pod["status"]["phase"] == "Failed"
    assert condition(pod, "DisruptionTarget", "reason") == "TerminationByKubelet"
    assert _ready(api_client, agent.nodes[0])[0] == "False"
    pods.cleanup()


def test_leftovers_of_a_sigkilled_agent_are_killed(
    node_agent_factory: Callable[..., NodeAgentHandle], api_client: client.ApiClient, namespace: str
) -> None:
    agent = node_agent_factory()
    pods = Pods(api_client, namespace)
    # A shell with a child: PR_SET_PDEATHSIG kills the shell with the agent, not its child.
    pods.create(pod_manifest("orphan", ["sh", "-c", "sleep 300 & wait"], nodeName=agent.nodes[0]))
    pods.wait_running("orphan")
    record = agent.pod_process(namespace, "orphan")
    wait_for("the shell and its child", lambda: len(record.group_members()) == 2)

    os.kill(agent.process.pid, signal.SIGKILL)
    agent.process.wait(10)
    _, leftovers = agent.stop()
    assert leftovers, "the child should have outlived the SIGKILLed agent until stop()"
    assert all(pid_dead(pid) for pid in leftovers)
    assert not record.group_members()
    pods.cleanup()


def test_agent_rides_out_an_api_server_restart(
    pods: Pods, node_agent: NodeAgentHandle, control_plane: ControlPlane, api_client: client.ApiClient
) -> None:
    pods.create(pod_manifest("before", ["sleep", "300"]))
    pods.wait_running("before")
    control_plane.stop_apiserver(signal.SIGKILL)  # a crash: watches die without a goodbye
    control_plane.start_apiserver()

    # Watches broke (and may come back 410 Gone): the agent must relist and carry on.
    pods.create(pod_manifest("after", ["true"]))
    pods.wait_phase("after", "Succeeded")
    pods.delete("before")
    pods.wait_gone("before")
    assert node_agent.alive()
    for node in node_agent.nodes:
        assert _ready(api_client, node)[0] == "True"


# -- pure parts -----------------------------------------------------------------------------------


def test_hosts_file_slots_are_stable(tmp_path: Path) -> None:
    table = HostsTable(tmp_path)
    table.put("a", HostsEntry("ns", "job-0", "127.1.0.1", "w0", "gang"))
    path = table.path("ns")
    before = path.read_text()
    table.put("b", HostsEntry("ns", "job-1", "127.1.0.2", "w1", "gang"))
    table.put("c", HostsEntry("other", "x", "127.1.0.3", "x", None))
    after = path.read_text()
    assert after.startswith(before), "adding a pod only appends a slot"
    table.remove("a")
    text = path.read_text()
    assert len(text) == len(after), "the file is never truncated"
    assert "127.1.0.1" not in text and "w1.gang.ns.svc.cluster.local" in text
    assert " x" not in text, "short names of another namespace stay out"
    assert all(len(line) + 1 == SLOT_SIZE for line in text.splitlines()[-2:])
    table.close()


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)-$", env) == "1-two-$(C)-$(A)-$"


def test_schedule_explains_every_node() -> None:
    def node(name: str, ascend: str) -> Obj:
        return {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "4", "memory": "1Gi", "pods": "10", "huawei.com/Ascend910": ascend},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [{"name": "c", "resources": {"requests": {"huawei.com/Ascend910": "4"}}}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            },
        },
    }
    decision = schedule(pod, [node("a", "8"), node("b", "2"), node("c", "8")], {})
    assert decision.node == "c"
    decision = schedule(pod, [node("a", "8"), node("b", "2")], {})
    assert decision.message == (
        "0/2 nodes are available: 1 Insufficient huawei.com/Ascend910, "
        "1 node(s) didn't match Pod's node affinity/selector."
    )


def _container(state: str, exit_code: int = 0, *, last: int | None = None) -> ContainerState:
    c = ContainerState("c", "image")
    if state == "running":
        c.set_running("2026-01-01T00:00:00Z", "devcluster://x")
    elif state == "terminated":
        c.set_terminated(
            Terminated(exit_code, "Error" if exit_code else "Completed", None, "2026-01-01T00:00:01Z")
        )
    elif state == "backoff":
        c.set_waiting("CrashLoopBackOff")
    if last is not None:
        c.last_terminated = Terminated(last, "Error", None, "2026-01-01T00:00:01Z")
    return c


@pytest.mark.parametrize(
    ("policy", "containers", "terminal", "phase"),
    [
        ("Never", [("waiting", 0, None)], False, "Pending"),
        ("Never", [("running", 0, None), ("terminated", 1, None)], False, "Running"),
        ("Never", [("terminated", 0, None), ("terminated", 1, None)], False, "Failed"),
        ("Never", [("terminated", 0, None)], False, "Succeeded"),
        ("OnFailure", [("backoff", 0, 1)], False, "Running"),
        ("OnFailure", [("terminated", 0, None)], False, "Succeeded"),
        ("Always", [("terminated", 0, None)], False, "Running"),
        ("Always", [("terminated", 143, None)], True, "Failed"),
        ("Always", [("terminated", 0, None)], True, "Succeeded"),
    ],
)
def test_phase_follows_kubelet(
    policy: str, containers: list[tuple[str, int, int | None]], terminal: bool, phase: str
) -> None:
    regular = [_container(state, code, last=last) for state, code, last in containers]
    assert get_phase(policy, [], regular, pod_is_terminal=terminal) == phase


def test_failed_init_container_fails_a_never_pod() -> None:
    init = [_container("terminated", 2)]
    assert get_phase("Never", init, [_container("waiting")], pod_is_terminal=False) == "Failed"
    assert get_phase("OnFailure", init, [_container("waiting")], pod_is_terminal=False) == "Pending"
