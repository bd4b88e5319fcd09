"""One thread per pod bound to this agent's nodes: kubelet's pod worker, in small.

The worker owns the pod's processes and is the only writer of its status. It wakes on a pod
update, a process exit, or a deadline (restart back-off, kill deadline, retry, token refresh),
then `_sync`s: look at what changed, act, write the status if it differs from the last one.

Lifecycle: sandbox (pod IP, hosts entry, volumes) -> init containers one by one -> containers ->
(restartPolicy) restart with back-off or finish. Deletion: SIGTERM to each container's
process group, the grace period, SIGKILL; then a terminal status and a delete with
gracePeriodSeconds=0 and a UID precondition, as kubelet does.

While its node is "down" (fault node-not-ready) the worker is frozen: it neither writes nor
reacts, like a kubelet on a crashed or partitioned machine. On thaw, containers that died
meanwhile are reported as kubelet reports containers it cannot find (ContainerStatusUnknown).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.hostsfile import HostsEntry, HostsTable
from devcluster.ippool import IPPool
from devcluster.kubeapi import SMP, TRANSIENT, Kube, call, now, rfc3339, status_of
from devcluster.podrunner import ContainerProcess
from devcluster.podsetup import (
    ConfigError,
    NoCommandError,
    PodPlace,
    PodSetup,
    VolumeError,
    Volumes,
    hostname_of,
)
from devcluster.podstatus import (
    TERMINAL_PHASES,
    ContainerState,
    PodFacts,
    Terminated,
    container_id,
    get_phase,
    pod_status,
)
from devcluster.statedir import StateDir

log = logging.getLogger(__name__)
Obj = dict[str, Any]

LOST_MESSAGE = "The container could not be located when the pod was terminated"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
FORCE_DELETE_GRACE = 2.0
MAX_TERMINATION_MESSAGE = 4096
EXEC_TIMEOUT = 30.0


@dataclass
class Runtime:
    """What every pod worker shares with the agent."""

    kube: Kube
    state: StateDir
    ips: IPPool
    hosts: HostsTable
    python: str
    pvc_root: Path
    cluster_domain: str
    base_env: dict[str, str]
    service_env: dict[str, str]
    node_ips: dict[str, str]
    node_allocatable: dict[str, dict[str, str]]
    image_entrypoints: dict[str, list[str]]
    restart_backoff: float
    restart_backoff_max: float
    shutdown_grace: float


class PodWorker:
    def __init__(self, rt: Runtime, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        self.rt = rt
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.node: str = spec["nodeName"]
        self.pod_dir = rt.state.pod_dir(self.namespace, self.name, self.uid)
        self._pod = pod
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._removed = self._shutdown = self._frozen = self._lost = False
        self.done = threading.Event()

        self.init = [
            ContainerState(c["name"], c.get("image", ""), init=True) for c in spec.get("initContainers") or []
        ]
        self.regular = [ContainerState(c["name"], c.get("image", "")) for c in spec["containers"]]
        self._specs = {c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]}
        self._attempted: set[str] = set()
        self.procs: dict[str, ContainerProcess] = {}
        self.facts = PodFacts(host_ip=rt.node_ips[self.node])
        self._volumes: Volumes | None = None
        self._setup: PodSetup | None = None
        self._hostname, self._subdomain = hostname_of(pod)
        self._next_start: dict[str, float] = {}
        self._retry_at: float | None = None
        self._terminating: str | None = None
        self._kill_deadline: float | None = None
        self._killed = False
        self._finished = False
        self._already_finished = False
        self._adopted_terminal = False
        self._written: Obj | None = None
        # An existing pod keeps its IP while it exists; reserved now, before any worker allocates.
        ip = (pod.get("status") or {}).get("podIP")
        if ip and rt.ips.reserve(self.uid, ip):
            self.facts.pod_ip = ip
        self._thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def __repr__(self) -> str:
        return f"PodWorker({self.namespace}/{self.name} {self.uid[:8]} on {self.node})"

    # -- inputs from the agent (any thread) ----------------------------------------------------

    def start(self) -> None:
        self._wake.set()
        self._thread.start()

    def update(self, pod: Obj) -> None:
        self._pod = pod
        self._wake.set()

    def removed(self) -> None:
        """The pod is gone from the API (deleted with grace 0 by us or someone else)."""
        self._removed = True
        self._wake.set()

    def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()

    def freeze(self) -> None:
        """Node down: after this returns, the worker neither writes nor reacts until thaw()."""
        with self._lock:
            self._frozen = True

    def thaw(self) -> None:
        with self._lock:
            self._frozen = False
            self._lost = True
        self._wake.set()

    def join(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._adopt(self._pod)
            finished = False
            while not finished:
                self._wake.wait(self._timeout())
                self._wake.clear()
                with self._lock:
                    finished = self._sync()
        except Exception:
            log.exception("%r failed; killing its processes", self)
            for proc in list(self.procs.values()):
                proc.signal_group(signal.SIGKILL)
        finally:
            self.done.set()

    def _timeout(self) -> float:
        moments = [*self._next_start.values(), self._retry_at, self._kill_deadline]
        if self._volumes is not None and not self._finished:
            moments.append(self._volumes.next_refresh())
        pending = [m for m in moments if m is not None]
        if not pending:
            return 10.0
        return max(0.0, min(min(pending) - time.monotonic(), 10.0))

    def _sync(self) -> bool:
        """One pass; True when the worker is finished for good."""
        if self._frozen and not self._shutdown:
            return False
        pod = self._pod
        self._retry_at = None
        self._collect_exits()

        reason = self._termination_reason(pod)
        if reason is not None:
            return self._terminate(pod, reason)
        if self._finished:
            self._write(pod)  # no-op unless an earlier write failed
            return False
        if self._volumes is None and not self._make_sandbox(pod):
            self._write(pod)
            return False
        self._refresh_tokens()
        self._advance(pod)
        policy = pod["spec"].get("restartPolicy") or "Always"
        if (
            not self.procs
            and get_phase(policy, self.init, self.regular, pod_is_terminal=False) in TERMINAL_PHASES
        ):
            self._finish()
        self._write(pod)
        return False

    # -- adoption: pods already bound when the worker starts ------------------------------------

    def _adopt(self, pod: Obj) -> None:
        """Take over what a previous agent left: a pod that was running has lost its processes."""
        status = pod.get("status") or {}
        if status.get("phase") in TERMINAL_PHASES:
            self._adopted_terminal = self._finished = True
            return
        self.facts.start_time = status.get("startTime")
        previous = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        for c in [*self.init, *self.regular]:
            old = previous.get(c.name)
            if not old:
                continue
            c.restart_count = old.get("restartCount", 0)
            state, last = old.get("state") or {}, old.get("lastState") or {}
            if last.get("terminated"):
                c.last_terminated = _terminated_from_api(last["terminated"])
            if state.get("terminated"):
                c.set_terminated(_terminated_from_api(state["terminated"]))
                self._attempted.add(c.name)
            elif state.get("running"):
                c.set_terminated(self._lost_state(state["running"].get("startedAt")))
                self._attempted.add(c.name)
            c.container_id = old.get("containerID")

    def _lost_state(self, started_at: str | None) -> Terminated:
        return Terminated(137, "ContainerStatusUnknown", started_at, now(), message=LOST_MESSAGE)

    # -- exits ----------------------------------------------------------------------------------

    def _collect_exits(self) -> None:
        lost, self._lost = self._lost, False
        for name, proc in list(self.procs.items()):
            if proc.exit is None:
                continue
            del self.procs[name]
            c = self._state(name)
            if lost:
                c.set_terminated(self._lost_state(c.running_since))
                continue
            info = proc.exit
            oom = self.pod_dir / f"{name}.oom"
            message = None
            if info.start_error:
                reason, message = "StartError", info.start_error
            elif oom.exists():
                reason = "OOMKilled"
            elif info.exit_code == 0:
                reason = "Completed"
            else:
                reason = "Error"
            with contextlib.suppress(FileNotFoundError):
                oom.unlink()
            if message is None:
                message = self._termination_message(name, failed=info.exit_code != 0)
            c.set_terminated(
                Terminated(
                    info.exit_code,
                    reason,
                    c.running_since or rfc3339(proc.started_at),
                    rfc3339(info.finished_at),
                    signal=info.signal,
                    message=message,
                    container_id=c.container_id,
                )
            )

    def _termination_message(self, name: str, *, failed: bool) -> str | None:
        with contextlib.suppress(OSError):
            text = (self.pod_dir / f"{name}.termination-log").read_bytes()[:MAX_TERMINATION_MESSAGE]
            if text:
                return text.decode(errors="replace")
        policy = self._specs[name].get("terminationMessagePolicy")
        if failed and policy == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = (self.pod_dir / f"{name}.log").read_bytes().splitlines()[-80:]
                return b"\n".join(lines)[-2048:].decode(errors="replace")
        return None

    def _state(self, name: str) -> ContainerState:
        return next(c for c in [*self.init, *self.regular] if c.name == name)

    # -- starting -------------------------------------------------------------------------------

    def _make_sandbox(self, pod: Obj) -> bool:
        """Pod IP, hosts entry, volumes. False (and a retry) if a volume is not ready yet."""
        spec = pod["spec"]
        if self.facts.start_time is None:
            self.facts.start_time = now()
        host_network = bool(spec.get("hostNetwork"))
        ip = self.facts.host_ip if host_network else self.rt.ips.allocate(self.uid)
        self.facts.pod_ip = ip
        if host_network:
            self._hostname = self.node
        place = PodPlace(
            node_name=self.node,
            host_ip=self.facts.host_ip,
            pod_ip=ip,
            pod_dir=self.pod_dir,
            pvc_root=self.rt.pvc_root,
            cluster_domain=self.rt.cluster_domain,
            base_env={**self.rt.base_env, "HOSTNAME": self._hostname},
            node_allocatable=self.rt.node_allocatable[self.node],
            image_entrypoints=self.rt.image_entrypoints,
        )
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        setup = PodSetup(self.rt.kube, pod, place)
        try:
            volumes = setup.volumes()
        except (VolumeError, ConfigError) as exc:
            self._all_waiting("ContainerCreating", f"MountVolume.SetUp failed: {exc}")
            self._retry_at = time.monotonic() + 2.0
            return False
        except TRANSIENT as exc:
            self._all_waiting("ContainerCreating", f"volume setup: {exc}")
            self._retry_at = time.monotonic() + 2.0
            return False
        if not host_network:
            self.rt.hosts.put(
                self.uid,
                HostsEntry(
                    self.namespace, self.name, ip, self._hostname, self._subdomain, self.rt.cluster_domain
                ),
            )
        self._setup, self._volumes = setup, volumes
        self.facts.sandbox_ready = True
        for c in self.regular:
            if self.init and c.waiting_reason == "ContainerCreating":
                c.set_waiting("PodInitializing")
        for c in [*self.init, *self.regular]:
            if c.waiting_reason == "ContainerCreating":
                c.waiting_message = None
        return True

    def _all_waiting(self, reason: str, message: str) -> None:
        for c in [*self.init, *self.regular]:
            if c.terminated is None and not c.running:
                c.set_waiting(reason, message)

    def _refresh_tokens(self) -> None:
        if self._volumes is None or self._setup is None:
            return
        for token in self._volumes.tokens:
            if token.refresh_at <= time.monotonic():
                try:
                    self._setup.refresh_token(token)
                except (VolumeError, *TRANSIENT) as exc:
                    log.warning("%r: token refresh failed: %s", self, exc)
                    token.refresh_at = time.monotonic() + 10

    def _advance(self, pod: Obj) -> None:
        """Start, restart or leave alone each container, per restartPolicy."""
        policy = pod["spec"].get("restartPolicy") or "Always"
        for c in self.init:
            if c.running:
                return
            if c.terminated is not None and c.terminated.exit_code == 0:
                continue
            if c.terminated is not None and policy == "Never":
                return
            self._start_when_due(c)
            return
        for c in self.regular:
            if c.running:
                continue
            if c.terminated is not None:
                restart = policy == "Always" or (policy == "OnFailure" and c.terminated.exit_code != 0)
                if not restart:
                    continue
            self._start_when_due(c)

    def _start_when_due(self, c: ContainerState) -> None:
        if c.terminated is not None:
            # Died and will restart: CrashLoopBackOff until the back-off has passed.
            delay = min(self.rt.restart_backoff * 2**c.restart_count, self.rt.restart_backoff_max)
            self._next_start[c.name] = time.monotonic() + delay
            c.last_terminated = c.terminated
            c.set_waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={c.name} "
                f"pod={self.name}_{self.namespace}({self.uid})",
            )
        due = self._next_start.get(c.name)
        if due is not None and due > time.monotonic():
            return
        self._next_start.pop(c.name, None)
        self._start(c)

    def _start(self, c: ContainerState) -> None:
        assert self._setup is not None and self._volumes is not None
        spec = self._specs[c.name]
        try:
            env = self._setup.env(spec, self.rt.service_env)
            launch = self._setup.launch_spec(
                spec,
                self._volumes,
                env=env,
                hostname=self._hostname,
                hosts_file=None
                if self._pod["spec"].get("hostNetwork")
                else str(self.rt.hosts.path(self.namespace)),
            )
        except ConfigError as exc:
            c.set_waiting("CreateContainerConfigError", str(exc))
            self._retry_at = time.monotonic() + 2.0
            return
        except VolumeError as exc:
            c.set_waiting("CreateContainerError", str(exc))
            self._retry_at = time.monotonic() + 2.0
            return
        except TRANSIENT as exc:
            c.set_waiting("CreateContainerConfigError", f"reading configuration: {exc}")
            self._retry_at = time.monotonic() + 2.0
            return
        except NoCommandError as exc:
            self._count_attempt(c)
            stamp = now()
            c.set_terminated(Terminated(128, "StartError", stamp, stamp, message=str(exc)))
            return
        self._count_attempt(c)
        with contextlib.suppress(FileNotFoundError):
            (self.pod_dir / f"{c.name}.oom").unlink()
        try:
            proc = ContainerProcess.launch(
                spec=launch,
                pod_dir=self.pod_dir,
                container=c.name,
                state=self.rt.state,
                identity={"namespace": self.namespace, "pod": self.name, "uid": self.uid, "node": self.node},
                on_exit=lambda _proc: self._wake.set(),
                python=self.rt.python,
            )
        except OSError as exc:
            stamp = now()
            c.set_terminated(Terminated(128, "StartError", stamp, stamp, message=f"starting the shim: {exc}"))
            return
        self.procs[c.name] = proc
        # Running means exec'd, as with a runtime's StartContainer; a start error arrives as the exit.
        if not proc.exec_done.wait(EXEC_TIMEOUT):
            log.warning("%r: container %s (pid %d) slow to exec", self, c.name, proc.pid)
        c.container_id = container_id(self.uid, c.name, c.restart_count)
        if proc.start_error is None:
            c.set_running(rfc3339(proc.started_at), c.container_id)
            log.info("%r: started container %s (pid %d)", self, c.name, proc.pid)

    def _count_attempt(self, c: ContainerState) -> None:
        if c.name in self._attempted:
            c.restart_count += 1
        self._attempted.add(c.name)

    # -- stopping -------------------------------------------------------------------------------

    def _termination_reason(self, pod: Obj) -> str | None:
        if self._removed:
            return "removed"
        if self._shutdown:
            return "shutdown"
        if pod["metadata"].get("deletionTimestamp"):
            return "delete"
        return None

    def _grace(self, pod: Obj, reason: str) -> float:
        if reason == "removed":
            return FORCE_DELETE_GRACE
        meta, spec = pod["metadata"], pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        grace = float(grace)
        if reason == "shutdown":
            grace = min(grace, self.rt.shutdown_grace)
        return max(grace, 0.0)

    def _terminate(self, pod: Obj, reason: str) -> bool:
        grace = self._grace(pod, reason)
        deadline = time.monotonic() + grace
        if self._terminating is None:
            self._terminating = reason
            self._already_finished = self._finished
            self._next_start.clear()
            # A terminating pod leaves its Service's endpoints at once: its replacement's name must
            # resolve to the replacement, not to this pod during its grace period.
            self.rt.hosts.remove(self.uid)
            if self.procs:
                log.info("%r: stopping (%s), grace %.0fs", self, reason, grace)
            for proc in self.procs.values():
                proc.signal_group(signal.SIGTERM)
            self._kill_deadline = deadline
        elif self._kill_deadline is not None:
            self._kill_deadline = min(self._kill_deadline, deadline)  # a shorter grace wins
        if self.procs:
            if (
                self._kill_deadline is not None
                and time.monotonic() >= self._kill_deadline
                and not self._killed
            ):
                for proc in self.procs.values():
                    proc.signal_group(signal.SIGKILL)
                self._killed = True
                self._kill_deadline = time.monotonic() + 10.0
            return False
        self._kill_deadline = None
        self._finish()
        if reason == "removed" or (self._frozen and reason == "shutdown"):
            self._release()
            return True
        if reason == "shutdown":
            if not self._already_finished and self._written is not None:
                self.facts.reason = "Terminated"
                self.facts.message = SHUTDOWN_MESSAGE
                self.facts.extra_conditions = [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": SHUTDOWN_MESSAGE,
                    }
                ]
                self._write(pod, attempts=1)
            return True
        # Deleted: final status, then remove the object, as kubelet does.
        if not self._adopted_terminal and self._write(pod) is None and not self._removed:
            self._retry_at = time.monotonic() + 1.0
            return False
        return self._delete()

    def _delete(self) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            call(self.rt.kube.core.delete_namespaced_pod, self.name, self.namespace, body=body)
        except TRANSIENT as exc:
            if status_of(exc) not in (404, 409):
                log.warning("%r: delete failed: %s; retrying", self, exc)
                self._retry_at = time.monotonic() + 1.0
                return False
        self._release()
        return True

    def _finish(self) -> None:
        """No process left: the sandbox is gone; its name no longer resolves."""
        self._finished = True
        self._next_start.clear()
        self.facts.sandbox_ready = False
        self.rt.hosts.remove(self.uid)

    def _release(self) -> None:
        self.rt.ips.release(self.uid)
        self.rt.hosts.remove(self.uid)
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)

    # -- status ---------------------------------------------------------------------------------

    def _write(self, pod: Obj, *, attempts: int = 0) -> Obj | None:
        """Patch the status if it changed; the status, or None if the write failed."""
        if self._adopted_terminal:
            return None
        terminal = self._terminating in ("delete", "shutdown") and not self.procs
        self.facts.terminal = terminal
        written = tuple(self._written["conditions"]) if self._written else ()
        status = pod_status(pod, self.init, self.regular, self.facts, now=now(), written=written)
        if status == self._written:
            return status
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            call(
                self.rt.kube.core.patch_namespaced_pod_status,
                self.name,
                self.namespace,
                body,
                _content_type=SMP,
            )
        except TRANSIENT as exc:
            code = status_of(exc)
            if code in (404, 409, 422):
                log.info("%r: pod gone or replaced (HTTP %s)", self, code)
                self._removed = True
                self._wake.set()
            else:
                log.warning("%r: status update failed: %s", self, exc)
                if not attempts:
                    self._retry_at = time.monotonic() + 1.0
            return None
        self._written = status
        return status


def _terminated_from_api(t: Obj) -> Terminated:
    return Terminated(
        t.get("exitCode", 0),
        t.get("reason") or "",
        t.get("startedAt"),
        t.get("finishedAt") or now(),
        signal=t.get("signal"),
        message=t.get("message"),
        container_id=t.get("containerID"),
    )
