"""The local node agent: kube-scheduler + kubelet for a few Nodes, running pods as local processes.

A development tool, NOT for production: pods run as root on this machine, without images,
cgroups, network isolation or resource limits (see docs/devcluster.md). It exists so tests and
the demo can run real pods against a real API server where there is no container runtime.

    python -m devcluster agent --kubeconfig K --state-dir D --nodes node-0,node-1

Threads: a reflector each for Pods (all namespaces) and Nodes; a scheduler that binds pending
pods to this agent's nodes; a heartbeat loop (nodes.NodeManager); one worker per pod bound
here (podworker.PodWorker). SIGTERM/SIGINT stop it: every pod is terminated (grace capped by
--shutdown-grace) and reported as kubelet's graceful node shutdown does.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster import scheduler
from devcluster.hostsfile import HostsTable
from devcluster.ippool import IPPool
from devcluster.kubeapi import SMP, TRANSIENT, Kube, Reflector, call, now, status_of
from devcluster.nodes import NodeManager, NodeSpec
from devcluster.podsetup import default_path, service_env
from devcluster.podworker import PodWorker, Runtime
from devcluster.statedir import StateDir

log = logging.getLogger("devcluster.agent")
Obj = dict[str, Any]
ASCEND = "huawei.com/Ascend910"


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent can be told; built from the command line by `parse_args`."""

    state_dir: Path
    nodes: tuple[str, ...] = ("node-0",)
    kubeconfig: str | None = None
    ascend_per_node: int = 8
    cpu: str = "32"
    memory: str = "128Gi"
    max_pods: int = 110
    node_labels: dict[str, str] = field(default_factory=dict)
    node_taints: tuple[Obj, ...] = ()
    pvc_root: Path | None = None
    pod_network: str = "127.1.0.0/16"
    node_network: str = "127.0.10.0/24"
    cluster_domain: str = "cluster.local"
    scheduler_name: str = "default-scheduler"
    schedule: bool = True
    heartbeat_interval: float = 5.0
    lease_duration: int = 40
    schedule_retry: float = 5.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    shutdown_grace: float = 5.0
    pod_env: dict[str, str] = field(default_factory=dict)
    image_entrypoints: dict[str, list[str]] = field(default_factory=dict)
    python: str = sys.executable

    def capacity(self) -> dict[str, str]:
        return {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.max_pods),
            "ephemeral-storage": "100Gi",
            ASCEND: str(self.ascend_per_node),
        }

    def node_ips(self) -> dict[str, str]:
        network = ipaddress.ip_network(self.node_network)
        return {name: str(network.network_address + i + 1) for i, name in enumerate(self.nodes)}


class NodeAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state = StateDir(settings.state_dir.resolve())
        self._lock = threading.Lock()
        self._pods: dict[str, Obj] = {}
        self._workers: dict[str, PodWorker] = {}
        self._assumed: dict[str, str] = {}
        self._workers_started = False
        self._stopping = False
        self._schedule_wanted = threading.Event()
        self._threads_stop = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._kube: Kube | None = None
        self._rt: Runtime | None = None
        self._nodes: NodeManager | None = None
        self._node_reflector: Reflector | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Register the nodes, run until `stop` is set, then shut down every pod."""
        self.state.root.mkdir(parents=True, exist_ok=True)
        leftovers = self.state.kill_leftovers()
        if leftovers:
            log.warning("killed %d process(es) left by a previous agent: %s", len(leftovers), leftovers)
        kube = self._kube = Kube(self.settings.kubeconfig)
        self.state.write_agent_info(
            pid=os.getpid(), kubeconfig=_abs(self.settings.kubeconfig), nodes=list(self.settings.nodes)
        )
        self._rt = self._runtime(kube)
        self._nodes = self._node_manager(kube)
        self._nodes.register()
        self._node_reflector = Reflector(
            "nodes",
            kube.watch_core().list_node,
            self._on_node,
            stop=self._threads_stop,
            key=lambda o: o["metadata"]["name"],
        ).start()
        pods = Reflector(
            "pods", kube.watch_core().list_pod_for_all_namespaces, self._on_pod, stop=self._threads_stop
        ).start()
        self._heartbeat = threading.Thread(
            target=self._nodes.run, args=(self._heartbeat_stop,), name="heartbeat", daemon=True
        )
        self._heartbeat.start()
        if self.settings.schedule:
            threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True).start()
        # Workers start once every existing pod is known, so adopted pods keep their IPs.
        while not pods.synced.wait(0.5) and not stop.is_set():
            pass
        with self._lock:
            self._workers_started = True
            for worker in self._workers.values():
                worker.start()
        log.info("node agent ready: nodes %s, state %s", ", ".join(self.settings.nodes), self.state.root)
        stop.wait()
        self._shutdown()
        return 0

    def _runtime(self, kube: Kube) -> Runtime:
        s = self.settings
        node_ips = s.node_ips()
        host, port = kube.server_host_port()
        node_lines = tuple(f"{ip}\t{n}" for n, ip in node_ips.items())
        return Runtime(
            kube=kube,
            state=self.state,
            ips=IPPool(s.pod_network),
            hosts=HostsTable(self.state.root / "hosts", extra_lines=node_lines),
            python=s.python,
            pvc_root=(s.pvc_root or self.state.root / "volumes").resolve(),
            cluster_domain=s.cluster_domain,
            base_env={"PATH": default_path(s.python), "HOME": "/root", **s.pod_env},
            service_env=service_env(host, port),
            node_ips=node_ips,
            node_allocatable={n: s.capacity() for n in s.nodes},
            restart_backoff=s.restart_backoff,
            restart_backoff_max=s.restart_backoff_max,
            shutdown_grace=s.shutdown_grace,
            image_entrypoints=s.image_entrypoints,
        )

    def _node_manager(self, kube: Kube) -> NodeManager:
        s = self.settings
        ips = s.node_ips()
        specs = [NodeSpec(n, ips[n], s.capacity(), dict(s.node_labels), s.node_taints) for n in s.nodes]
        return NodeManager(
            kube,
            specs,
            self.state,
            heartbeat_interval=s.heartbeat_interval,
            lease_duration=s.lease_duration,
            on_down=self._node_down,
            on_up=self._node_up,
        )

    def _shutdown(self) -> None:
        """Kubelet's graceful node shutdown: stop heartbeats, mark nodes NotReady, stop every pod."""
        log.info("shutting down: terminating every pod")
        assert self._nodes is not None and self._rt is not None
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(15.0)
        self._nodes.shutting_down()
        for worker in workers:
            worker.shutdown()
        wait = self.settings.shutdown_grace + 15.0
        for worker in workers:
            if not worker.join(wait):
                log.error("%r did not stop in time", worker)
            wait = 1.0
        self._threads_stop.set()
        killed = self.state.kill_leftovers()
        if killed:
            log.error("killed %d leftover process(es): %s", len(killed), killed)
        self._rt.hosts.close()

    # -- pods -----------------------------------------------------------------------------------

    def _on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        node = pod.get("spec", {}).get("nodeName")
        with self._lock:
            if kind == "delete":
                self._pods.pop(uid, None)
                self._assumed.pop(uid, None)
                # The worker stays registered until it is done: a frozen one must still be thawed.
                worker = self._workers.get(uid)
                if worker is not None:
                    worker.removed()
                self._schedule_wanted.set()
                return
            self._pods[uid] = pod
            if node in self.settings.nodes:
                self._assumed.pop(uid, None)
                worker = self._workers.get(uid)
                if worker is not None:
                    worker.update(pod)
                elif not self._stopping:
                    self._add_worker(pod)
            elif not node:
                self._schedule_wanted.set()
            self._prune()

    def _add_worker(self, pod: Obj) -> None:
        assert self._rt is not None and self._nodes is not None
        worker = PodWorker(self._rt, pod)
        self._workers[worker.uid] = worker
        if self._nodes.is_down(worker.node):
            worker.freeze()
        if self._workers_started:
            worker.start()

    def _prune(self) -> None:
        """Forget workers that are done and whose pod is gone."""
        for uid in [u for u, w in self._workers.items() if w.done.is_set() and u not in self._pods]:
            del self._workers[uid]

    def _node_down(self, node: str) -> None:
        with self._lock:
            workers = [w for w in self._workers.values() if w.node == node]
        for worker in workers:
            worker.freeze()

    def _node_up(self, node: str) -> None:
        with self._lock:
            workers = [w for w in self._workers.values() if w.node == node]
        for worker in workers:
            worker.thaw()

    def _on_node(self, kind: str, node: Obj) -> None:
        if node["metadata"]["name"] in self.settings.nodes:
            self._schedule_wanted.set()

    # -- scheduling -----------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while not self._threads_stop.is_set():
            self._schedule_wanted.wait(self.settings.schedule_retry)
            self._schedule_wanted.clear()
            if self._threads_stop.is_set():
                return
            try:
                self._schedule_pass()
            except Exception:
                log.exception("scheduling pass failed")
                self._threads_stop.wait(1.0)

    def _schedulable(self, pod: Obj) -> bool:
        spec, meta = pod.get("spec", {}), pod["metadata"]
        return (
            not spec.get("nodeName")
            and (spec.get("schedulerName") or "default-scheduler") == self.settings.scheduler_name
            and not meta.get("deletionTimestamp")
            and pod.get("status", {}).get("phase") not in scheduler.TERMINAL
            and not spec.get("schedulingGates")
        )

    def _schedule_pass(self) -> None:
        assert self._node_reflector is not None
        with self._lock:
            if self._stopping:
                return
            pods = list(self._pods.values())
            assumed = dict(self._assumed)
        nodes = [n for name, n in self._node_reflector.snapshot().items() if name in self.settings.nodes]
        by_node: dict[str, list[Obj]] = {n: [] for n in self.settings.nodes}
        pending = []
        for pod in pods:
            target = pod.get("spec", {}).get("nodeName") or assumed.get(pod["metadata"]["uid"])
            if target in by_node:
                if pod.get("status", {}).get("phase") not in scheduler.TERMINAL:
                    by_node[target].append(pod)
            elif self._schedulable(pod):
                pending.append(pod)
        pending.sort(
            key=lambda p: (-(p["spec"].get("priority") or 0), p["metadata"].get("creationTimestamp", ""))
        )
        for pod in pending:
            decision = scheduler.schedule(pod, nodes, by_node)
            if decision.node is None:
                self._mark_unschedulable(pod, decision.message)
            elif self._bind(pod, decision.node):
                by_node[decision.node].append(pod)

    def _bind(self, pod: Obj, node: str) -> bool:
        assert self._kube is not None
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            call(self._kube.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body)
        except TRANSIENT as exc:
            log.warning("binding %s/%s to %s failed: %s", meta["namespace"], meta["name"], node, exc)
            return False
        log.info("bound %s/%s to %s", meta["namespace"], meta["name"], node)
        with self._lock:
            if meta["uid"] in self._pods:
                self._assumed[meta["uid"]] = node
        return True

    def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        assert self._kube is not None
        meta = pod["metadata"]
        conditions = pod.get("status", {}).get("conditions") or []
        current: Obj = next((c for c in conditions if c.get("type") == "PodScheduled"), {})
        if current.get("status") == "False" and current.get("message") == message:
            return
        transition = current.get("lastTransitionTime") if current.get("status") == "False" else None
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": transition or now(),
        }
        body = {"metadata": {"uid": meta["uid"]}, "status": {"conditions": [condition]}}
        try:
            call(
                self._kube.core.patch_namespaced_pod_status,
                meta["name"],
                meta["namespace"],
                body,
                _content_type=SMP,
            )
            log.info("%s/%s unschedulable: %s", meta["namespace"], meta["name"], message)
        except TRANSIENT as exc:
            if status_of(exc) not in (404, 409, 422):
                log.warning("could not mark %s/%s unschedulable: %s", meta["namespace"], meta["name"], exc)


