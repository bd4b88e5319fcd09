"""The pods respawn creates carry the user's template and nothing that widens its privileges."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from controller.api.types import parse_job
from controller.core.podspec import worker_pod

REPO = Path(__file__).resolve().parents[2]
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "nlp"}},
    "spec": {
        "serviceAccountName": "trainer",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "containers": [
            {
                "name": "trainer",
                "image": "t",
                "securityContext": {"allowPrivilegeEscalation": False},
                "env": [{"name": "RESPAWN_RANK", "value": "99"}, {"name": "KEEP", "value": "1"}],
            },
            {"name": "sidecar", "image": "s"},
        ],
    },
}


def job() -> Any:
    return parse_job(
        {
            "metadata": {"name": "llm", "namespace": "ns", "uid": "u"},
            "spec": {
                "replicas": 2,
                "template": copy.deepcopy(TEMPLATE),
                "sharedVolume": {
                    "volume": {"persistentVolumeClaim": {"claimName": "c"}},
                    "mountPath": "/mnt/s",
                },
            },
        }
    )


def test_pods_add_only_placement_identity_and_the_shared_volume() -> None:
    spec = worker_pod(job(), attempt=3, rank=1, replicas=2, avoid_nodes=("bad",))["spec"]
    added = set(spec) - set(TEMPLATE["spec"])
    assert added == {"restartPolicy", "hostname", "subdomain", "volumes", "affinity"}
    for key in ("securityContext", "serviceAccountName"):
        assert spec[key] == TEMPLATE["spec"][key]
    forbidden = {
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "privileged",
        "hostPath",
        "automountServiceAccountToken",
    }
    assert not forbidden & set(re.findall(r"'(\w+)'", repr(spec)))
    trainer, sidecar = spec["containers"]
    assert trainer["securityContext"] == {"allowPrivilegeEscalation": False}
    assert sidecar == TEMPLATE["spec"]["containers"][1], "only the trainer container is changed"
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["RESPAWN_RANK"] == "1" and env["KEEP"] == "1", "injected values win, user values stay"


def test_workers_learn_the_jobs_checkpoint_directory_and_keep_the_users_load_checkpoint() -> None:
    """Auto-resume is the trainer's rule over RESPAWN_JOB_CHECKPOINT_DIR; what to load before the job
    has a checkpoint (pretrained weights) stays the user's, from the config or the template's env."""
    env = {
        e["name"]: e["value"]
        for e in worker_pod(job(), attempt=0, rank=0, replicas=2)["spec"]["containers"][0]["env"]
    }
    assert env["RESPAWN_JOB_CHECKPOINT_DIR"] == "/mnt/s/ns/llm/checkpoint"
    assert env["RESPAWN_OUTPUT_DIR"] == "/mnt/s/ns/llm"
    assert "RESPAWN_LOAD_CHECKPOINT" not in env and "RESPAWN_RESUME_TRAINING" not in env

    pretrained = job()
    trainer = pretrained.spec.template["spec"]["containers"][0]
    trainer["env"] += [
        {"name": "RESPAWN_LOAD_CHECKPOINT", "value": "/mnt/s/models/base.ckpt"},
        {"name": "RESPAWN_RESUME_TRAINING", "value": "false"},
    ]
    pod = worker_pod(pretrained, attempt=1, rank=1, replicas=2)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["RESPAWN_LOAD_CHECKPOINT"] == "/mnt/s/models/base.ckpt"
    assert env["RESPAWN_RESUME_TRAINING"] == "false"
    assert env["RESPAWN_JOB_CHECKPOINT_DIR"] == "/mnt/s/ns/llm/checkpoint"


def test_checkpoint_loading_never_unpickles() -> None:
    """MindSpore checkpoints are protobuf and safetensors; nothing here may fall back to pickle."""
    pattern = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\beval\(|\bexec\(")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("trainer_image", "controller")
        for path in (REPO / package).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
