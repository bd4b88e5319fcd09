"""Restarts in place (respawn_protocol/inplace.py): pods kept across attempts, seen as the attempt
their supervisor runs.

The rest of the core reads a pod's attempt from its label and its trainer's exit from the
container's state. A pod kept across an in-place restart keeps its label (its name, and the
scheduler's host name in its peers' environment, come from it); `project` gives the core a view
of it as the attempt its supervisor serves: a failed trainer as a failed container, a supervisor
that stopped its trainers as a pod of the next attempt still waiting for its start. With that one
view, failure detection, reports, success and "Running" need no second path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.api.constants import Action, Phase, Reason
from controller.api.types import JobStatus
from controller.core.context import Context
from controller.core.plan import AnnotatePod, Step
from controller.core.pods import Pod, attempt_of, name_of, node_of, phase_of, terminating, uid_of
from controller.core.policy import devices, failures
from respawn_protocol import inplace
from respawn_protocol.crd import LABEL_ATTEMPT

# Failures of the trainer processes themselves: their pods and nodes are fine to run the next attempt.
PROCESS_FAULTS = frozenset({Reason.ERROR, Reason.OOM_KILLED, Reason.STOPPED, Reason.PROGRESS_TIMEOUT})
IDLE = "WaitingForAttempt"  # the waiting reason of a kept pod whose supervisor awaits its start
POD_PHASE = "podPhase"  # in a view's status: the phase the pod itself has
POD_ATTEMPT = "podAttempt"  # ... and the attempt that created it


def state_of(pod: Pod) -> inplace.State | None:
    return inplace.decode_state(((pod.get("metadata") or {}).get("annotations") or {}).get(inplace.STATE))


def command_of(pod: Pod) -> inplace.Command | None:
    return inplace.decode_command(((pod.get("metadata") or {}).get("annotations") or {}).get(inplace.COMMAND))


def held(pod: Pod, status: JobStatus) -> bool:
    """A pod the current attempt runs in although an earlier attempt created it (a view too)."""
    return status.pod_attempt is not None and own_attempt(pod) == status.pod_attempt


def own_attempt(pod: Pod) -> int | None:
    """The attempt that created the pod, also of a view (whose label says the attempt it serves)."""
    own = (pod.get("status") or {}).get(POD_ATTEMPT)
    return own if isinstance(own, int) else attempt_of(pod)


def project(pod: Pod, status: JobStatus, trainer: str) -> Pod:
    """The pod as the attempt its supervisor serves; pods without a supervisor as they are."""
    state, label = state_of(pod), attempt_of(pod)
    if state is None or label is None:
        return pod
    kept = held(pod, status)
    if not kept and state.attempt != label:
        return pod  # an in-place restart given up: the pod is its own attempt's, on its way out
    attempt, phase = state.attempt, phase_of(pod)
    container: dict[str, Any] | None = None
    if kept and not (phase == "Running" and not terminating(pod)):
        attempt = max(attempt, status.attempt)  # a member of the gang whatever it ran: failing as a pod
    elif phase == "Running" and not terminating(pod):
        if kept and state.attempt < status.attempt and state.state == inplace.STOPPED:
            attempt, phase, container = status.attempt, "Pending", {"waiting": {"reason": IDLE}}
        elif state.state != inplace.RUNNING:
            code = state.exit_code if state.failed else None
            terminated = {"exitCode": code, "finishedAt": state.at, "message": state.message}
            phase, container = (
                "Failed",
                {"terminated": {k: v for k, v in terminated.items() if v is not None}},
            )
        else:
            container = {"running": {"startedAt": state.at}} if state.at else None
    return _view(pod, attempt, phase, trainer, container)


def _view(pod: Pod, attempt: int, phase: str | None, trainer: str, container: dict[str, Any] | None) -> Pod:
    own = attempt_of(pod)
    meta = dict(pod.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_ATTEMPT: str(attempt)}
    status = dict(pod.get("status") or {})
    # The pod's own phase and attempt stay readable: whether it can host the next attempt, and
    # whether an in-place restart keeps it.
    status.setdefault(POD_PHASE, status.get("phase"))
    status.setdefault(POD_ATTEMPT, own)
    status["phase"] = phase
    if container is not None:
        statuses = [s for s in status.get("containerStatuses") or [] if s.get("name") != trainer]
        status["containerStatuses"] = [*statuses, {"name": trainer, "state": container}]
    return {**pod, "metadata": meta, "status": status}


def idle(pod: Pod) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any(((s.get("state") or {}).get("waiting") or {}).get("reason") == IDLE for s in statuses)


def eligible(ctx: Context, status: JobStatus, verdict: failures.Verdict) -> bool:
    """Whether this restart can keep the gang's pods: the job asks for it, the trainers failed on
    their own, and every pod of the gang is up on a ready node under a supervisor."""
    if not ctx.policy.restart_in_place or verdict.action is Action.FAIL_JOB:
        return False
    if verdict.failure.reason not in PROCESS_FAULTS or verdict.faulty_node:
        return False
    replicas = status.replicas or ctx.job.spec.replicas
    return len(ctx.current) == replicas and not any(_unusable(p, ctx) for p in ctx.current)


def own_phase(pod: Pod) -> str | None:
    status = pod.get("status") or {}
    return status.get(POD_PHASE, status.get("phase"))


def _unusable(pod: Pod, ctx: Context, *, blink: bool = False) -> str | None:
    """Why this kept pod cannot run the next attempt; None if it can. With `blink`, a NotReady node
    still can until it counts as lost (nodeLostTimeoutSeconds): its processes run on meanwhile."""
    if state_of(pod) is None:
        return "no supervisor"
    if own_phase(pod) != "Running" or terminating(pod):
        return f"pod {'terminating' if terminating(pod) else own_phase(pod) or 'phase unknown'}"
    node = ctx.obs.nodes.get(node_of(pod))
    if node is not None and not node.ready:
        lost = failures.node_lost_in(pod, ctx)
        if not blink or (lost is not None and lost[0] <= 0):
            return f"node {node_of(pod)} not ready"
    report = ctx.obs.device_reports.get(node_of(pod))
    if report is not None and devices.running_fault(pod, report) is not None:
        return f"a device fault on node {node_of(pod)}"
    return None


def stop(pods: Sequence[Pod], attempt: int) -> tuple[Step, ...]:
    """Tell each pod's supervisor to stop the trainers of attempts before `attempt`; once is enough."""
    wanted = inplace.Command(attempt, run=False)
    return tuple(_command(p, wanted) for p in pods if _stale(command_of(p), attempt))


