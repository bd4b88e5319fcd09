"""End to end: the controller, the node agent running real trainer processes, the real API server.

A 2-replica TrainingJob is SIGKILLed in one rank mid-training; the controller restarts the whole
gang, the trainer resumes from the last checkpoint complete on both ranks, the job succeeds, and
every rank's loss per global step is bitwise equal to an uninterrupted run of the same job.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.app import Controller, Settings
from devcluster.faults import FaultError
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from respawn_protocol.steplog import read_steps
from tests.fixtures.nodeagent import NodeAgentHandle

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Saving every step makes a step slow enough (tens of ms) to be killed mid-run, and makes kills
# land inside saves too.
RUN_YAML: dict[str, Any] = {
    "seed": 11,
    "context": {"mode": 0},
    "runner_config": {"epochs": 1, "batch_size": 8},
    "callbacks": [
        {
            "type": "CheckpointMonitor",
            "prefix": "e2e",
            "save_checkpoint_steps": 1,
            "keep_checkpoint_max": 2,
            "checkpoint_format": "ckpt",
            "async_save": False,
        }
    ],
    "lr_schedule": {
        "type": "CosineWithWarmUpLR",
        "learning_rate": 0.003,
        "warmup_steps": 3,
        "total_steps": 60,
    },
    "model": {
        "type": "llama",
        "seq_length": 32,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 88,
    },
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 960}},
}


def long_run(epochs: int) -> dict[str, Any]:
    """RUN_YAML over `epochs` epochs (the corpus gives 49 steps per epoch at 2 ranks; on an idle
    machine one epoch is over before the controller has seen a checkpoint). The ranks train alone
    and one may run ahead: 20 kept checkpoints let them share a complete step early on."""
    (monitor,) = RUN_YAML["callbacks"]
    return {
        **RUN_YAML,
        "runner_config": {**RUN_YAML["runner_config"], "epochs": epochs},
        "callbacks": [{**monitor, "keep_checkpoint_max": 20}],
        "lr_schedule": {**RUN_YAML["lr_schedule"], "total_steps": -1},
    }


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def training_job(name: str, shared: Path) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "respawn/trainer",
                            "command": [
                                sys.executable,
                                "-m",
                                "trainer_image",
                                "--config",
                                "/etc/respawn/run.yaml",
                            ],
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/respawn"}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "run"}}],
                }
            },
            "sharedVolume": {
                "mountPath": "/mnt/shared",
                "volume": {"hostPath": {"path": str(shared), "type": "DirectoryOrCreate"}},
            },
            "failurePolicy": {"maxRestarts": 2, "backoff": {"initialSeconds": 0, "maxSeconds": 1}},
        },
    }


@pytest.fixture
def controller(api_client: client.ApiClient, namespace: str, tmp_path: Path) -> Iterator[Controller]:
    shared = tmp_path / "shared"
    shared.mkdir()
    c = Controller(
        api_client,
        Settings(
            namespace=namespace,
            leader_election=False,
            health_port=0,
            health_host="127.0.0.1",
            shared_root=shared,
            device_faults=False,
        ),
    )
    c.start()
    yield c
    c.stop()
    c.shutdown()


def job_status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj.get("status") or {}


def losses(shared: Path, namespace: str, job: str, rank: int) -> list[dict[str, Any]]:
    return read_steps(shared / namespace / job / "log" / f"rank_{rank}" / "steps.jsonl")


def test_sigkill_one_rank_restarts_gang_and_resumes_exactly(
    api_client: client.ApiClient,
    namespace: str,
    controller: Controller,
    node_agent: NodeAgentHandle,
    kubeconfig: Path,
) -> None:
    assert controller.settings.shared_root is not None
    shared = controller.settings.shared_root
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "run"}, "data": {"run.yaml": yaml.safe_dump(long_run(3))}}
    )
    custom = client.CustomObjectsApi(api_client)
    for name in ("ref", "llm"):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, training_job(name, shared))

    # Kill a rank once both have committed checkpoints and training is well under way. The ranks
    # train alone and one may be far ahead, even done: kill the one behind, mid-run.
    wait_for(
        "a complete checkpoint",
        lambda: (
            job_status(api_client, namespace, "llm").get("lastCompleteCheckpoint", {}).get("step", 0) >= 10
        ),
        180,
    )
    behind = sorted((1, 0), key=lambda r: len(losses(shared, namespace, "llm", r)))
    killed = kill_a_live_rank(node_agent, namespace, "llm-a0", order=behind)
    killed_after = len(losses(shared, namespace, "llm", int(killed.rsplit("-", 1)[1])))

    def finished(name: str) -> bool:
        return job_status(api_client, namespace, name).get("phase") in ("Succeeded", "Failed")

    wait_for("both jobs to finish", lambda: finished("llm") and finished("ref"), 300)
    total = max(r["global_step"] for r in losses(shared, namespace, "ref", 0))
    assert killed_after < total, "training finished before the fault was injected"
    status = job_status(api_client, namespace, "llm")
    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["uncountedRestarts"], status["attempt"]) == (1, 0, 1)
    assert status["lastFailure"]["pod"] == killed and status["lastFailure"]["exitCode"] == 137
    # The status that says Succeeded already names the final commit: the controller re-reads the
    # disk when a pod exits rather than wait for the observer's events.
    assert status["lastCompleteCheckpoint"]["step"] == total, status
    assert job_status(api_client, namespace, "ref")["restarts"] == 0

    for rank in (0, 1):
        records = losses(shared, namespace, "llm", rank)
        reference = {r["global_step"]: r["loss_bits"] for r in losses(shared, namespace, "ref", rank)}
        assert sorted(reference) == list(range(1, total + 1))
        # Every record, including steps redone after the resume, lies on the reference curve.
        for record in records:
            assert record["loss_bits"] == reference[record["global_step"]], (rank, record)
        assert {r["global_step"] for r in records} == set(reference)
        resumed = [r["resumed_from"] for r in records if "resumed_from" in r]
        assert resumed[0] is None, "the first start is a random init"
        assert len(resumed) == 2 and resumed[1] is not None
        assert resumed[1]["global_step"] == status["resumedFromStep"]

    table = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubectl"),
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "tj",
            "llm",
            "-n",
            namespace,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert table[0].split()[:4] == ["NAME", "PHASE", "RESTARTS", "CKPT-STEP"]
    assert table[1].split()[:4] == ["llm", "Succeeded", "1", str(total)]


def kill_a_live_rank(
    node_agent: NodeAgentHandle, namespace: str, attempt: str, order: Sequence[int] = (1, 0)
) -> str:
    """SIGKILL the first rank in `order` whose process still runs; returns the pod killed."""
    for rank in order:
        try:
            node_agent.kill(namespace, f"{attempt}-{rank}")
            return f"{attempt}-{rank}"
        except FaultError:
            continue
    raise AssertionError(f"no rank of {attempt} is running")


def test_progress_between_failures_refunds_the_budget(
    api_client: client.ApiClient, namespace: str, controller: Controller, node_agent: NodeAgentHandle
) -> None:
    """maxRestarts 1 and two kills: the job survives because it committed newer checkpoints between them."""
    assert controller.settings.shared_root is not None
    shared = controller.settings.shared_root
    longer = long_run(4)  # both ranks alive through two kills
    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, {"metadata": {"name": "run"}, "data": {"run.yaml": yaml.safe_dump(longer)}}
    )
    body = training_job("refund", shared)
    body["spec"]["failurePolicy"]["maxRestarts"] = 1
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )

    def checkpoint() -> int:
        return int(
            job_status(api_client, namespace, "refund").get("lastCompleteCheckpoint", {}).get("step", 0)
        )

    wait_for("a first checkpoint", lambda: checkpoint() >= 8, 180)
    kill_a_live_rank(node_agent, namespace, "refund-a0")
    wait_for("attempt 1", lambda: job_status(api_client, namespace, "refund").get("attempt") == 1, 60)
    resumed = wait_for(
        "attempt 1 to resume",
        lambda: job_status(api_client, namespace, "refund").get("phase") == "Running" and checkpoint(),
        120,
    )
    wait_for("progress after the restart", lambda: checkpoint() > resumed, 120)
    assert job_status(api_client, namespace, "refund")["budgetUsed"] == 0, "progress gives the restart back"
    kill_a_live_rank(node_agent, namespace, "refund-a1")
    status = wait_for(
        "the end",
        lambda: (
            (s := job_status(api_client, namespace, "refund")).get("phase") in ("Succeeded", "Failed") and s
        ),
        300,
    )
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 2 and status["attempt"] == 2
