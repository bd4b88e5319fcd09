"""End to end: `spec.suspend` stops a training gang, keeps the job, and resuming it continues from
the step the gang committed as it stopped (Kueue's preempt-and-readmit, done by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.e2e import long_run, losses, trainer_job
from tests.support.kube import create_job, final_status, job_pods, job_status, set_suspend
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def test_suspend_stops_the_gang_and_resume_continues_from_its_last_step(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    (monitor,) = long_run(1)["callbacks"]
    run = long_run(8, use_parallel=True, callbacks=[{**monitor, "save_checkpoint_steps": 100_000}])
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(run))
    create_job(api_client, namespace, trainer_job("held", shared_root))
    wait_for("the gang to train", lambda: len(losses(shared_root, namespace, "held", 0)) >= 10, 240)

    set_suspend(api_client, namespace, "held", True)

    def suspended() -> dict[str, Any] | None:
        s = job_status(api_client, namespace, "held")
        gone = not job_pods(api_client, namespace, "held")
        return s if s.get("phase") == "Suspended" and gone and s.get("lastCompleteCheckpoint") else None

    held = wait_for("suspended with no pods and the final commit known", suspended, 120)
    stopped = {rank: losses(shared_root, namespace, "held", rank)[-1]["global_step"] for rank in (0, 1)}
    assert stopped[0] == stopped[1] == held["lastCompleteCheckpoint"]["step"], (stopped, held)
    assert held["attempt"] == 1 and (held["restarts"], held["uncountedRestarts"]) == (0, 0), held

    set_suspend(api_client, namespace, "held", False)
    status = final_status(api_client, namespace, "held", 600)
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    assert (status["restarts"], status["uncountedRestarts"]) == (0, 0), "a suspension is not a restart"
    for rank in (0, 1):
        records = losses(shared_root, namespace, "held", rank)
        resumed = [r["resumed_from"] for r in records if r.get("resumed_from")]
        assert [r["global_step"] for r in resumed] == [stopped[rank]], "resumed once, from the stop: 0 lost"
    assert status["resumedFromStep"] == stopped[0]
