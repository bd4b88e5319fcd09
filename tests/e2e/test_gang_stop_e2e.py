"""End to end: an evicted rank of a data-parallel gang stops the whole gang after the same step.

The eviction signals one rank; the ranks exchange their stop flags after every step, so both
commit the same final step and exit STOPPED, and the next attempt resumes both ranks from it. The
checkpoint interval is far longer than the run: only the stop can have saved the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.e2e import long_run, losses, trainer_job
from tests.support.kube import create_job, final_status
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def starts(records: list[dict[str, Any]]) -> list[int]:
    """Indices of the first record of each start."""
    return [i for i, r in enumerate(records) if "resumed_from" in r]


@pytest.mark.parametrize("evicted", [0, 1])
def test_an_evicted_rank_stops_the_gang_and_both_resume_from_the_same_step_losing_none(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
    evicted: int,
) -> None:
    (monitor,) = long_run(1)["callbacks"]
    run = long_run(8, use_parallel=True, callbacks=[{**monitor, "save_checkpoint_steps": 100_000}])
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(run))
    create_job(api_client, namespace, trainer_job("gang", shared_root))

    wait_for("the gang to train", lambda: len(losses(shared_root, namespace, "gang", 0)) >= 10, 240)
    node_agent.evict(namespace, f"gang-a0-{evicted}")

    status = final_status(api_client, namespace, "gang", 600)
    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["uncountedRestarts"], status["attempt"]) == (0, 1, 1), status
    assert status["lastFailure"]["reason"] == "Evicted", status

    stopped_at, resumed_at = [], []
    for rank in (0, 1):
        records = losses(shared_root, namespace, "gang", rank)
        _, second = starts(records)
        stopped_at.append(records[second - 1]["global_step"])  # the last step of attempt 0
        resumed = records[second]["resumed_from"]
        assert resumed is not None, (rank, records[second])
        resumed_at.append(resumed["global_step"])
    total = max(r["global_step"] for r in losses(shared_root, namespace, "gang", 0))
    assert 10 <= stopped_at[0] < total, "the eviction came after the end"
    assert stopped_at[0] == stopped_at[1], "both ranks stopped after the same step"
    assert resumed_at == stopped_at, "both ranks resumed from it: 0 steps lost"
    # The controller mounts nothing: it knew of the final commit from the ranks' reports, made
    # moments before their pods were gone.
    assert status["resumedFromStep"] == stopped_at[0], status
