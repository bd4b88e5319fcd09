"""The objects an attempt consists of: a headless Service per job and one pod per pod index (each
running `spec.ranksPerPod` ranks).

Pure functions from the typed job to raw bodies. The trainer's environment comes from the
trainer's own contract module, so the two sides cannot drift apart.
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any

from controller.api.constants import SHARED_VOLUME_NAME
from controller.api.types import TrainingJob
from controller.core import gang
from respawn_protocol import contract, inplace
from respawn_protocol import report as reports
from respawn_protocol.crd import (
    API_VERSION,
    KIND,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_RANK,
    MANAGED_BY,
)

HOSTNAME_LABEL = "kubernetes.io/hostname"
REPORT_INTERVAL_DEFAULT = 60.0  # rank 0's progress reports without hang detection


def pod_name(job: str, attempt: int, rank: int) -> str:
    return f"{job}-a{attempt}-{rank}"


def owner_reference(job: TrainingJob) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_labels(job: TrainingJob) -> dict[str, str]:
    return {LABEL_JOB: job.name, LABEL_MANAGED_BY: MANAGED_BY}


def headless_service(job: TrainingJob) -> dict[str, Any]:
    """Gives every worker a stable DNS name `<pod>.<job>.<namespace>.svc` for MS_SCHED_HOST."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": selector_labels(job),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(job),
            # Workers must find each other before they are Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "ms-sched", "port": job.spec.scheduler_port}],
        },
    }


def trainer_env(
    job: TrainingJob, attempt: int, index: int, replicas: int, save_steps: int | None = None
) -> list[dict[str, Any]]:
    """The variables the worker pod `index` of `replicas` gets. Auto-resume names the job's
    checkpoint directory and leaves `load_checkpoint` / `resume_training` (pretrained weights) to the
    user: the trainer resumes from the directory once it holds a complete step. With
    `spec.ranksPerPod` n, the pod runs ranks index x n ... index x n + n - 1: RESPAWN_RANK and
    MS_NODE_ID name its first (respawn_protocol/contract.py)."""
    output = job.spec.output_path
    sched_host = f"{pod_name(job.name, attempt, 0)}.{job.name}.{job.namespace}.svc"
    per_pod = job.spec.ranks_per_pod
    first, world = index * per_pod, replicas * per_pod
    values = {
        contract.SHARED_PATHS: job.spec.mount_path,
        contract.OUTPUT_DIR: output,
        contract.JOB_CHECKPOINT_DIR: posixpath.join(output, contract.CHECKPOINT_DIR),
        contract.RANK: str(first),
        contract.WORLD_SIZE: str(world),
        contract.ATTEMPT: str(attempt),
        contract.MS_SCHED_HOST: sched_host,
        contract.MS_SCHED_PORT: str(job.spec.scheduler_port),
        contract.MS_WORKER_NUM: str(world),
        contract.MS_LOCAL_WORKER: str(per_pod),
        contract.MS_NODE_RANK: str(index),
        contract.MS_NODE_ID: str(first),
        contract.MS_ROLE: "MS_WORKER",
        # Last, so the variables above keep their order; always set, so a template's value of it
        # never makes the entry point start ranks the controller did not count.
        contract.RANKS_PER_POD: str(per_pod),
        reports.POD_NAME: pod_name(job.name, attempt, index),
        reports.POD_NAMESPACE: job.namespace,
        reports.REPORT_INTERVAL: f"{report_interval(job):g}",
    }
    if save_steps is not None:
        values[contract.SAVE_CHECKPOINT_STEPS] = str(save_steps)
    if job.spec.failure_policy.restart_in_place:
        values[inplace.ENV] = "true"
    return [{"name": k, "value": v} for k, v in values.items()] + store_env(job)


def store_env(job: TrainingJob) -> list[dict[str, Any]]:
    """Where the trainers upload and predownload (spec.checkpointStore); the credentials by
    reference to the job's Secret, which the controller never reads. A Secret that is missing or
    lacks a key keeps the pod from starting, and the kubelet says which."""
    store = job.spec.checkpoint_store
    if store is None:
        return []
    values = {
        contract.STORE_ENDPOINT: store.endpoint,
        contract.STORE_BUCKET: store.bucket,
        contract.STORE_PREFIX: store.prefix,
    }
    if store.region:
        values[contract.STORE_REGION] = store.region
    secret = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": key}}}
        for key in (contract.STORE_ACCESS_KEY_ID, contract.STORE_SECRET_ACCESS_KEY)
    ]
    return [{"name": k, "value": v} for k, v in values.items()] + secret


def report_interval(job: TrainingJob) -> float:
    """Seconds between rank 0's progress reports: four per progress timeout (5 s to 60 s), so a hang
    is told from a slow report; one a minute without hang detection."""
    timeout = job.spec.failure_policy.progress_timeout
    return REPORT_INTERVAL_DEFAULT if not timeout else min(60.0, max(5.0, timeout / 4))


def report_account(job: TrainingJob) -> str:
    """The ServiceAccount the workers run as unless the template names one."""
    return f"respawn-{job.name}"


def pod_account(job: TrainingJob) -> str:
    return str((job.spec.template.get("spec") or {}).get("serviceAccountName") or report_account(job))


