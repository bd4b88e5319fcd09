"""Pod status as kubelet writes it, from what the agent knows about each container.

Pure functions over plain data, following kubelet's own rules (pkg/kubelet/kubelet_pods.go
getPhase and pkg/kubelet/status/generate.go), so a controller sees here what it would see on a
real node: phase, the five conditions with kubelet's reasons and messages, and per-container
state/lastState/restartCount.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Terminated:
    exit_code: int
    reason: str
    started_at: str | None
    finished_at: str
    signal: int | None = None
    message: str | None = None
    container_id: str | None = None

    def to_api(self) -> Obj:
        out: Obj = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.signal is not None:
            out["signal"] = self.signal
        if self.message:
            out["message"] = self.message
        if self.container_id:
            out["containerID"] = self.container_id
        return out


@dataclass
class ContainerState:
    """One container as the agent tracks it: exactly one of waiting / running / terminated."""

    name: str
    image: str
    init: bool = False
    restart_count: int = 0
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    running_since: str | None = None
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    container_id: str | None = None
    ever_started: bool = False

    def set_waiting(self, reason: str, message: str | None = None) -> None:
        self.waiting_reason, self.waiting_message = reason, message
        self.running_since = None
        self.terminated = None

    def set_running(self, started_at: str, container_id: str) -> None:
        self.waiting_reason = self.waiting_message = None
        self.running_since = started_at
        self.container_id = container_id
        self.terminated = None
        self.ever_started = True

    def set_terminated(self, terminated: Terminated) -> None:
        self.waiting_reason = self.waiting_message = None
        self.running_since = None
        self.terminated = terminated

    @property
    def running(self) -> bool:
        return self.running_since is not None

    def to_api(self) -> Obj:
        state: Obj = {"waiting": None, "running": None, "terminated": None}
        if self.running_since is not None:
            state["running"] = {"startedAt": self.running_since}
        elif self.terminated is not None:
            state["terminated"] = self.terminated.to_api()
        else:
            waiting: Obj = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state["waiting"] = waiting
        last: Obj = {"waiting": None, "running": None, "terminated": None}
        if self.last_terminated is not None:
            last["terminated"] = self.last_terminated.to_api()
        out: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": fake_image_id(self.image) if self.ever_started else "",
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def fake_image_id(image: str) -> str:
    """Images are not pulled; a stable digest of the name keeps the field's usual shape."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def container_id(pod_uid: str, name: str, attempt: int) -> str:
    return "devcluster://" + hashlib.sha256(f"{pod_uid}/{name}/{attempt}".encode()).hexdigest()


def get_phase(
    restart_policy: str, init: list[ContainerState], regular: list[ContainerState], *, pod_is_terminal: bool
) -> str:
    """kubelet's getPhase (sidecar init containers aside)."""
    pending_init = failed_init = 0
    for c in init:
        if c.running:
            pending_init += 1
        elif c.terminated is not None:
            if c.terminated.exit_code != 0:
                failed_init += 1
        elif c.last_terminated is not None:
            if c.last_terminated.exit_code != 0:
                failed_init += 1
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for c in regular:
        if c.running:
            running += 1
        elif c.terminated is not None:
            stopped += 1
            succeeded += c.terminated.exit_code == 0
        elif c.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if failed_init and restart_policy == "Never":
        return "Failed"
    if pending_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if pod_is_terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _names(containers: list[ContainerState]) -> str:
    return "[" + " ".join(c.name for c in containers) + "]"


