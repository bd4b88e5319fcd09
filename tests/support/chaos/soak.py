"""`ChaosSoak`: jobs, controller replicas and a pod watch set up; faults injected; the outcome checked
(`verify`, in tests/support/chaos/verify.py)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from devcluster import faults
from devcluster.controlplane import ControlPlane
from devcluster.statedir import PidRecord, StateDir
from respawn_protocol.crd import GROUP, LABEL_JOB, PLURAL, VERSION
from tests.support.chaos.common import DEVICE_INFO, Fault, JobSpec, pod_attempt, pod_job, retrying
from tests.support.chaos.recorder import PodRecorder
from tests.support.chaos.replicas import Replicas
from tests.support.chaos.verify import verify
from tests.support.e2e import trainer_job
from tests.support.manifests import run_config_map
from tests.support.poll import poll


class ChaosSoak:
    def __init__(
        self,
        *,
        kubeconfig: Path,
        namespace: str,
        shared: Path,
        workdir: Path,
        agent_state: Path,
        nodes: tuple[str, ...],
        control_plane: ControlPlane,
        apiserver_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGKILL),
        seed: int,
    ) -> None:
        self.kubeconfig, self.namespace, self.shared, self.workdir = kubeconfig, namespace, shared, workdir
        self.state = StateDir(agent_state)
        self.nodes = nodes
        self.control_plane = control_plane
        self.apiserver_signals = apiserver_signals
        self.rng = random.Random(seed)
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.jobs: dict[str, JobSpec] = {}
        self.references: dict[str, str] = {}  # config -> reference job
        self.faults: list[Fault] = []
        self.recorder = PodRecorder(kubeconfig, namespace)
        self.replicas = Replicas(kubeconfig, namespace, shared, workdir)
        self.t0 = time.monotonic()

    # -- setup ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.recorder.start()
        self.replicas.start()

    def close(self) -> None:
        """Undo any node fault left on, stop the replicas, then every pod of the namespace (after a
        failed run trainers would go on training, and competing with later tests, until the node
        agent stops), and the watch."""
        node = self.nodes[0]
        try:
            if self.state.node_down_marker(node).exists():
                faults.node_ready(self.state, node, kubeconfig=str(self.kubeconfig))
            with contextlib.suppress(client.ApiException):
                client.CoreV1Api(self.api).delete_namespaced_config_map(
                    f"mindx-dl-deviceinfo-{node}", "kube-system"
                )
        finally:
            try:
                self.replicas.stop()
                self._stop_pods()
            finally:
                self.recorder.stop()
                self.api.close()

    def _stop_pods(self, timeout: float = 60.0) -> None:
        core = client.CoreV1Api(self.api)
        for pod in self.pods():
            with contextlib.suppress(client.ApiException):
                core.delete_namespaced_pod(
                    pod["metadata"]["name"], self.namespace, grace_period_seconds=0, _preload_content=False
                )

        def live() -> list[PidRecord]:
            return [r for r in self.state.pid_records() if r.namespace == self.namespace and r.alive()]

        if not poll(lambda: not live(), timeout, interval=0.2):
            for r in live():  # the agent did not get to them: do what it would have done
                r.kill_group()

    def add_config(self, name: str, run: dict[str, Any]) -> None:
        client.CoreV1Api(self.api).create_namespaced_config_map(self.namespace, run_config_map(run, name))
        ref = f"ref-{name}"
        self._create(JobSpec(ref, name, reference=True))
        self.references[name] = ref

    def add_job(self, name: str, config_name: str, *, avoid_faulty_nodes: bool = True) -> None:
        self._create(JobSpec(name, config_name, avoid_faulty_nodes=avoid_faulty_nodes))

    def _create(self, spec: JobSpec) -> None:
        pod: dict[str, Any] = {"terminationGracePeriodSeconds": 5}
        if spec.reference:
            pod["nodeSelector"] = {"kubernetes.io/hostname": self.nodes[-1]}
        body = trainer_job(
            spec.name,
            self.shared,
            config=spec.config,
            pod=pod,
            maxRestarts=100,  # the budget is not under test: the soak's faults come faster than progress
            nodeLostTimeoutSeconds=2,
            avoidFaultyNodes=spec.avoid_faulty_nodes,
        )
        retrying(
            lambda: client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            )
        )
        self.jobs[spec.name] = spec

    # -- observation ----------------------------------------------------------------------------

    def status(self, job: str) -> dict[str, Any]:
        obj = retrying(
            lambda: client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, job
            )
        )
        return obj.get("status") or {}

    def finished(self, job: str) -> bool:
        return self.status(job).get("phase") in ("Succeeded", "Failed")

    def unfinished_chaos_jobs(self) -> list[str]:
        return [j for j, s in self.jobs.items() if not s.reference and not self.finished(j)]

    def pods(self) -> list[dict[str, Any]]:
        raw = retrying(
            lambda: client.CoreV1Api(self.api).list_namespaced_pod(
                self.namespace, label_selector=LABEL_JOB, _preload_content=False, _request_timeout=10
            )
        )
        return list(json.loads(raw.data)["items"])

    def live_chaos_pods(self, node: str | None = None) -> list[dict[str, Any]]:
        """Pods of chaos jobs that are neither terminal nor being deleted (optionally on one node)."""
        return [
            p
            for p in self.pods()
            if not self.jobs[pod_job(p["metadata"]["name"])].reference
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
            and (node is None or (p.get("spec") or {}).get("nodeName") == node)
        ]

    def wait_past(self, hits: list[tuple[str, int, str]], timeout: float) -> None:
        """Until every hit job has moved past the attempt that was hit, or finished (bounded)."""
        pending = {(j, a) for j, a, _ in hits}

        def all_past() -> bool:
            pending.difference_update(
                (j, a)
                for j, a in list(pending)
                if (s := self.status(j)).get("attempt", 0) > a or s.get("phase") in ("Succeeded", "Failed")
            )
            return not pending

        poll(all_past, timeout)

    # -- faults ---------------------------------------------------------------------------------

    def _unhit_first(self, pods: list[str]) -> list[str]:
        """The pods of attempts no landed fault has hit yet, if there are any. A second fault on an
        attempt that is already failing changes nothing: the first decides whether the restart
        counts, so both kinds of restart are exercised only when faults spread over attempts."""
        hit = {(job, attempt) for f in self.faults if f.landed for job, attempt, _ in f.hits}
        fresh = [p for p in pods if (pod_job(p), pod_attempt(p)) not in hit]
        return fresh or pods

    def inject(self, kind: str) -> Fault:
        now = time.monotonic()
        if kind == "kill":
            records = [
                r
                for r in self.state.pid_records()
                if r.namespace == self.namespace and r.alive() and not self.jobs[pod_job(r.pod)].reference
            ]
            if not records:
                return Fault(kind, now, "", False, note="no live rank")
            fresh = self._unhit_first([r.pod for r in records])
            r = self.rng.choice(sorted((r for r in records if r.pod in fresh), key=lambda r: r.pod))
            try:
                faults.kill(self.state, self.namespace, r.pod)
            except (faults.FaultError, ProcessLookupError) as exc:
                return Fault(kind, now, r.pod, False, note=str(exc))
            return Fault(kind, now, r.pod, True, [(pod_job(r.pod), pod_attempt(r.pod), r.pod)])
        if kind == "evict":
            live = sorted(p["metadata"]["name"] for p in self.live_chaos_pods())
            if not live:
                return Fault(kind, now, "", False, note="no live pod")
            pod = self.rng.choice(self._unhit_first(live))
            try:
                faults.evict(self.namespace, pod, kubeconfig=str(self.kubeconfig))
            except faults.FaultError as exc:
                return Fault(kind, now, pod, False, note=str(exc))
            return Fault(kind, now, pod, True, [(pod_job(pod), pod_attempt(pod), pod)])
        if kind in ("node-not-ready", "device-fault"):
            return self._node_fault(kind, now)
        if kind == "leader-kill":
            lease = retrying(
                lambda: client.CoordinationV1Api(self.api).read_namespaced_lease(
                    "respawn-controller", self.namespace
                )
            )
            holder = lease.spec.holder_identity or ""
            landed = self.replicas.kill(holder)
            return Fault(kind, now, holder, landed)
        if kind == "apiserver-restart":
            # SIGTERM is a rolling restart (kube-apiserver here takes the stop's full 15 s to drain),
            # SIGKILL a crash.
            sig = self.rng.choice(self.apiserver_signals)
            try:
                self.control_plane.stop_apiserver(sig)
            finally:
                self.control_plane.start_apiserver()
            return Fault(kind, now, f"kube-apiserver {sig.name}", True)
        raise ValueError(kind)

    def _node_fault(self, kind: str, now: float) -> Fault:
        """NotReady (processes killed) or a device fault on node-0, on until every job hit has moved
        past the attempt that was hit; not injected when no chaos pod is there to hit."""
        node = self.nodes[0]
        hits = {p["metadata"]["name"] for p in self.live_chaos_pods(node)}
        if not hits:
            return Fault(kind, now, node, False, note="no chaos pod on the node")
        core = client.CoreV1Api(self.api)
        cm_name = f"mindx-dl-deviceinfo-{node}"
        if kind == "node-not-ready":
            faults.node_not_ready(self.state, node, kill_pods=True, kubeconfig=str(self.kubeconfig))
        else:
            cm = {"metadata": {"name": cm_name}, "data": {"DeviceInfoCfg": json.dumps(DEVICE_INFO)}}
            retrying(lambda: core.create_namespaced_config_map("kube-system", cm))
        fault = Fault(kind, now, node, True)
        try:
            for _ in range(2):  # again for pods that landed on the node while the fault was on
                hits |= {p["metadata"]["name"] for p in self.live_chaos_pods(node)}
                fault.hits = [(pod_job(n), pod_attempt(n), n) for n in sorted(hits)]
                self.wait_past(fault.hits, timeout=60)
        finally:
            if kind == "node-not-ready":
                faults.node_ready(self.state, node, kubeconfig=str(self.kubeconfig))
            else:
                retrying(lambda: core.delete_namespaced_config_map(cm_name, "kube-system"))
            fault.window = (now, time.monotonic())
        return fault

    def run_injector(
        self,
        plan: list[str],
        gap: tuple[float, float],
        until: Callable[[], bool],
        *,
        land_within: float = 0.0,
    ) -> None:
        """Inject the faults of `plan` in order, a seeded random gap before each, while not `until()`.

        A fault that finds nothing to hit (no live rank, no chaos pod on the node, no leader) goes
        to the end of the plan, for up to `land_within` seconds after its first try; after that it
        is recorded as not landed.
        """
        pending: deque[tuple[str, float | None]] = deque((kind, None) for kind in plan)
        while pending and not until():
            kind, first_try = pending.popleft()
            time.sleep(self.rng.uniform(*gap))  # the scenario's random spacing, not a synchronisation
            fault = self.inject(kind)
            first_try = fault.at if first_try is None else first_try
            if not fault.landed and time.monotonic() < first_try + land_within:
                pending.append((kind, first_try))
                continue
            self.faults.append(fault)
            hits = [h[2] for h in fault.hits]
            print(
                f"  {fault.at - self.t0:6.1f}s fault {len(self.faults):3d} {fault.kind:17s} "
                f"{fault.target:22s} landed={fault.landed} hits={hits} {fault.note}",
                flush=True,
            )

    def wait_all_finished(self, timeout: float) -> None:
        if not poll(lambda: all(self.finished(j) for j in self.jobs), timeout, interval=0.2):
            raise AssertionError(
                f"jobs not finished after {timeout:.0f}s: "
                + str({j: self.status(j).get("phase") for j in self.jobs})
            )

    def verify(self) -> dict[str, Any]:
        """Check every rule; returns the figures. Raises AssertionError listing every violation."""
        return verify(self)