def report_access(job: TrainingJob, *, attempt: int, replicas: int) -> tuple[dict[str, Any], ...]:
    """What lets the workers report (respawn_protocol/report.py): a Role that may patch exactly the
    pods of this attempt, bound to the ServiceAccount they run as; the job's own ServiceAccount when
    the template names none. All owned by the job, so they go with it."""
    meta = {
        "name": report_account(job),
        "namespace": job.namespace,
        "labels": selector_labels(job),
        "ownerReferences": [owner_reference(job)],
    }
    names = [pod_name(job.name, attempt, rank) for rank in range(replicas)]
    # A supervisor that restarts in place also watches its own pod for the controller's word: list
    # and watch by name (fieldSelector metadata.name, which RBAC authorizes as that resourceName).
    verbs = ["patch", "get", "list", "watch"] if job.spec.failure_policy.restart_in_place else ["patch"]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta,
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs, "resourceNames": names}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": pod_account(job), "namespace": job.namespace}],
    }
    objects: tuple[dict[str, Any], ...] = (role, binding)
    if pod_account(job) == report_account(job):
        objects = ({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}, *objects)
    return objects


def output_mount(job: TrainingJob) -> dict[str, str]:
    """Only the job's own output directory of the shared volume, at the path it has on the volume
    (`<mountPath>/<outputDir>`): a worker never sees the rest of the volume, other jobs' or other
    namespaces' files. The kubelet creates the directory when it does not exist."""
    return {"name": SHARED_VOLUME_NAME, "mountPath": job.spec.output_path, "subPath": job.spec.output_dir}


def _avoid_nodes(spec: dict[str, Any], nodes: tuple[str, ...]) -> None:
    """Add `hostname NotIn nodes` to every required node-selector term (ANDed within a term)."""
    expression = {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(nodes)}
    affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).append(copy.deepcopy(expression))


def secure_defaults(spec: dict[str, Any]) -> None:
    """Give every container that sets no securityContext what the restricted Pod Security Standard
    asks of it (kubernetes.io/docs/concepts/security/pod-security-standards/#restricted), so a plain
    template runs in a restricted namespace. A container that sets any securityContext keeps it as
    it is: its author chose, and a default next to, say, `privileged: true` would make the pod
    invalid. What the pod's securityContext decides (runAsNonRoot, runAsUser 0, a seccomp profile)
    is not overridden per container. Windows pods take none of these fields."""
    pod = spec.get("securityContext") or {}
    if (spec.get("os") or {}).get("name") == "windows":
        return
    defaults: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    if "runAsNonRoot" not in pod and pod.get("runAsUser") != 0:
        defaults["runAsNonRoot"] = True
    if "seccompProfile" not in pod:
        defaults["seccompProfile"] = {"type": "RuntimeDefault"}
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if not container.get("securityContext"):
                container["securityContext"] = copy.deepcopy(defaults)


def worker_pod(
    job: TrainingJob,
    *,
    attempt: int,
    rank: int,
    replicas: int,
    avoid_nodes: tuple[str, ...] = (),
    save_steps: int | None = None,
) -> dict[str, Any]:
    template = copy.deepcopy(job.spec.template)
    spec: dict[str, Any] = template.get("spec") or {}
    name = pod_name(job.name, attempt, rank)
    spec["restartPolicy"] = "Never"
    spec["serviceAccountName"] = pod_account(job)
    spec["hostname"] = name
    spec["subdomain"] = job.name
    if job.spec.shared_volume is not None:
        volumes = [v for v in spec.get("volumes") or [] if v.get("name") != SHARED_VOLUME_NAME]
        spec["volumes"] = [*volumes, {**job.spec.shared_volume, "name": SHARED_VOLUME_NAME}]
    injected = trainer_env(job, attempt, rank, replicas, save_steps)
    injected_names = {e["name"] for e in injected}
    for container in spec.get("containers") or []:
        if container.get("name") != job.spec.trainer_container:
            continue
        env = [e for e in container.get("env") or [] if e.get("name") not in injected_names]
        container["env"] = [*env, *injected]
        if job.spec.shared_volume is not None:
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != SHARED_VOLUME_NAME]
            container["volumeMounts"] = [*mounts, output_mount(job)]
    if avoid_nodes:
        _avoid_nodes(spec, avoid_nodes)
    if job.spec.security_defaults:
        secure_defaults(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _pod_metadata(job, template.get("metadata") or {}, name, attempt, rank),
        "spec": spec,
    }


def _pod_metadata(
    job: TrainingJob, template_meta: dict[str, Any], name: str, attempt: int, rank: int
) -> dict[str, Any]:
    """The template's labels and annotations, the PodGroup's marks, then the controller's own."""
    group_labels, group_annotations = gang.member_marks(job)
    labels = {
        **(template_meta.get("labels") or {}),
        **group_labels,
        **selector_labels(job),
        LABEL_ATTEMPT: str(attempt),
        LABEL_RANK: str(rank),
    }
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "annotations": {**(template_meta.get("annotations") or {}), **group_annotations},
        "ownerReferences": [owner_reference(job)],
    }
