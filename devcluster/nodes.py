"""The agent's Nodes: registration, heartbeats, and the NotReady fault.

Heartbeats are what kubelet sends: the Node's status (conditions with lastHeartbeatTime,
capacity/allocatable, addresses, nodeInfo) and a Lease in kube-node-lease renewed every
interval. There is no node lifecycle controller in the tests (no kube-controller-manager), so
when a node is made NotReady through its marker file (`fault node-not-ready`), this module also
does what that controller would: conditions to Unknown ("Kubelet stopped posting node
status.") and the `node.kubernetes.io/unreachable` NoSchedule/NoExecute taints. Heartbeats
for that node stop until the marker goes away.
"""

from __future__ import annotations

import datetime
import logging
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from devcluster.kubeapi import MERGE, SMP, TRANSIENT, Kube, call, now, status_of
from devcluster.statedir import StateDir

log = logging.getLogger(__name__)
Obj = dict[str, Any]

LEASE_NAMESPACE = "kube-node-lease"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
AGENT_LABEL = "devcluster.respawn.dev/node-agent"
_HEALTHY = {
    "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
    "MemoryPressure": ("False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ip: str
    capacity: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Obj, ...] = ()


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class NodeManager:
    def __init__(
        self,
        kube: Kube,
        nodes: list[NodeSpec],
        state: StateDir,
        *,
        heartbeat_interval: float,
        lease_duration: int,
        on_down: Callable[[str], None],
        on_up: Callable[[str], None],
    ) -> None:
        self._kube = kube
        self.specs = {n.name: n for n in nodes}
        self._state = state
        self._interval = heartbeat_interval
        self._lease_duration = lease_duration
        self._on_down = on_down
        self._on_up = on_up
        self._down: set[str] = set()
        self._transitions: dict[tuple[str, str], tuple[str, str]] = {}
        self._kubelet_version = "v0.0.0"
        self._boot_id = str(uuid.uuid4())
        self._lock = threading.Lock()

    def is_down(self, node: str) -> bool:
        with self._lock:
            return node in self._down

    # -- registration ---------------------------------------------------------------------------

    def register(self) -> None:
        """Create (or adopt) every node, then post a first Ready heartbeat."""
        self._kubelet_version = _server_version(self._kube)
        self._ensure_lease_namespace()
        for spec in self.specs.values():
            self._register(spec)
        for name in self.specs:
            if self._state.node_down_marker(name).exists():
                self._go_down(name)
            else:
                self._set_taints(name, "ready")
                self._heartbeat(name)

    def _register(self, spec: NodeSpec) -> None:
        labels = {
            "kubernetes.io/hostname": spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            AGENT_LABEL: "true",
            **spec.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels},
            "spec": {"taints": list(spec.taints)} if spec.taints else {},
        }
        try:
            call(self._kube.core.create_node, body)
            log.info("registered node %s (%s)", spec.name, spec.ip)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            call(self._kube.core.patch_node, spec.name, {"metadata": {"labels": labels}}, _content_type=SMP)
            log.info("node %s already registered; adopted it", spec.name)
        node = call(self._kube.core.read_node, spec.name)
        for c in node.get("status", {}).get("conditions") or []:
            self._transitions[(spec.name, c["type"])] = (c["status"], c.get("lastTransitionTime") or now())

    def _ensure_lease_namespace(self) -> None:
        try:
            call(self._kube.core.create_namespace, {"metadata": {"name": LEASE_NAMESPACE}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise

    # -- heartbeats -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Heartbeat every interval; watch the NotReady markers twice a second."""
        next_beat = time.monotonic() + self._interval
        while not stop.wait(0.5):
            self._check_markers()
            if time.monotonic() >= next_beat:
                for name in self.specs:
                    if not self.is_down(name):
                        self._heartbeat(name)
                next_beat = time.monotonic() + self._interval

    def _check_markers(self) -> None:
        for name in self.specs:
            marked = self._state.node_down_marker(name).exists()
            if marked and not self.is_down(name):
                self._go_down(name)
            elif not marked and self.is_down(name):
                self._go_up(name)

    def _transition(self, node: str, kind: str, status: str) -> str:
        old = self._transitions.get((node, kind))
        if old is not None and old[0] == status:
            return old[1]
        stamp = now()
        self._transitions[(node, kind)] = (status, stamp)
        return stamp

    def _heartbeat(self, name: str) -> None:
        spec = self.specs[name]
        stamp = now()
        conditions = [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._transition(name, kind, status),
            }
            for kind, (status, reason, message) in _HEALTHY.items()
        ]
        status = {
            "conditions": conditions,
            "capacity": spec.capacity,
            "allocatable": spec.capacity,
            "addresses": [{"type": "InternalIP", "address": spec.ip}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": "devcluster node agent (local processes)",
                "containerRuntimeVersion": "devcluster://local-processes",
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }
        try:
            call(self._kube.core.patch_node_status, name, {"status": status}, _content_type=SMP)
            self._renew_lease(name)
        except TRANSIENT as exc:
            log.warning("heartbeat for node %s failed: %s", name, exc)

    def _renew_lease(self, name: str) -> None:
        renew = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        coordination = self._kube.coordination
        try:
            call(
                coordination.patch_namespaced_lease,
                name,
                LEASE_NAMESPACE,
                {
                    "spec": {
                        "renewTime": renew,
                        "holderIdentity": name,
                        "leaseDurationSeconds": self._lease_duration,
                    }
                },
                _content_type=MERGE,
            )
            return
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        node = call(self._kube.core.read_node, name)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self._lease_duration,
                "renewTime": renew,
            },
        }
        call(coordination.create_namespaced_lease, LEASE_NAMESPACE, lease)

    # -- NotReady -------------------------------------------------------------------------------

    def _go_down(self, name: str) -> None:
        """Stop the node's kubelet (freeze its pods), then mark the node as the lifecycle controller would."""
        log.warning("node %s: marked NotReady; heartbeats stop, its pods are left alone", name)
        with self._lock:
            self._down.add(name)
        self._on_down(name)
        self._set_taints(name, "unreachable")
        conditions = [
            {
                "type": kind,
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": self._transition(name, kind, "Unknown"),
            }
            for kind in _HEALTHY
        ]
        self._retry(
            lambda: call(
                self._kube.core.patch_node_status,
                name,
                {"status": {"conditions": conditions}},
                _content_type=SMP,
            )
        )

    def _go_up(self, name: str) -> None:
        log.warning("node %s: Ready again", name)
        self._set_taints(name, "ready")
        self._heartbeat(name)
        with self._lock:
            self._down.discard(name)
        self._on_up(name)

    def _set_taints(self, name: str, condition: str) -> None:
        """The node lifecycle controller's taints for `condition` ("ready", "unreachable", "not-ready").

        The API server itself adds not-ready:NoSchedule to a new Node (TaintNodesByCondition);
        without a controller manager nobody else would take it off. Read-modify-write with a
        resourceVersion precondition, so a taint someone else adds meanwhile is not lost.
        """
        wanted: list[Obj] = []
        if condition == "unreachable":
            wanted = [
                {"key": UNREACHABLE, "effect": "NoSchedule"},
                {"key": UNREACHABLE, "effect": "NoExecute"},
            ]
        elif condition == "not-ready":
            wanted = [{"key": NOT_READY, "effect": "NoSchedule"}]

        def attempt() -> None:
            node = call(self._kube.core.read_node, name)
            current = node.get("spec", {}).get("taints") or []
            ours = [t for t in current if t.get("key") in (UNREACHABLE, NOT_READY)]
            if [(t["key"], t["effect"]) for t in ours] == [(t["key"], t["effect"]) for t in wanted]:
                return
            stamp = now()
            taints = [t for t in current if t.get("key") not in (UNREACHABLE, NOT_READY)]
            taints += [{**t, "timeAdded": stamp} for t in wanted]
            patch = {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                "spec": {"taints": taints or None},
            }
            call(self._kube.core.patch_node, name, patch, _content_type=MERGE)

        self._retry(attempt)

    def _retry(self, action: Callable[[], object], attempts: int = 10) -> None:
        for i in range(attempts):
            try:
                action()
                return
            except TRANSIENT as exc:
                if i == attempts - 1:
                    log.error("giving up on a node update: %s", exc)
                    return
                if status_of(exc) != 409:
                    log.warning("node update failed (%s); retrying", exc)
                time.sleep(0.2)

    # -- shutdown -------------------------------------------------------------------------------

    def shutting_down(self) -> None:
        """Kubelet's last word: Ready=False, so nothing new is scheduled onto a node about to vanish."""
        for name in self.specs:
            if self.is_down(name):
                continue
            condition = {
                "type": "Ready",
                "status": "False",
                "reason": "KubeletNotReady",
                "message": "node is shutting down",
                "lastHeartbeatTime": now(),
                "lastTransitionTime": self._transition(name, "Ready", "False"),
            }
            try:
                call(
                    self._kube.core.patch_node_status,
                    name,
                    {"status": {"conditions": [condition]}},
                    _content_type=SMP,
                    _request_timeout=(2.0, 5.0),
                )
            except TRANSIENT as exc:
                log.warning("could not mark node %s NotReady on shutdown: %s", name, exc)


def _server_version(kube: Kube) -> str:
    """Report the control plane's version as the kubelet's: controllers may gate on it."""
    try:
        return str(call(client.VersionApi(kube.api).get_code).get("gitVersion", "v0.0.0"))
    except TRANSIENT:
        return "v0.0.0"
