"""The chaos soak's machinery, shared by tests/e2e/test_chaos.py (short, CI) and scripts/chaos_soak.py.

`ChaosSoak` runs real-trainer TrainingJobs under two controller replicas (subprocesses with leader
election) while a seeded injector hits them, records what every fault hit and every pod event, and
then checks the outcome (`ChaosSoak.verify`; the rules are in test_chaos.py's docstring).

Placement: the uninterrupted reference jobs (one per distinct trainer config) are pinned to
`nodes[-1]` and node faults (NotReady, device fault) only ever hit `nodes[0]`, so the references
are never touched by a fault aimed at a job and the chaos jobs always have a node to restart on
(`faultyNodes` accumulates, and with two nodes a job avoiding both could never be scheduled).
NotReady kills the node's pod processes (a crashed machine, not a partition): a partitioned
node's processes would go on writing to the shared volume after the controller force-deleted
their pods, which no controller can prevent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from devcluster import faults
from devcluster.controlplane import ControlPlane, free_port
from devcluster.statedir import StateDir
from respawn_protocol.crd import GROUP, LABEL_JOB, PLURAL, VERSION
from tests.e2e.test_trainingjob_e2e import RUN_YAML, losses, training_job

LABEL_ATTEMPT = "training.respawn.dev/attempt"
COUNTED = {"kill"}
UNCOUNTED = {"evict", "node-not-ready", "device-fault"}
JOB_FAULTS = COUNTED | UNCOUNTED
CONTROL_FAULTS = {"leader-kill", "apiserver-restart"}
KINDS = ("kill", "evict", "node-not-ready", "device-fault", "leader-kill", "apiserver-restart")
DEVICE_INFO = {
    "DeviceInfo": {
        "DeviceList": {
            "huawei.com/Ascend910": "Ascend910-0,Ascend910-1,Ascend910-2",
            "huawei.com/Ascend910-Unhealthy": "Ascend910-3",
        }
    }
}


def run_config(seed: int, epochs: int, *, parallel: bool = False) -> dict[str, Any]:
    """The e2e test's run.yaml with another seed and length; a checkpoint every step.

    The shipped corpus makes 49 steps per epoch at 2 ranks; the LR schedule spans the whole run.
    By default the ranks train alone (no `use_parallel`), so on a loaded machine one runs ahead of
    the other by ten steps and more: keeping 20 checkpoints lets them share a complete step early on
    (the trainer never prunes the newest complete one afterwards), so a restart does not go back to
    step 0. `parallel` makes them one data-parallel gang (MindSpore collectives).
    """
    (monitor,) = RUN_YAML["callbacks"]
    return {
        **RUN_YAML,
        "seed": seed,
        "runner_config": {**RUN_YAML["runner_config"], "epochs": epochs},
        "callbacks": [{**monitor, "keep_checkpoint_max": 20}],
        "lr_schedule": {**RUN_YAML["lr_schedule"], "total_steps": -1},
        "train_dataset": {"data_loader": {"type": "TextDataset"}},
        "use_parallel": parallel,
    }


def pod_attempt(name: str) -> int:
    return int(name.rsplit("-", 2)[1][1:])


def pod_job(name: str) -> str:
    return name.rsplit("-", 2)[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Fault:
    kind: str
    at: float  # time.monotonic() when injected
    target: str
    landed: bool
    hits: list[tuple[str, int, str]] = field(default_factory=list)  # (job, attempt, pod)
    note: str = ""
    window: tuple[float, float] | None = None  # a node fault: when it was on


@dataclass
class PodEvent:
    at: float
    type: str  # ADDED / MODIFIED / DELETED / RELIST-GONE
    name: str
    uid: str
    rv: int
    phase: str
    node: str | None
    deleting: bool
    exact: bool = True  # False: seen only through a relist, so its position in the order is a bound


class PodRecorder:
    """A pod watch on the namespace, resumed across API server restarts, recording every event."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.events: list[PodEvent] = []
        self.relists = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-recorder", daemon=True)
        self._known: dict[str, str] = {}
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(60):
            raise TimeoutError("the pod watch did not start")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    def _record(self, kind: str, pod: Any, exact: bool = True) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        if LABEL_JOB not in (meta.get("labels") or {}):
            return
        self.events.append(
            PodEvent(
                time.monotonic(),
                kind,
                meta["name"],
                meta["uid"],
                int(meta["resourceVersion"]),
                status.get("phase", ""),
                (pod.get("spec") or {}).get("nodeName"),
                bool(meta.get("deletionTimestamp")),
                exact,
            )
        )
        if kind == "DELETED":
            self._known.pop(meta["uid"], None)
        else:
            self._known[meta["uid"]] = meta["name"]

    def _relist(self, core: client.CoreV1Api) -> str:
        raw = json.loads(
            core.list_namespaced_pod(self.namespace, _preload_content=False, _request_timeout=10).data
        )
        rv = raw["metadata"]["resourceVersion"]
        seen = {p["metadata"]["uid"] for p in raw["items"]}
        first = not self.ready.is_set()
        for uid, name in list(self._known.items()):
            if uid not in seen:  # deleted while we were not watching: only a bound on when
                self.events.append(
                    PodEvent(time.monotonic(), "DELETED", name, uid, int(rv), "", None, True, False)
                )
                self._known.pop(uid)
        for pod in raw["items"]:
            self._record("ADDED", pod, exact=first)
        self.relists += 0 if first else 1
        return rv

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            api = None
            try:
                api = config.new_client_from_config(config_file=str(self.kubeconfig))
                core = client.CoreV1Api(api)
                if rv is None:
                    rv = self._relist(core)
                    self.ready.set()
                w = watch.Watch()
                for ev in w.stream(
                    core.list_namespaced_pod,
                    self.namespace,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                    _preload_content=False,
                    _request_timeout=(3, 15),
                ):
                    obj = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old (e.g. the API server's watch cache restarted): relist
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self._record(ev["type"], obj)
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                self._stop.wait(0.2)
            except Exception:  # connection refused while the API server restarts
                self._stop.wait(0.2)
            finally:
                if api is not None:
                    api.close()


class Replicas:
    """Two controller replicas as subprocesses; one that exits (killed, lost its lease) is replaced."""

    def __init__(self, kubeconfig: Path, namespace: str, shared: Path, logdir: Path, count: int = 2) -> None:
        self.kubeconfig, self.namespace, self.shared, self.logdir, self.count = (
            kubeconfig,
            namespace,
            shared,
            logdir,
            count,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: list[tuple[str, int]] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="replicas", daemon=True)

    def _spawn(self) -> None:
        identity = f"replica-{next(self._ids)}"
        log = (self.logdir / f"controller-{identity}.log").open("ab")
        self.procs[identity] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "--kubeconfig",
                str(self.kubeconfig),
                "--namespace",
                self.namespace,
                "--health-port",
                str(free_port()),
                "--health-host",
                "127.0.0.1",
                "--lease-namespace",
                self.namespace,
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "0.5",
                "--shared-root",
                str(self.shared),
                "--identity",
                identity,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start(self) -> None:
        with self._lock:
            for _ in range(self.count):
                self._spawn()
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for identity, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        self.exits.append((identity, proc.returncode))
                        del self.procs[identity]
                while len(self.procs) < self.count:
                    self._spawn()

    def kill(self, identity: str) -> bool:
        with self._lock:
            proc = self.procs.get(identity)
            if proc is None or proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def retrying(what: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Call `what` until it does not raise a connection-level error (the API server may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return what()
        except client.ApiException as exc:
            if exc.status and exc.status < 500 and exc.status != 429:
                raise
            if time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@dataclass
class JobSpec:
    name: str
    config: str  # the ConfigMap holding its run.yaml
    reference: bool = False
    avoid_faulty_nodes: bool = True


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
        deadline = time.monotonic() + timeout
        while live := [r for r in self.state.pid_records() if r.namespace == self.namespace and r.alive()]:
            if time.monotonic() > deadline:
                for r in live:  # the agent did not get to them: do what it would have done
                    r.kill_group()
                break
            time.sleep(0.2)

    def add_config(self, name: str, run: dict[str, Any]) -> None:
        client.CoreV1Api(self.api).create_namespaced_config_map(
            self.namespace, {"metadata": {"name": name}, "data": {"run.yaml": yaml.safe_dump(run)}}
        )
        ref = f"ref-{name}"
        self._create(JobSpec(ref, name, reference=True))
        self.references[name] = ref

    def add_job(self, name: str, config_name: str, *, avoid_faulty_nodes: bool = True) -> None:
        self._create(JobSpec(name, config_name, avoid_faulty_nodes=avoid_faulty_nodes))

    def _create(self, spec: JobSpec) -> None:
        body = training_job(spec.name, self.shared)
        pod = body["spec"]["template"]["spec"]
        pod["volumes"][0]["configMap"]["name"] = spec.config
        pod["terminationGracePeriodSeconds"] = 5
        if spec.reference:
            pod["nodeSelector"] = {"kubernetes.io/hostname": self.nodes[-1]}
        body["spec"]["failurePolicy"] = {
            "maxRestarts": 100,  # the budget is not under test: the soak's faults come faster than progress
            "nodeLostTimeoutSeconds": 2,
            "avoidFaultyNodes": spec.avoid_faulty_nodes,
            "backoff": {"initialSeconds": 0, "maxSeconds": 1},
        }
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
        deadline = time.monotonic() + timeout
        pending = {(j, a) for j, a, _ in hits}
        while pending and time.monotonic() < deadline:
            pending = {
                (j, a)
                for j, a in pending
                if (s := self.status(j)).get("attempt", 0) <= a
                and s.get("phase") not in ("Succeeded", "Failed")
            }
            time.sleep(0.1)

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

    def _add_late_hits(self, slack: float = 10.0) -> None:
        """A node fault also hit every chaos pod the watch saw on the node, alive, while the fault
        was on (plus `slack` for the controller's caches), however briefly it lived there."""
        for f in self.faults:
            if f.window is None:
                continue
            since, until = f.window
            seen = {
                e.name
                for e in self.recorder.events
                if e.node == f.target
                and since <= e.at <= until + slack
                and e.phase not in ("Succeeded", "Failed")
                and not e.deleting
                and not self.jobs[pod_job(e.name)].reference
            }
            known = {pod for _, _, pod in f.hits}
            f.hits += [(pod_job(n), pod_attempt(n), n) for n in sorted(seen - known)]

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
        deadline = time.monotonic() + timeout
        while not all(self.finished(j) for j in self.jobs):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"jobs not finished after {timeout:.0f}s: "
                    + str({j: self.status(j).get("phase") for j in self.jobs})
                )
            time.sleep(0.2)

    # -- verification ---------------------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        """Check every rule; returns the figures. Raises AssertionError listing every violation."""
        problems: list[str] = []
        self._add_late_hits()
        statuses = {j: self.status(j) for j in self.jobs}
        for j, s in statuses.items():
            if s.get("phase") != "Succeeded":
                problems.append(f"{j}: phase {s.get('phase')} ({s.get('conditions')})")
            if self.jobs[j].reference and s.get("attempt", 0) != 0:
                problems.append(f"reference {j} was restarted: {s}")

        # Losses: every record of every rank on the reference curve, every step present.
        compared = mismatches = 0
        for j, spec in self.jobs.items():
            if spec.reference:
                continue
            ref = self.references[spec.config]
            for rank in (0, 1):
                reference = {
                    r["global_step"]: r["loss_bits"] for r in losses(self.shared, self.namespace, ref, rank)
                }
                records = losses(self.shared, self.namespace, j, rank)
                bad = [r for r in records if r["loss_bits"] != reference.get(r["global_step"])]
                missing = set(reference) - {r["global_step"] for r in records}
                compared += len(records)
                mismatches += len(bad) + len(missing)
                if bad or missing or not reference:
                    problems.append(
                        f"{j} rank {rank}: {len(bad)} records off the reference curve {bad[:2]}, "
                        f"{len(missing)} steps missing"
                    )

        # Attempts never overlap (from the pod watch, ordered by resourceVersion).
        overlaps, unverified = self._overlaps(problems)

        # Restarts against the faults that hit each attempt.
        hit: dict[tuple[str, int], set[str]] = defaultdict(set)
        hit_pods: dict[tuple[str, int], set[str]] = defaultdict(set)
        for f in self.faults:
            for job, attempt, pod in f.hits if f.landed else []:
                hit[(job, attempt)].add(f.kind)
                hit_pods[(job, attempt)].add(pod)
        last_phase = {e.name: e.phase for e in self.recorder.events if e.phase}
        expected_counted = [0, 0]
        expected_total = 0
        actual_counted = actual_uncounted = 0
        for j, spec in self.jobs.items():
            if spec.reference:
                continue
            s = statuses[j]
            final = int(s.get("attempt", 0))
            actual_counted += int(s.get("restarts", 0))
            actual_uncounted += int(s.get("uncountedRestarts", 0))
            if int(s.get("restarts", 0)) + int(s.get("uncountedRestarts", 0)) != final:
                problems.append(f"{j}: restarts + uncountedRestarts != attempt: {s}")
            for a in range(final):
                kinds = hit.get((j, a))
                if not kinds:
                    problems.append(f"{j}: attempt {a} restarted without a fault hitting it")
                    continue
                expected_total += 1
                expected_counted[0] += kinds <= COUNTED
                expected_counted[1] += bool(kinds & COUNTED)
            if (j, final) in hit:
                survivors = [p for p in hit_pods[(j, final)] if last_phase.get(p) != "Succeeded"]
                if survivors:
                    problems.append(f"{j}: fault on final attempt {final} ({survivors}) lost: no restart")
        actual_total = actual_counted + actual_uncounted
        if actual_total != expected_total or not expected_counted[0] <= actual_counted <= expected_counted[1]:
            problems.append(
                f"restarts counted {actual_counted} / uncounted {actual_uncounted}; expected total "
                f"{expected_total}, counted in [{expected_counted[0]}, {expected_counted[1]}]"
            )

        figures = {
            "faults_by_kind": {k: sum(f.kind == k for f in self.faults) for k in KINDS},
            "landed_by_kind": {k: sum(f.kind == k and f.landed for f in self.faults) for k in KINDS},
            "restarts_counted": actual_counted,
            "restarts_uncounted": actual_uncounted,
            "expected_restarts": expected_total,
            "expected_counted_range": tuple(expected_counted),
            "recover_seconds": self._recovery_times(hit),
            "jobs": len([s for s in self.jobs.values() if not s.reference]),
            "references": len(self.references),
            "all_succeeded": all(s.get("phase") == "Succeeded" for s in statuses.values()),
            "jobs_succeeded": sum(
                s.get("phase") == "Succeeded" for j, s in statuses.items() if not self.jobs[j].reference
            ),
            "loss_records_compared": compared,
            "loss_mismatches": mismatches,
            "overlaps": overlaps,
            "order_unverified_pairs": unverified,
            "watch_relists": self.recorder.relists,
            "controller_exits": list(self.replicas.exits),
        }
        if problems:
            raise AssertionError(
                "chaos soak violations:\n  " + "\n  ".join(problems) + f"\nfigures: {figures}"
            )
        return figures

    def _overlaps(self, problems: list[str]) -> tuple[int, int]:
        """Attempt N+1 of a job may create its first pod only after every pod of attempts <= N is deleted.

        Precisely, in etcd revision order (resourceVersion, one total order for all pods): for each
        job and attempts a < b, the revision of the first event of any pod of b (its creation) must be
        greater than the revision of the DELETED event of every pod of a; and every pod of an attempt
        other than the last must have been deleted. That is stronger than "no pod of b Running while a
        pod of a is Running or not deleted". Events seen only through a relist (the watch fell behind
        an API server restart) only bound the order; pairs they leave undecided are counted, not failed.
        """
        created: dict[tuple[str, int], tuple[int, bool]] = {}
        deleted: dict[tuple[str, int], tuple[int, bool]] = {}
        pods_of: dict[tuple[str, int], set[str]] = defaultdict(set)
        gone: set[str] = set()
        for e in self.recorder.events:
            key = (pod_job(e.name), pod_attempt(e.name))
            pods_of[key].add(e.uid)
            if key not in created or e.rv < created[key][0]:
                created[key] = (e.rv, e.exact)
            if e.type == "DELETED":
                gone.add(e.uid)
                if key not in deleted or e.rv > deleted[key][0]:
                    deleted[key] = (e.rv, e.exact)
        overlaps = unverified = 0
        for job in self.jobs:
            attempts = sorted(a for j, a in pods_of if j == job)
            for a in attempts[:-1]:
                if not pods_of[(job, a)] <= gone:
                    overlaps += 1
                    problems.append(f"{job}: attempt {a} has pods never deleted")
                    continue
                for b in (b for b in attempts if b > a):
                    (c_rv, c_exact), (d_rv, d_exact) = created[(job, b)], deleted[(job, a)]
                    if c_rv > d_rv:
                        continue
                    if c_exact and d_exact:
                        overlaps += 1
                        problems.append(
                            f"{job}: attempt {b} created (rv {c_rv}) before attempt {a} gone (rv {d_rv})"
                        )
                    else:
                        unverified += 1
        return overlaps, unverified

    def _recovery_times(self, hit: dict[tuple[str, int], set[str]]) -> list[float]:
        """Per restart: the first fault that hit attempt N → every pod of attempt N+1 Running."""
        first_fault: dict[tuple[str, int], float] = {}
        for f in self.faults:
            for job, attempt, _ in f.hits if f.landed else []:
                first_fault.setdefault((job, attempt), f.at)
        running: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        for e in self.recorder.events:
            if e.phase == "Running" and not e.deleting:
                running[(pod_job(e.name), pod_attempt(e.name))].setdefault(e.name, e.at)
        times = []
        for (job, a), at in first_fault.items():
            nxt = running.get((job, a + 1), {})
            if len(nxt) == 2:
                times.append(max(nxt.values()) - at)
        return sorted(times)


def summary(figures: dict[str, Any]) -> str:
    rec = figures["recover_seconds"]
    lines = [
        f"jobs Succeeded {figures['jobs_succeeded']} of {figures['jobs']} "
        f"(+{figures['references']} uninterrupted references; all Succeeded: {figures['all_succeeded']})",
        "faults injected (landed) by kind: "
        + ", ".join(f"{k} {figures['faults_by_kind'][k]} ({figures['landed_by_kind'][k]})" for k in KINDS),
        f"restarts counted {figures['restarts_counted']}, uncounted {figures['restarts_uncounted']}; "
        f"expected {figures['expected_restarts']} with counted in {list(figures['expected_counted_range'])}",
        f"time to recover (fault → next attempt all Running), n={len(rec)}: "
        f"p50 {percentile(rec, 50):.1f} s, p99 {percentile(rec, 99):.1f} s, "
        f"max {max(rec, default=float('nan')):.1f} s",
        f"loss records compared with the references: {figures['loss_records_compared']}, "
        f"mismatches (bits differ or step missing): {figures['loss_mismatches']}",
        f"attempt overlaps: {figures['overlaps']} "
        f"(pairs undecidable after a relist: {figures['order_unverified_pairs']})",
        f"controller replica exits: {len(figures['controller_exits'])} {figures['controller_exits']}; "
        f"pod watch relists: {figures['watch_relists']}",
    ]
    return "\n".join(lines)
