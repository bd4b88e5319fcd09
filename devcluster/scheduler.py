"""The part of kube-scheduler the agent plays: filter this agent's nodes, score, pick one.

Filters, in kube-scheduler's order, each reporting kube-scheduler's reason text: node Ready,
spec.unschedulable, taints (NoSchedule/NoExecute) against tolerations, nodeSelector and
required node affinity (matchExpressions and matchFields), resource fit (cpu, memory, pods
and extended resources such as huawei.com/Ascend910). Scoring is "least allocated", ties
broken by name. Not modelled: pod (anti-)affinity, topology spread, host ports, preferred
affinity, preemption, volume topology.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Decision:
    node: str | None
    message: str = ""


def pod_requests(pod: Obj) -> dict[str, Decimal]:
    """Effective requests: max(sum of containers, largest init container) + overhead, + 1 pod."""
    spec = pod.get("spec", {})
    total: dict[str, Decimal] = {}
    for container in spec.get("containers", []):
        for name, value in _requests(container).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in spec.get("initContainers", []):
        for name, value in _requests(container).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    for name, value in (spec.get("overhead") or {}).items():
        total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    total["pods"] = Decimal(1)
    return total


def _requests(container: Obj) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    # The API server defaults requests from limits; do the same for objects built by hand.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: parse_quantity(value) for name, value in merged.items()}


def node_ready(node: Obj) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def tolerates(toleration: Obj, taint: Obj) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taint(pod: Obj, node: Obj) -> Obj | None:
    tolerations = pod.get("spec", {}).get("tolerations") or []
    for taint in node.get("spec", {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return dict(taint)
    return None


def _requirement_matches(req: Obj, values: dict[str, str]) -> bool:
    key, operator, wanted = req["key"], req["operator"], req.get("values") or []
    present = key in values
    value = values.get(key)
    if operator == "In":
        return present and value in wanted
    if operator == "NotIn":
        return not present or value not in wanted
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        try:
            actual, bound = int(value or ""), int(wanted[0])
        except (ValueError, IndexError):
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def term_matches(term: Obj, node: Obj) -> bool:
    """A NodeSelectorTerm: all its expressions and fields must match; an empty term matches nothing."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    labels = node["metadata"].get("labels") or {}
    node_fields = {"metadata.name": node["metadata"]["name"]}
    return all(_requirement_matches(r, labels) for r in expressions) and all(
        _requirement_matches(r, node_fields) for r in fields
    )


def affinity_matches(pod: Obj, node: Obj) -> bool:
    spec = pod.get("spec", {})
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    return any(term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])


def allocatable(node: Obj) -> dict[str, Decimal]:
    return {k: parse_quantity(v) for k, v in (node.get("status", {}).get("allocatable") or {}).items()}


def insufficient(request: dict[str, Decimal], free: dict[str, Decimal]) -> list[str]:
    reasons = []
    for name, wanted in sorted(request.items()):
        if wanted > 0 and wanted > free.get(name, Decimal(0)):
            reasons.append("Too many pods" if name == "pods" else f"Insufficient {name}")
    return reasons


def free_resources(node: Obj, pods_on_node: list[Obj]) -> dict[str, Decimal]:
    free = allocatable(node)
    for pod in pods_on_node:
        for name, value in pod_requests(pod).items():
            free[name] = free.get(name, Decimal(0)) - value
    return free


def filter_node(pod: Obj, node: Obj, pods_on_node: list[Obj]) -> list[str]:
    """Why `pod` cannot go to `node` (kube-scheduler's reason strings); [] if it fits."""
    if not node_ready(node):
        return ["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
    if node.get("spec", {}).get("unschedulable"):
        return ["node(s) were unschedulable"]
    taint = untolerated_taint(pod, node)
    if taint is not None:
        return [f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"]
    if not affinity_matches(pod, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    return insufficient(pod_requests(pod), free_resources(node, pods_on_node))


def _score(pod: Obj, node: Obj, pods_on_node: list[Obj]) -> tuple[Decimal, int]:
    """Least allocated: mean free fraction over cpu, memory and the extended resources asked for."""
    total = allocatable(node)
    free = free_resources(node, pods_on_node)
    request = pod_requests(pod)
    names = {"cpu", "memory"} | {n for n in request if "/" in n}
    fractions = [
        (free.get(n, Decimal(0)) - request.get(n, Decimal(0))) / total[n] for n in names if total.get(n)
    ]
    mean = sum(fractions, Decimal(0)) / len(fractions) if fractions else Decimal(0)
    return mean, -len(pods_on_node)


def schedule(pod: Obj, nodes: list[Obj], pods_by_node: dict[str, list[Obj]]) -> Decision:
    """Pick a node for `pod`, or explain (as kube-scheduler would) why none fits."""
    feasible = []
    reasons: Counter[str] = Counter()
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name = node["metadata"]["name"]
        failed = filter_node(pod, node, pods_by_node.get(name, []))
        if failed:
            reasons.update(failed)
        else:
            feasible.append(node)
    if feasible:
        best = max(feasible, key=lambda n: _score(pod, n, pods_by_node.get(n["metadata"]["name"], [])))
        return Decision(best["metadata"]["name"])
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    message = (
        f"0/{len(nodes)} nodes are available: {detail}." if detail else f"0/{len(nodes)} nodes are available."
    )
    return Decision(None, message)
