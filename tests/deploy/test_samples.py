"""deploy/samples/: TrainingJobs users apply as they are. The API server accepts them (server-side
dry run: schema, CEL rules, defaults), and the trainer accepts their run.yaml."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.deploy import documents
from trainer_image.config import parse_config

pytestmark = pytest.mark.timeout(300)

SAMPLES = sorted((REPO / "deploy" / "samples").glob("*.yaml"))
KUBECTL = REPO / ".venv" / "bin" / "kubectl"


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    objects = documents(path.read_text())
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects) == 3, f"{path.name}: one ConfigMap, one PVC, one TrainingJob"
    return kinds


def test_the_samples_are_there() -> None:
    assert [p.name for p in SAMPLES] == [
        "ascend-8npu.yaml",
        "grpo.yaml",
        "mindformers.yaml",
        "single-worker.yaml",
        "two-workers.yaml",
    ]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_passes_server_side_dry_run(sample: Path, kubeconfig: Path, namespace: str) -> None:
    result = subprocess.run(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            namespace,
            "apply",
            "--dry-run=server",
            "-f",
            sample,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("created (server dry run)") == 3, result.stdout
    assert "trainingjob.training.respawn.dev/" in result.stdout


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_is_wired_together(sample: Path) -> None:
    objects = by_kind(sample)
    job, configmap, claim = objects["TrainingJob"], objects["ConfigMap"], objects["PersistentVolumeClaim"]
    assert "namespace" not in job["metadata"], "samples apply into the namespace the user picks"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "trainer"
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]
    shared = job["spec"]["sharedVolume"]["volume"]["persistentVolumeClaim"]
    assert shared["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


TRAINER_SAMPLES = [p for p in SAMPLES if p.stem not in ("mindformers", "grpo")]


@pytest.mark.parametrize("sample", TRAINER_SAMPLES, ids=lambda p: p.stem)
def test_sample_run_yaml_is_a_valid_trainer_config(sample: Path) -> None:
    configmap = by_kind(sample)["ConfigMap"]
    raw = yaml.safe_load(configmap["data"]["run.yaml"])
    # The controller supplies the output directory (RESPAWN_OUTPUT_DIR) and auto-resume
    # (RESPAWN_JOB_CHECKPOINT_DIR); a load_checkpoint here would be the user's pretrained weights.
    assert "output_dir" not in raw and "load_checkpoint" not in raw
    config = parse_config(raw)
    assert config.resume_training is True
    assert config.checkpoint_monitor is not None


def test_ascend_sample_takes_a_whole_npu_node() -> None:
    job = by_kind(REPO / "deploy" / "samples" / "ascend-8npu.yaml")["TrainingJob"]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["huawei.com/Ascend910"] == 8
    assert job["spec"]["ranksPerPod"] == 8, "one rank per NPU"
    assert pod["nodeSelector"] == {"accelerator": "huawei-Ascend910"}
    run = yaml.safe_load(
        by_kind(REPO / "deploy" / "samples" / "ascend-8npu.yaml")["ConfigMap"]["data"]["run.yaml"]
    )
    assert run["context"]["device_target"] == "Ascend"
    assert run["use_parallel"] is True, "the 16 ranks train one model"


def test_replica_counts() -> None:
    replicas = {p.stem: by_kind(p)["TrainingJob"]["spec"]["replicas"] for p in SAMPLES}
    assert replicas == {"single-worker": 1, "two-workers": 2, "ascend-8npu": 2, "mindformers": 1, "grpo": 2}


def test_mindformers_sample_runs_mindformers_own_trainer_wrapped() -> None:
    """MindFormers' run_mindformer.py under trainer_image.wrap, its resume flags naming the job's own
    directories through the controller's variables (expanded by kubelet; the node agent's `expand`
    here), as tests/e2e/test_mindformers_e2e.py runs it."""
    from devcluster.podsetup import expand

    objects = by_kind(REPO / "deploy" / "samples" / "mindformers.yaml")
    container = objects["TrainingJob"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "trainer_image.wrap", "--"]
    env = {
        "RESPAWN_OUTPUT_DIR": "/mnt/shared/team/llm",
        "RESPAWN_JOB_CHECKPOINT_DIR": "/mnt/shared/team/llm/checkpoint",
    }
    args = [expand(a, env) for a in container["args"]]
    assert args[1].endswith("run_mindformer.py")
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert flags["--output_dir"] == "/mnt/shared/team/llm"
    assert flags["--load_checkpoint"] == "/mnt/shared/team/llm/checkpoint"
    assert flags["--resume_training"] == "True"
    run = yaml.safe_load(objects["ConfigMap"]["data"]["run.yaml"])
    (monitor,) = [c for c in run["callbacks"] if c["type"] == "CheckpointMonitor"]
    assert monitor["checkpoint_format"] == run["load_ckpt_format"] == "ckpt"


def test_grpo_sample_runs_the_grpo_entry_point_data_parallel_with_no_flags() -> None:
    """`python -m trainer_image.grpo` with a config only: the controller's variables give the rest
    (docs/trainer.md, GRPO); the HCCL timeouts are in the template's env (tests/trainer/
    test_grpo_units.py checks they reach every rank)."""
    from trainer_image.grpo.config import parse_grpo_config

    objects = by_kind(REPO / "deploy" / "samples" / "grpo.yaml")
    container = objects["TrainingJob"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "trainer_image.grpo"]
    assert container["args"] == ["--config", "/etc/respawn/run.yaml"]
    assert {e["name"] for e in container["env"]} == {"HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"}
    raw = yaml.safe_load(objects["ConfigMap"]["data"]["run.yaml"])
    assert not {"output_dir", "save_checkpoint_dir", "actor_checkpoint_path", "ref_checkpoint_path"} & set(
        raw
    )
    config = parse_grpo_config(raw)
    assert config.use_parallel and config.checkpoint_monitor is not None
