"""End to end: a 2-replica data-parallel TrainingJob loses a rank, its `replicas` is edited to 1 while
it waits in backoff, and the next attempt resumes on one rank through the merged checkpoint.

Real parts throughout: the API server, the controller, the node agent running the pods as processes
with the dynamic-cluster variables the controller injects (rank 0 hosts MindSpore's scheduler), and
the trainer with `use_parallel` and `auto_trans_ckpt`. The per-rank batch stays 4, so the global batch
halves from 8 to 4 and the trainer rescales the step count (MindFormers' rule): global step g of the
2-rank run is global step 2g of the 1-rank run, and the job ends at twice the 2-rank step count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.e2e import RUN_YAML, losses, trainer_job
from tests.support.kube import create_job, final_status, job_status
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow

SAMPLES = 480  # 2 ranks x 4: 60 steps; 1 rank x 4: 120 steps
RESIZE_YAML: dict[str, Any] = {
    **RUN_YAML,
    "use_parallel": True,
    "auto_trans_ckpt": True,
    "runner_config": {"epochs": 1, "batch_size": 4},
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": SAMPLES}},
}


def test_replicas_edited_after_a_failure_resumes_through_the_merge(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(RESIZE_YAML))
    # Long enough a backoff to edit the job while it waits; the test does not sleep through it.
    create_job(api_client, namespace, trainer_job("llm", shared_root, backoff=(15, 15)))

    def status() -> dict[str, Any]:
        return job_status(api_client, namespace, "llm")

    wait_for(
        "a checkpoint of both ranks",
        lambda: status().get("lastCompleteCheckpoint", {}).get("step", 0) >= 6,
        300,
    )
    node_agent.kill(namespace, "llm-a0-1")
    wait_for("the restart backoff", lambda: status().get("phase") == "Restarting", 60)
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "llm", {"spec": {"replicas": 1}}
    )

    final = final_status(api_client, namespace, "llm", 600)
    assert final["phase"] == "Succeeded", final
    assert (final["restarts"], final["attempt"], final["replicas"]) == (1, 1, 1), final
    assert final["lastFailure"]["pod"] == "llm-a0-1"

    out = shared_root / namespace / "llm"
    records = losses(shared_root, namespace, "llm", 0)
    resumed = [r["resumed_from"] for r in records if "resumed_from" in r]
    assert resumed[0] is None and len(resumed) == 2, resumed
    origin = resumed[1]
    # The 2-rank gang's step, merged, then counted in 1-rank steps.
    assert origin["world_size"] == 2, origin
    two_rank_step = final["resumedFromStep"]
    assert origin["global_step"] == 2 * two_rank_step, (origin, final)
    meta = json.loads((out / "unified_checkpoint" / "meta.json").read_text())
    assert meta["source_world_size"] == 2 and meta["step"] == two_rank_step
    first_after = min(r["global_step"] for r in records if r.get("resumed_from"))
    assert first_after == 2 * two_rank_step + 1
    # Rank 0 ran to the end of the 1-rank schedule; the controller's view (which reads every
    # rank_N/, including the 2-rank gang's rank_1/ left behind) agrees.
    total = SAMPLES // 4
    assert max(r["global_step"] for r in records) == total
    # The status that says Succeeded names the last commit (re-read from disk when the pods exit).
    assert final["lastCompleteCheckpoint"]["step"] == total, final
    assert (out / "checkpoint" / "rank_1" / "meta.json").is_file()
