"""Bring your own MindFormers, end to end: a TrainingJob whose container runs MindFormers' own Trainer
(the real mindformers 2.0.0, tests/support/mindformers.py) under `python -m trainer_image.wrap`, as
deploy/samples/mindformers.yaml does, with `--load_checkpoint $(RESPAWN_JOB_CHECKPOINT_DIR)
--resume_training True --output_dir $(RESPAWN_OUTPUT_DIR)` expanded by the node agent as kubelet does.

The trainer process is SIGKILLed mid-run. The controller, which mounts nothing, knows the job's last
checkpoint only from the wrapper's reports (read from the meta.json and checkpoint files MindFormers
wrote); it restarts the job, and MindFormers' own resume code picks the checkpoint respawn reported:
the restarted run continues from that step, and each step it runs again (those after the checkpoint
and before the kill) has the loss it had before, bit for bit.

TEST-ONLY parts, not the product: MindFormers imports `hyper_parallel`, which no registry serves,
so a stand-in package (tests/support/mindformers_standin/) is on the pod's PYTHONPATH; the model
and data come from tests/support/mindformers_cpu.py, which also applies the two CPU patches
MindFormers' Trainer needs here (no fused RmsNorm kernel, no Ascend overflow-status op on CPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.kube import create_job, final_status
from tests.support.manifests import training_job
from tests.support.mindformers import STANDIN, cpu_launcher_command
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a first use builds the venv (~2 min)

STEPS, SAVE_STEPS = 6, 3
FLAGS = ("--steps", str(STEPS), "--save_steps", str(SAVE_STEPS))


def mindformers_job(name: str, shared: Path, workdir: Path) -> dict[str, Any]:
    """One rank of MindFormers' Trainer wrapped by trainer_image.wrap; its flags name the job's own
    directories through the variables the controller sets."""
    command = [
        *cpu_launcher_command(*FLAGS),
        "--output_dir",
        "$(RESPAWN_OUTPUT_DIR)",
        "--load_checkpoint",
        "$(RESPAWN_JOB_CHECKPOINT_DIR)",
        "--resume_training",
        "True",
    ]
    wrapped = [sys.executable, "-m", "trainer_image.wrap", "--", *command]
    job = training_job(name, replicas=1, command=wrapped, shared=shared, backoff=(0, 1), maxRestarts=2)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "PYTHONPATH", "value": str(STANDIN)}]  # TEST-ONLY hyper_parallel
    container["workingDir"] = str(workdir)  # MindFormers writes ./output/log when imported
    return job


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_step(path: Path) -> int:
    return max((r["step"] for r in records(path)), default=0)


def test_mindformers_resumes_from_the_checkpoint_respawn_reported(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    create_job(api_client, namespace, mindformers_job("mf", shared_root, workdir))
    losses = shared_root / namespace / "mf" / "log" / "rank_0" / "losses.jsonl"

    # Kill the trainer once it has run past its first checkpoint, before the next save: the steps in
    # between are lost and run again after the resume. The wrapper reports a commit before the pod
    # ends, so the controller knows the checkpoint when it restarts the job.
    wait_for("a step past the first checkpoint", lambda: last_step(losses) > SAVE_STEPS, 240)
    node_agent.kill_child(namespace, "mf-a0-0")
    status = final_status(api_client, namespace, "mf", 300)

    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["attempt"]) == (1, 1), status
    assert status["lastFailure"]["exitCode"] == 137, "the wrapper passes on its trainer's death"
    before = {r["step"]: r["loss"] for r in records(losses) if r["attempt"] == "0"}
    after = [r for r in records(losses) if r["attempt"] == "1"]
    killed_at = max(before)
    assert killed_at < STEPS, "training finished before the fault was injected"
    # MindFormers' own resume code chose the checkpoint respawn reported: the restarted run's first
    # step is the one after it, and every step run twice has the same loss, bit for bit.
    resumed = status["resumedFromStep"]
    assert resumed == SAVE_STEPS < killed_at, status
    assert [r["step"] for r in after] == list(range(resumed + 1, STEPS + 1))
    redone = [r for r in after if r["step"] in before]
    assert redone and all(r["loss"] == before[r["step"]] for r in redone), (before, after)

    # MindFormers renumbers its files after its own resume (a `_1` run suffix, steps counted from
    # the resume); the step respawn reports is the absolute one, read from the file.
    final = status["lastCompleteCheckpoint"]
    assert final["step"] == STEPS, final
    assert final["file"] == f"CKP_rank_0_1-1_{STEPS - resumed}.ckpt", final
    meta = json.loads((shared_root / namespace / "mf" / "checkpoint" / "rank_0" / "meta.json").read_text())
    assert meta == {"last_epoch": 1, "last_step": STEPS - resumed, "last_ckpt_file": final["file"]}
