"""Gang scheduling: the PodGroup that tells a batch scheduler the job's pods start together or not
at all, and the marks that put each worker in it.

Two PodGroup APIs exist: Volcano's (`scheduling.volcano.sh/v1beta1`; a pod joins with the annotation
`scheduling.k8s.io/group-name`) and the coscheduling plugin's of kubernetes-sigs/scheduler-plugins
(`scheduling.x-k8s.io/v1alpha1`; the label `scheduling.x-k8s.io/pod-group`). One PodGroup per job,
named after it and owned by it, with `minMember` = the attempt's pods: it outlives restarts, as the
gang it describes does. `minResources` is not set: summing the pods' requests needs quantity
arithmetic the scheduler does better, and without it Volcano admits the group by its pods.
"""

from __future__ import annotations

from typing import Any

from controller.api.types import TrainingJob

VOLCANO = "Volcano"
COSCHEDULING = "Coscheduling"

VOLCANO_API = "scheduling.volcano.sh/v1beta1"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"  # on the template: the PodGroup's queue
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"


def pod_group(job: TrainingJob, replicas: int, owner: dict[str, Any]) -> dict[str, Any] | None:
    """The job's PodGroup for an attempt of `replicas` pods; None without gang scheduling."""
    kind = job.spec.pod_group
    if kind is None:
        return None
    spec: dict[str, Any] = {"minMember": replicas}
    template_meta = job.spec.template.get("metadata") or {}
    if kind == VOLCANO and (queue := (template_meta.get("annotations") or {}).get(VOLCANO_QUEUE_ANNOTATION)):
        spec["queue"] = queue
    return {
        "apiVersion": VOLCANO_API if kind == VOLCANO else COSCHEDULING_API,
        "kind": "PodGroup",
        "metadata": {"name": job.name, "namespace": job.namespace, "ownerReferences": [owner]},
        "spec": spec,
    }


def member_marks(job: TrainingJob) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that make a worker pod a member of the job's PodGroup."""
    if job.spec.pod_group == VOLCANO:
        return {}, {VOLCANO_GROUP_ANNOTATION: job.name}
    if job.spec.pod_group == COSCHEDULING:
        return {COSCHEDULING_LABEL: job.name}, {}
    return {}, {}
