"""End to end: a data-parallel TrainingJob of 2 pods x 2 ranks per pod (`spec.ranksPerPod`).

Each pod's entry point starts two trainer processes (trainer_image/supervisor.py); the four ranks
form one MindSpore cluster, whose scheduler rank 0 starts in pod 0. One trainer process of pod 1 is
SIGKILLed: its supervisor stops its other rank and the pod fails with 137, naming the rank; the
controller restarts the whole gang, which resumes from the last step complete on all four ranks,
and every rank's loss per global step is bitwise equal to the same job run without the fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.e2e import RUN_YAML, assert_on_reference_curve, losses, trainer_job
from tests.support.kube import create_job, final_status, job_status
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow

RANKS = 4
# Global batch 4 x 4 = 16, as long_run's 2 x 8: 49 steps per epoch, a checkpoint every step. The ranks
# run in lockstep (every step all-reduces), so the two newest checkpoints always hold a complete step.
PARALLEL_YAML: dict[str, Any] = {
    **RUN_YAML,
    "use_parallel": True,
    "runner_config": {"epochs": 2, "batch_size": 4},
    "lr_schedule": {**RUN_YAML["lr_schedule"], "total_steps": -1},
}


def test_a_killed_rank_of_a_pod_of_two_restarts_the_gang_and_it_resumes_exactly(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(PARALLEL_YAML))
    for name in ("ref", "mp"):
        create_job(api_client, namespace, trainer_job(name, shared_root, spec={"ranksPerPod": 2}))

    wait_for(
        "a checkpoint complete on all four ranks",
        lambda: job_status(api_client, namespace, "mp").get("lastCompleteCheckpoint", {}).get("step", 0) >= 5,
        600,
    )
    node_agent.kill_rank(namespace, "mp-a0-1", rank=3)
    killed_after = len(losses(shared_root, namespace, "mp", 3))

    status = final_status(api_client, namespace, "mp", 900)
    assert status["phase"] == "Succeeded", status
    assert final_status(api_client, namespace, "ref", 600)["phase"] == "Succeeded"
    assert (status["restarts"], status["attempt"], status["replicas"], status["ranksPerPod"]) == (1, 1, 2, 2)
    failure = status["lastFailure"]
    assert (failure["pod"], failure["exitCode"], failure["reason"]) == ("mp-a0-1", 137, "Error"), failure
    assert "rank 3 (local rank 1 of 2" in failure["message"] and "SIGKILL" in failure["message"], failure

    total = max(r["global_step"] for r in losses(shared_root, namespace, "ref", 0))
    assert killed_after < total, "the fault landed mid-run"
    assert status["lastCompleteCheckpoint"]["step"] == total, status
    # Reported by all four ranks through their two pods; the controller mounts nothing.
    assert set(status["startup"]["seconds"]) == {"import", "rendezvous", "load", "compile", "firstStep"}
    for rank in range(RANKS):
        records = assert_on_reference_curve(shared_root, namespace, "mp", "ref", rank, total)
        resumed = [r["resumed_from"] for r in records if "resumed_from" in r]
        assert resumed[0] is None and len(resumed) == 2 and resumed[1] is not None, (rank, resumed)
        assert resumed[1]["global_step"] == status["resumedFromStep"]
