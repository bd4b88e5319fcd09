"""End to end: the controller, the node agent running real trainer processes, the real API server.

A 2-replica TrainingJob is SIGKILLed in one rank mid-training; the controller restarts the whole
gang, the trainer resumes from the last checkpoint complete on both ranks, the job succeeds, and
every rank's loss per global step is bitwise equal to an uninterrupted run of the same job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from kubernetes import client

from controller.app import Controller
from devcluster.faults import FaultError
from tests.support.e2e import RUN_YAML, assert_on_reference_curve, long_run, losses, trainer_job
from tests.support.kube import create_job, final_status, job_status
from tests.support.manifests import run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def test_sigkill_one_rank_restarts_gang_and_resumes_exactly(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
    kubeconfig: Path,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(long_run(3)))
    for name in ("ref", "llm"):
        create_job(api_client, namespace, trainer_job(name, shared_root))

    # Kill a rank once both have committed checkpoints and training is well under way. The ranks
    # train alone and one may be far ahead, even done: kill the one behind, mid-run.
    wait_for(
        "a complete checkpoint",
        lambda: (
            job_status(api_client, namespace, "llm").get("lastCompleteCheckpoint", {}).get("step", 0) >= 10
        ),
        180,
    )
    behind = sorted((1, 0), key=lambda r: len(losses(shared_root, namespace, "llm", r)))
    killed = kill_a_live_rank(node_agent, namespace, "llm-a0", order=behind)
    killed_after = len(losses(shared_root, namespace, "llm", int(killed.rsplit("-", 1)[1])))

    def finished(name: str) -> bool:
        return job_status(api_client, namespace, name).get("phase") in ("Succeeded", "Failed")

    wait_for("both jobs to finish", lambda: finished("llm") and finished("ref"), 300)
    total = max(r["global_step"] for r in losses(shared_root, namespace, "ref", 0))
    assert killed_after < total, "training finished before the fault was injected"
    status = job_status(api_client, namespace, "llm")
    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["uncountedRestarts"], status["attempt"]) == (1, 0, 1)
    assert status["lastFailure"]["pod"] == killed and status["lastFailure"]["exitCode"] == 137
    # The controller mounts nothing: the status that says Succeeded names the final commit because
    # every rank reports its commits on its own pod before it exits.
    assert status["lastCompleteCheckpoint"]["step"] == total, status
    assert status["lastProgress"]["attempt"] == 1 and status["lastProgress"]["step"] <= total
    startup = status["startup"]
    assert startup["attempt"] == 1 and set(startup["seconds"]) == {"import", "load", "compile", "firstStep"}
    assert_report_access(api_client, namespace, "llm", attempt=1)
    assert job_status(api_client, namespace, "ref")["restarts"] == 0

    for rank in (0, 1):
        records = assert_on_reference_curve(shared_root, namespace, "llm", "ref", rank, total)
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


def assert_report_access(api: client.ApiClient, namespace: str, job: str, *, attempt: int) -> None:
    """The workers ran as the job's ServiceAccount, allowed to patch exactly their attempt's pods."""
    rbac = client.RbacAuthorizationV1Api(api)
    role = rbac.read_namespaced_role(f"respawn-{job}", namespace)
    assert role.rules[0].verbs == ["patch"]
    assert role.rules[0].resource_names == [f"{job}-a{attempt}-0", f"{job}-a{attempt}-1"]
    binding = rbac.read_namespaced_role_binding(f"respawn-{job}", namespace)
    assert [(s.kind, s.name) for s in binding.subjects] == [("ServiceAccount", f"respawn-{job}")]
    account = client.CoreV1Api(api).read_namespaced_service_account(f"respawn-{job}", namespace)
    for obj in (role, binding, account):
        assert [(r.kind, r.name) for r in obj.metadata.owner_references] == [("TrainingJob", job)]


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
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    """maxRestarts 1 and two kills: the job survives because it committed newer checkpoints between them."""
    longer = long_run(4)  # both ranks alive through two kills
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(longer))
    create_job(api_client, namespace, trainer_job("refund", shared_root, maxRestarts=1))

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
    status = final_status(api_client, namespace, "refund", 300)
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 2 and status["attempt"] == 2


def test_a_frozen_rank_restarts_once_and_the_job_succeeds(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    """A SIGSTOPped rank stalls its data-parallel gang: one ProgressTimeout restart, and the next
    attempt — with its own progress clock — runs to the end (issue 12: it was declared hung at once)."""
    run = long_run(3, use_parallel=True)
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(run))
    job = trainer_job(
        "frozen",
        shared_root,
        pod={"terminationGracePeriodSeconds": 5},  # a stopped process cannot act on SIGTERM
        progressTimeoutSeconds=20,
        progressGraceSeconds=120,
    )
    create_job(api_client, namespace, job)

    def checkpoint() -> int:
        return int(
            job_status(api_client, namespace, "frozen").get("lastCompleteCheckpoint", {}).get("step", 0)
        )

    wait_for("training under way", lambda: checkpoint() >= 5, 240)
    node_agent.kill(namespace, "frozen-a0-1", sig=signal.SIGSTOP)
    status = final_status(api_client, namespace, "frozen", 420)
    assert status["phase"] == "Succeeded", status
    assert (status["restarts"], status["attempt"]) == (1, 1), status
    assert status["lastFailure"]["reason"] == "ProgressTimeout"
    assert status["lastCompleteCheckpoint"]["attempt"] == 1, "the last commit is the new attempt's"


def test_a_job_asking_for_whole_npu_nodes_in_integers_runs(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    """`huawei.com/Ascend910: 8` as users and deploy/samples/ascend-8npu.yaml write it (an integer):
    the controller passes it through, the played scheduler gives each rank a node with 8, the job
    trains to the end (issue 12: every reconcile crashed on client-side validation)."""
    run = {**RUN_YAML, "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 320}}}
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(run))
    job = trainer_job("npu", shared_root)
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"huawei.com/Ascend910": 8}}
    create_job(api_client, namespace, job)
    status = final_status(api_client, namespace, "npu", 300)
    assert status["phase"] == "Succeeded" and status["restarts"] == 0, status
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
    assert {p.spec.node_name for p in pods if p.metadata.name.startswith("npu-")} == set(node_agent.nodes)
