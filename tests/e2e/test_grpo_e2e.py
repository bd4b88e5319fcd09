"""End to end: a 2-rank data-parallel GRPO TrainingJob on the local cluster, with no flags (the
controller's variables give every directory and auto-resume) and the HCCL timeouts in its template.
One rank is SIGKILLed mid-run; the controller restarts the gang, both ranks resume from the last step
complete on both, the job succeeds, and every step either rank logged, redone ones included, has
the loss, reward_mean and kl bits of the same job run without the fault."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from respawn_protocol.steplog import read_steps
from tests.support.grpo import EXACT, GRPO_TINY
from tests.support.kube import create_job, final_status, job_status
from tests.support.manifests import RUN_MOUNT, run_config_map, training_job
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow

TOTAL = 60
RUN: dict[str, Any] = {
    **GRPO_TINY,
    "use_parallel": True,
    "grpo": {**GRPO_TINY["grpo"], "total_steps": TOTAL},
}
HCCL = [{"name": "HCCL_CONNECT_TIMEOUT", "value": "2400"}, {"name": "HCCL_EXEC_TIMEOUT", "value": "7200"}]


def grpo_job(name: str, shared: Path) -> dict[str, Any]:
    job = training_job(
        name,
        command=[sys.executable, "-m", "trainer_image.grpo", "--config", f"{RUN_MOUNT}/run.yaml"],
        run_config="run",
        shared=shared,
        backoff=(0, 1),
        maxRestarts=2,
    )
    job["spec"]["template"]["spec"]["containers"][0]["env"] = HCCL
    return job


def records(shared: Path, namespace: str, job: str, rank: int) -> list[dict[str, Any]]:
    return read_steps(shared / namespace / job / "log" / f"rank_{rank}" / "steps.jsonl")


def test_a_killed_rank_of_a_grpo_job_restarts_the_gang_and_it_resumes_exactly(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(RUN))
    for name in ("ref", "rl"):
        create_job(api_client, namespace, grpo_job(name, shared_root))

    wait_for(
        "a step complete on both ranks",
        lambda: job_status(api_client, namespace, "rl").get("lastCompleteCheckpoint", {}).get("step", 0) >= 5,
        600,
    )
    node_agent.kill(namespace, "rl-a0-1")
    killed_after = len(records(shared_root, namespace, "rl", 1))

    status = final_status(api_client, namespace, "rl", 900)
    assert status["phase"] == "Succeeded", status
    assert final_status(api_client, namespace, "ref", 600)["phase"] == "Succeeded"
    assert killed_after < TOTAL, "the fault landed mid-run"
    assert (status["restarts"], status["attempt"]) == (1, 1), status
    assert status["lastFailure"]["pod"] == "rl-a0-1" and status["lastFailure"]["exitCode"] == 137
    assert status["lastCompleteCheckpoint"]["step"] == TOTAL, status
    for rank in (0, 1):
        reference = {
            r["global_step"]: tuple(r[k] for k in EXACT) for r in records(shared_root, namespace, "ref", rank)
        }
        assert sorted(reference) == list(range(1, TOTAL + 1))
        lines = records(shared_root, namespace, "rl", rank)
        for line in lines:
            assert tuple(line[k] for k in EXACT) == reference[line["global_step"]], (rank, line)
        assert {r["global_step"] for r in lines} == set(reference)
        resumed = [r["resumed_from"] for r in lines if "resumed_from" in r]
        assert resumed[0] is None and len(resumed) == 2, (rank, resumed)
        assert resumed[1]["global_step"] == status["resumedFromStep"]
        # The reference was saved by the first attempt only, and both attempts' ranks got the timeouts.
        assert len(list((shared_root / namespace / "rl" / "ref" / f"rank_{rank}").glob("*.ckpt"))) == 1
        for attempt in (0, 1):
            log = node_agent.log(namespace, f"rl-a{attempt}-{rank}", container="trainer")
            assert "HCCL_CONNECT_TIMEOUT=2400" in log and "HCCL_EXEC_TIMEOUT=7200" in log, log[-2000:]
