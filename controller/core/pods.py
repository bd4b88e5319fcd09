"""Reading raw pod bodies: which attempt and rank a pod belongs to, its phase, its trainer's state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.core.observations import Observations
from controller.core.plan import DeletePod
from respawn_protocol.crd import LABEL_ATTEMPT, LABEL_RANK

Pod = Mapping[str, Any]


def _label_int(pod: Pod, label: str) -> int | None:
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(label)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def attempt_of(pod: Pod) -> int | None:
    return _label_int(pod, LABEL_ATTEMPT)


def rank_of(pod: Pod) -> int | None:
    return _label_int(pod, LABEL_RANK)


def name_of(pod: Pod) -> str:
    return str(pod["metadata"]["name"])


def uid_of(pod: Pod) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def owned_by(pod: Pod, uid: str) -> bool:
    """The pod's controller is the object with this uid: a pod of this incarnation of the job. Pods
    that only carry its labels or name (another object's, or a deleted namesake job's) are not."""
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == uid for ref in refs)


def node_of(pod: Pod) -> str:
    return (pod.get("spec") or {}).get("nodeName") or ""


def phase_of(pod: Pod) -> str | None:
    return (pod.get("status") or {}).get("phase")


def terminating(pod: Pod) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def container_status(pod: Pod, container: str) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return status
    return {}


def split_attempts(pods: Iterable[Pod], attempt: int) -> tuple[list[Pod], list[Pod]]:
    """(pods of `attempt`, pods of any other attempt)."""
    current: list[Pod] = []
    older: list[Pod] = []
    for pod in pods:
        (current if attempt_of(pod) == attempt else older).append(pod)
    return current, older


def deletions(pods: Sequence[Pod], obs: Observations) -> list[DeletePod]:
    """Delete what is not terminating yet; force what sits on a lost node, where it never would."""
    out = []
    for pod in pods:
        node = node_of(pod)
        lost = node in obs.nodes and not obs.nodes[node].ready
        if not terminating(pod) or lost:
            out.append(DeletePod(name_of(pod), uid_of(pod), force=lost))
    return out


_META_KEPT = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "labels",
    "annotations",
    "ownerReferences",
    "creationTimestamp",
    "deletionTimestamp",
)


def slim(pod: Pod) -> dict[str, Any]:
    """The fields of a pod that anything in the controller reads; the informer caches only these.

    A worker's spec (containers, env, volumes, affinity) and its managedFields are most of its
    bytes and are never read back: the controller builds pods from the TrainingJob, not from its
    cache. At 20,000 pods that is the difference between fitting the chart's memory limit and not.
    """
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    slim_spec = {k: spec[k] for k in ("nodeName", "schedulerName") if k in spec}
    return {
        "apiVersion": pod.get("apiVersion"),
        "kind": pod.get("kind"),
        "metadata": {k: meta[k] for k in _META_KEPT if k in meta},
        "spec": slim_spec,
        "status": pod.get("status") or {},
    }