def conditions(
    pod: Obj, init: list[ContainerState], regular: list[ContainerState], *, phase: str, sandbox_ready: bool
) -> list[Obj]:
    """PodReadyToStartContainers, Initialized, ContainersReady and Ready (without timestamps)."""
    out: list[Obj] = [{"type": "PodReadyToStartContainers", "status": "True" if sandbox_ready else "False"}]

    incomplete = [c for c in init if not (c.terminated is not None and c.terminated.exit_code == 0)]
    if phase == "Succeeded":
        out.append({"type": "Initialized", "status": "True", "reason": "PodCompleted"})
    elif any(c.ever_started for c in regular) or not incomplete:
        out.append({"type": "Initialized", "status": "True"})
    else:
        out.append(
            {
                "type": "Initialized",
                "status": "False",
                "reason": "ContainersNotInitialized",
                "message": f"containers with incomplete status: {_names(incomplete)}",
            }
        )

    if phase in TERMINAL_PHASES:
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = {"status": "False", "reason": reason}
        out += [{"type": "ContainersReady", **ready}, {"type": "Ready", **ready}]
        return out
    unready = [c for c in regular if not c.running]
    if unready:
        not_ready = {
            "status": "False",
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: {_names(unready)}",
        }
        out += [{"type": "ContainersReady", **not_ready}, {"type": "Ready", **not_ready}]
        return out
    out.append({"type": "ContainersReady", "status": "True"})
    out.append(_ready_with_gates(pod))
    return out


def _ready_with_gates(pod: Obj) -> Obj:
    existing = {c.get("type"): c for c in pod.get("status", {}).get("conditions") or []}
    for gate in pod.get("spec", {}).get("readinessGates") or []:
        kind = gate.get("conditionType")
        condition = existing.get(kind)
        if condition is None:
            message = f'corresponding condition of pod readiness gate "{kind}" does not exist.'
        elif condition.get("status") != "True":
            message = (
                f'the status of pod readiness gate "{kind}" is not "True", but {condition.get("status")}'
            )
        else:
            continue
        return {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady", "message": message}
    return {"type": "Ready", "status": "True"}


@dataclass
class PodFacts:
    """What the agent knows about a pod besides its containers."""

    host_ip: str
    pod_ip: str | None = None
    start_time: str | None = None
    sandbox_ready: bool = False
    terminal: bool = False
    reason: str | None = None
    message: str | None = None
    extra_conditions: list[Obj] = field(default_factory=list)


def pod_status(
    pod: Obj,
    init: list[ContainerState],
    regular: list[ContainerState],
    facts: PodFacts,
    *,
    now: str,
    written: tuple[Obj, ...] = (),
) -> Obj:
    """The status to strategic-merge-patch onto the pod (conditions merge by type).

    `written` are the conditions this agent wrote last: they carry the lastTransitionTime even
    when the watch has not yet delivered them back.
    """
    restart_policy = pod.get("spec", {}).get("restartPolicy") or "Always"
    phase = get_phase(restart_policy, init, regular, pod_is_terminal=facts.terminal)
    if facts.terminal and phase not in TERMINAL_PHASES:
        phase = "Failed"
    previous = {c.get("type"): c for c in [*(pod.get("status", {}).get("conditions") or []), *written]}
    generation = pod.get("metadata", {}).get("generation")
    stamped = []
    for condition in [
        *conditions(pod, init, regular, phase=phase, sandbox_ready=facts.sandbox_ready),
        *facts.extra_conditions,
    ]:
        old = previous.get(condition["type"], {})
        unchanged = old.get("status") == condition["status"]
        full = {
            "lastProbeTime": None,
            "reason": None,
            "message": None,
            **condition,
            "lastTransitionTime": (old.get("lastTransitionTime") or now) if unchanged else now,
        }
        if generation is not None:
            full["observedGeneration"] = generation
        stamped.append(full)
    status: Obj = {
        "phase": phase,
        "conditions": stamped,
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "startTime": facts.start_time,
        "containerStatuses": [c.to_api() for c in regular],
        "reason": facts.reason,
        "message": facts.message,
    }
    if init:
        status["initContainerStatuses"] = [c.to_api() for c in init]
    if facts.pod_ip:
        status["podIP"] = facts.pod_ip
        status["podIPs"] = [{"ip": facts.pod_ip}]
    if generation is not None:
        status["observedGeneration"] = generation
    return status