# -- command line ---------------------------------------------------------------------------------


def _key_values(text: str) -> dict[str, str]:
    pairs = [p for p in text.split(",") if p]
    return dict(p.split("=", 1) for p in pairs)


def _taints(text: str) -> tuple[Obj, ...]:
    """key[=value]:Effect,... as kubelet's --register-with-taints."""
    taints = []
    for item in filter(None, text.split(",")):
        key_value, _, effect = item.rpartition(":")
        key, _, value = key_value.partition("=")
        taints.append(
            {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}
        )
    return tuple(taints)


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def parse_args(argv: list[str]) -> tuple[bool, AgentSettings]:
    """(verbose, settings) from the command line."""
    p = argparse.ArgumentParser(
        prog="python -m devcluster agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="pod logs, volumes, pid records (default: $RESPAWN_DEVCLUSTER_STATE)",
    )
    p.add_argument("--nodes", default="node-0", help="comma-separated node names (default: node-0)")
    p.add_argument("--ascend", type=int, default=8, help=f"{ASCEND} per node (default 8)")
    p.add_argument("--cpu", default="32", help="cpu capacity per node (default 32)")
    p.add_argument("--memory", default="128Gi", help="memory capacity per node (default 128Gi)")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--node-labels", default="", help="extra labels, k=v,k2=v2")
    p.add_argument("--register-with-taints", default="", help="taints, key=value:Effect,...")
    p.add_argument(
        "--pvc-root",
        type=Path,
        default=None,
        help="persistentVolumeClaim volumes are <pvc-root>/<namespace>/<claim> (default <state>/volumes)",
    )
    p.add_argument("--pod-network", default="127.1.0.0/16", help="loopback range for pod IPs")
    p.add_argument("--node-network", default="127.0.10.0/24", help="loopback range for node InternalIPs")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument(
        "--scheduler-name", default="default-scheduler", help="schedule pods that name this scheduler"
    )
    p.add_argument("--no-scheduler", action="store_true", help="only run pods already bound to these nodes")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between node heartbeats")
    p.add_argument("--restart-backoff", type=float, default=1.0, help="first container restart back-off (s)")
    p.add_argument("--restart-backoff-max", type=float, default=30.0)
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="on agent shutdown, at most this grace period per pod (s)",
    )
    p.add_argument(
        "--pod-env",
        action="append",
        default=[],
        help="K=V given to every container, standing in for an image's ENV (repeatable)",
    )
    p.add_argument(
        "--image-entrypoint",
        action="append",
        default=[],
        metavar="IMAGE=COMMAND",
        help="run COMMAND (shell-split) for containers of IMAGE that have no command, standing in for "
        "the image's ENTRYPOINT; args still come from the pod (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    state_dir = StateDir.from_env(args.state_dir).root
    nodes = tuple(n for n in args.nodes.split(",") if n)
    if not nodes:
        p.error("--nodes: at least one node")
    return args.verbose, AgentSettings(
        state_dir=state_dir,
        nodes=nodes,
        kubeconfig=args.kubeconfig,
        ascend_per_node=args.ascend,
        cpu=args.cpu,
        memory=args.memory,
        max_pods=args.max_pods,
        node_labels=_key_values(args.node_labels),
        node_taints=_taints(args.register_with_taints),
        pvc_root=args.pvc_root,
        pod_network=args.pod_network,
        node_network=args.node_network,
        cluster_domain=args.cluster_domain,
        scheduler_name=args.scheduler_name,
        schedule=not args.no_scheduler,
        heartbeat_interval=args.heartbeat_interval,
        restart_backoff=args.restart_backoff,
        restart_backoff_max=args.restart_backoff_max,
        shutdown_grace=args.shutdown_grace,
        pod_env=dict(kv.split("=", 1) for kv in args.pod_env),
        image_entrypoints={k: shlex.split(v) for k, v in (kv.split("=", 1) for kv in args.image_entrypoint)},
    )


def main(argv: list[str]) -> int:
    try:
        verbose, settings = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The agent retries and reports failed calls itself; urllib3's per-attempt warnings are noise.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return NodeAgent(settings).run(stop)