def start(pods: Sequence[Pod], attempt: int, save_steps: int | None) -> tuple[Step, ...]:
    """Tell each waiting pod's supervisor to start `attempt`."""
    wanted = inplace.Command(attempt, run=True, save_steps=save_steps)
    return tuple(_command(p, wanted) for p in pods if command_of(p) != wanted)


def _stale(command: inplace.Command | None, attempt: int) -> bool:
    return command is None or command.attempt < attempt


def _command(pod: Pod, command: inplace.Command) -> AnnotatePod:
    return AnnotatePod(name_of(pod), uid_of(pod), inplace.COMMAND, command.encode())


def broken(ctx: Context, status: JobStatus, owned: Sequence[Pod]) -> str | None:
    """Why the in-place restart under way cannot go on (a kept pod failed, left or lost its node):
    the restart then recreates the gang. None while it can, or when none is under way."""
    if status.pod_attempt is None or status.phase is not Phase.RESTARTING:
        return None
    kept = [p for p in owned if held(p, status)]
    replicas = ctx.job.spec.replicas
    if len(kept) < replicas:
        return f"{replicas - len(kept)} of the gang's {replicas} pods are gone"
    for pod in kept:
        if (why := _unusable(pod, ctx, blink=True)) is not None:
            return f"pod {name_of(pod)} cannot run the next attempt: {why}"
    return None
