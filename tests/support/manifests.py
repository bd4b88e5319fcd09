"""Manifests: the one TrainingJob builder, and the pod status a kubelet would write.

`training_job` covers every shape the tests and scripts use: the trainer with its run.yaml from a
ConfigMap, any other command, pods that only a test playing kubelet will ever see (a scheduler name
nothing serves), a shared volume, a failure policy, and spec fields the schema should reject.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from respawn_protocol.crd import GROUP, VERSION

RUN_MOUNT = "/etc/respawn"
SHARED_MOUNT = "/mnt/shared"
# The test plays kubelet: no scheduler (the node agent's included) may take these pods.
PLAYED_SCHEDULER = "kubelet-played-by-the-test"


def trainer_command(config: str = f"{RUN_MOUNT}/run.yaml") -> list[str]:
    """The trainer image's entry point, run by the node agent with this interpreter."""
    return [sys.executable, "-m", "trainer_image", "--config", config]


def training_job(
    name: str,
    *,
    replicas: int = 2,
    image: str = "respawn/trainer",
    command: list[str] | None = None,
    run_config: str | None = None,
    shared: Path | None = None,
    namespace: str | None = None,
    pod: Mapping[str, Any] | None = None,
    backoff: tuple[float, float] | None = None,
    spec: Mapping[str, Any] | None = None,
    **policy: Any,
) -> dict[str, Any]:
    """A TrainingJob of `replicas` workers in one container named `trainer`.

    `command` (none: the image's); `run_config`, a ConfigMap whose run.yaml is mounted at
    /etc/respawn; `shared`, a hostPath directory as the job's shared volume at /mnt/shared; `pod`,
    more fields of the pod template's spec (schedulerName, nodeSelector, ...); `backoff`,
    (initialSeconds, maxSeconds); `policy`, more failurePolicy fields in the API's names
    (maxRestarts=1). Without `backoff` and `policy` there is no failurePolicy: the API server's
    defaults apply. `spec` replaces top-level spec fields last (for bodies the schema rejects).
    """
    container: dict[str, Any] = {"name": "trainer", "image": image}
    if command is not None:
        container["command"] = command
    template: dict[str, Any] = {**(pod or {}), "containers": [container]}
    if run_config is not None:
        container["volumeMounts"] = [{"name": run_config, "mountPath": RUN_MOUNT}]
        template["volumes"] = [{"name": run_config, "configMap": {"name": run_config}}]
    body_spec: dict[str, Any] = {"replicas": replicas, "template": {"spec": template}}
    if shared is not None:
        body_spec["sharedVolume"] = {
            "mountPath": SHARED_MOUNT,
            "volume": {"hostPath": {"path": str(shared), "type": "DirectoryOrCreate"}},
        }
    if backoff is not None:
        policy["backoff"] = {"initialSeconds": backoff[0], "maxSeconds": backoff[1]}
    if policy:
        body_spec["failurePolicy"] = policy
    body_spec.update(spec or {})
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": metadata,
        "spec": body_spec,
    }


def run_config_map(run: Mapping[str, Any], name: str = "run", namespace: str | None = None) -> dict[str, Any]:
    """A ConfigMap holding a trainer's run.yaml (`training_job(run_config=name)` mounts it)."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"run.yaml": yaml.safe_dump(run)},
    }


def played_job(
    name: str, replicas: int = 2, spec: Mapping[str, Any] | None = None, **policy: Any
) -> dict[str, Any]:
    """A job whose pods nothing schedules or runs: the test writes their status (`pod_status`)."""
    return training_job(
        name,
        replicas=replicas,
        image="trainer",
        command=["true"],
        pod={"schedulerName": PLAYED_SCHEDULER},
        backoff=(0, 0),
        spec=spec,
        **policy,
    )


def pod_status(
    phase: str, exit_code: int | None = None, *, container: str = "trainer", image: str = "trainer"
) -> dict[str, Any]:
    """A status patch as a kubelet writes it: the container running, or terminated with `exit_code`."""
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-23T00:00:00Z"}}
    if exit_code is not None:
        reason = "Completed" if exit_code == 0 else "Error"
        state = {
            "terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": "2026-11-23T00:00:01Z"}
        }
    return {
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container,
                    "image": image,
                    "imageID": "",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
    }
