"""The pods respawn creates carry the user's template and nothing that widens its privileges."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from controller.api.types import InvalidSpec, parse_job
from controller.core.podspec import trainer_env, worker_pod

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


def job(**spec: Any) -> Any:
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
                **spec,
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
    assert sidecar == {
        **TEMPLATE["spec"]["containers"][1],
        # The pod decides runAsNonRoot; the rest is what restricted Pod Security asks of a container.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }, "the trainer container gets the environment, a container without a securityContext defaults"
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


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    (trainer, _sidecar) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in trainer["env"]}


def test_one_rank_per_pod_keeps_the_environment_it_always_had() -> None:
    names = [e["name"] for e in trainer_env(job(), 0, 1, 2)]
    assert names == [
        "SHARED_PATHS",
        "RESPAWN_OUTPUT_DIR",
        "RESPAWN_JOB_CHECKPOINT_DIR",
        "RESPAWN_RANK",
        "RESPAWN_WORLD_SIZE",
        "RESPAWN_ATTEMPT",
        "MS_SCHED_HOST",
        "MS_SCHED_PORT",
        "MS_WORKER_NUM",
        "MS_LOCAL_WORKER",
        "MS_NODE_RANK",
        "MS_NODE_ID",
        "MS_ROLE",
        "RESPAWN_RANKS_PER_POD",
        "RESPAWN_POD_NAME",
        "RESPAWN_POD_NAMESPACE",
        "RESPAWN_REPORT_INTERVAL",
    ]
    env = env_of(worker_pod(job(), attempt=0, rank=1, replicas=2))
    # What the trainer reports through (respawn_protocol/report.py): its own pod, by name.
    assert (env["RESPAWN_POD_NAME"], env["RESPAWN_REPORT_INTERVAL"]) == ("llm-a0-1", "60")
    assert (env["RESPAWN_RANK"], env["RESPAWN_WORLD_SIZE"], env["RESPAWN_RANKS_PER_POD"]) == ("1", "2", "1")
    assert (env["MS_WORKER_NUM"], env["MS_LOCAL_WORKER"], env["MS_NODE_RANK"], env["MS_NODE_ID"]) == (
        "2",
        "1",
        "1",
        "1",
    )


def test_several_ranks_per_pod_number_the_pods_first_rank_and_count_every_rank() -> None:
    four = job(ranksPerPod=4)
    assert (four.spec.ranks_per_pod, four.spec.world_size) == (4, 8)
    pod = worker_pod(four, attempt=2, rank=1, replicas=2)
    assert pod["metadata"]["name"] == "llm-a2-1"
    assert pod["metadata"]["labels"]["training.respawn.dev/rank"] == "1", "the label is the pod's index"
    env = env_of(pod)
    assert env["RESPAWN_RANK"] == "4", "pod 1 runs ranks 4..7"
    assert env["RESPAWN_RANKS_PER_POD"] == "4" and env["RESPAWN_WORLD_SIZE"] == "8"
    assert (env["MS_WORKER_NUM"], env["MS_LOCAL_WORKER"], env["MS_NODE_RANK"], env["MS_NODE_ID"]) == (
        "8",
        "4",
        "1",
        "4",
    )
    assert env["MS_SCHED_HOST"] == "llm-a2-0.llm.ns.svc", "the scheduler stays in pod 0"


def test_a_template_cannot_set_ranks_per_pod_behind_the_controllers_back() -> None:
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["containers"][0]["env"].append({"name": "RESPAWN_RANKS_PER_POD", "value": "8"})
    body = {"metadata": {"name": "llm", "namespace": "ns"}, "spec": {"replicas": 1, "template": template}}
    env = env_of(worker_pod(parse_job(body), attempt=0, rank=0, replicas=1))
    assert env["RESPAWN_RANKS_PER_POD"] == "1"


@pytest.mark.parametrize("value", [0, -1, "2", True])
def test_a_ranks_per_pod_the_schema_would_refuse_is_an_invalid_spec(value: Any) -> None:
    with pytest.raises(InvalidSpec, match="ranksPerPod"):
        job(ranksPerPod=value)


def test_workers_mount_only_their_jobs_directory_at_the_path_it_has_on_the_volume() -> None:
    """Tenant isolation: `subPath` = the job's outputDir, so no worker sees the rest of the shared
    volume; the paths the trainer gets are unchanged (`<mountPath>/<outputDir>`)."""
    spec = worker_pod(job(outputDir="ns/runs/llm"), attempt=0, rank=0, replicas=2)["spec"]
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "respawn-shared"]
    assert mounts == [{"name": "respawn-shared", "mountPath": "/mnt/s/ns/runs/llm", "subPath": "ns/runs/llm"}]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["RESPAWN_OUTPUT_DIR"] == "/mnt/s/ns/runs/llm"
    assert env["RESPAWN_JOB_CHECKPOINT_DIR"].startswith(mounts[0]["mountPath"] + "/")
    assert "volumeMounts" not in spec["containers"][1], "the sidecar gets no share of the volume"


@pytest.mark.parametrize("output_dir", ["other/llm", "nsx/llm", "n", "shared"])
def test_an_output_directory_outside_the_jobs_namespace_is_an_invalid_spec(output_dir: str) -> None:
    with pytest.raises(InvalidSpec, match=r"must lie under the job's namespace directory 'ns/'"):
        job(outputDir=output_dir)
    assert job(outputDir="ns").spec.output_dir == "ns"


def test_a_template_over_256_kib_is_an_invalid_spec_that_says_why() -> None:
    template = copy.deepcopy(TEMPLATE)
    template["metadata"] = {"annotations": {f"a{i}": "x" * 4000 for i in range(64)}}  # the CRD allows it
    job(template=template)  # 250 KiB: fine
    template["spec"]["containers"][0]["env"].append({"name": "BIG", "value": "y" * 20_000})
    with pytest.raises(
        InvalidSpec, match=r"spec.template is 27\d KiB as JSON, more than the 256 KiB allowed"
    ):
        job(template=template)


def test_a_gang_of_more_than_65536_ranks_is_an_invalid_spec() -> None:
    job(replicas=4096, ranksPerPod=16)
    said = r"spec\.replicas x spec\.ranksPerPod is 69632, more than 65536 ranks"
    with pytest.raises(InvalidSpec, match=said):
        job(replicas=4096, ranksPerPod=17)


RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def bare(pod_context: dict[str, Any] | None = None, **spec: Any) -> Any:
    """A job whose template says nothing about security unless told to."""
    template: dict[str, Any] = {
        "containers": [{"name": "trainer", "image": "t"}],
        "initContainers": [{"name": "i", "image": "t"}],
    }
    if pod_context is not None:
        template["securityContext"] = pod_context
    return parse_job(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"replicas": 1, "template": {"spec": template}, **spec},
        }
    )


def contexts(job: Any) -> list[Any]:
    spec = worker_pod(job, attempt=0, rank=0, replicas=1)["spec"]
    return [c.get("securityContext") for c in spec["initContainers"] + spec["containers"]]


def test_containers_without_a_security_context_get_what_restricted_pod_security_asks() -> None:
    assert contexts(bare()) == [RESTRICTED, RESTRICTED]
    first, second = contexts(bare())[0], contexts(bare())[1]
    assert first is not second and first["capabilities"] is not second["capabilities"]


def test_what_the_pod_decides_is_not_overridden_per_container() -> None:
    without = {k: v for k, v in RESTRICTED.items() if k not in ("runAsNonRoot", "seccompProfile")}
    root = {"runAsUser": 0, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}
    assert contexts(bare(root)) == [without, without], "root by choice and the pod's profile stay"
    assert "runAsNonRoot" not in contexts(bare({"runAsNonRoot": False}))[1]
    assert contexts(bare({"runAsUser": 1000}))[1] == RESTRICTED, "a non-root uid still needs runAsNonRoot"


def test_a_container_that_sets_a_security_context_keeps_exactly_it() -> None:
    job = bare()
    job.spec.template["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert contexts(job) == [RESTRICTED, {"privileged": True}]


def test_security_defaults_false_leaves_the_containers_as_the_template_has_them() -> None:
    assert contexts(bare(securityDefaults=False)) == [None, None]
    windows = bare()
    windows.spec.template["spec"]["os"] = {"name": "windows"}
    assert contexts(windows) == [None, None], "Windows pods may not carry these fields"


STORE = {"endpoint": "http://seaweedfs.storage:8333/", "bucket": "ckpt", "credentialsSecret": "s3-keys"}


def test_a_checkpoint_store_reaches_the_trainer_with_its_credentials_by_reference_only() -> None:
    pod = worker_pod(job(checkpointStore={**STORE, "region": "cn-1"}), attempt=0, rank=1, replicas=2)
    (trainer, sidecar) = pod["spec"]["containers"]
    env = {e["name"]: e for e in trainer["env"]}
    assert {
        k: env[k]["value"] for k in ("RESPAWN_STORE_ENDPOINT", "RESPAWN_STORE_BUCKET", "RESPAWN_STORE_PREFIX")
    } == {
        "RESPAWN_STORE_ENDPOINT": "http://seaweedfs.storage:8333",
        "RESPAWN_STORE_BUCKET": "ckpt",
        "RESPAWN_STORE_PREFIX": "ns/llm",  # the job's namespace and name, as outputDir defaults
    }
    assert env["RESPAWN_STORE_REGION"]["value"] == "cn-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": key}}}
    assert "env" not in sidecar
    plain = worker_pod(job(), attempt=0, rank=1, replicas=2)["spec"]["containers"][0]["env"]
    assert not [e for e in plain if e["name"].startswith(("RESPAWN_STORE_", "AWS_"))]


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({**STORE, "endpoint": "s3.example.com"}, "must be an http:// or https:// URL"),
        ({**STORE, "endpoint": "https://key:secret@s3.example.com"}, "must not carry credentials"),
        ({**STORE, "endpoint": "http://s3:8333/ckpt"}, "the bucket and prefix are fields"),
        ({**STORE, "endpoint": "http://s3:port"}, "invalid port"),
        ({**STORE, "bucket": "a..b"}, "must be an S3 bucket name"),
        ({**STORE, "prefix": "team/../other-team"}, "checkpointStore.prefix must be segments"),
        ({**STORE, "prefix": ""}, "must be a non-empty string"),
        ({k: v for k, v in STORE.items() if k != "credentialsSecret"}, "must name a Secret"),
        ({**STORE, "region": "Moon Base"}, "must be a region name"),
    ],
)
def test_a_malformed_checkpoint_store_is_refused_by_name(store: dict[str, Any], message: str) -> None:
    """What the schema says again, for a job admitted where it is not enforced."""
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        job(checkpointStore=store)
