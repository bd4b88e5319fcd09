"""End to end: a TrainingJob with `spec.checkpointStore` resumes from the object store after its
output directory is lost (issue 16).

A real SeaweedFS (built from its Go module, tests/support/objectstore.py) is the store; the job's
credentials are a Secret of its namespace, which the workers get by secretKeyRef (the controller
never reads it). The 2-rank data-parallel gang uploads its commits and reports them; the job is
suspended (the gang commits one final step and flushes its uploads), its output directory's
checkpoints are deleted — a restart on nodes with empty disks — and the job is resumed: every rank
predownloads its file of the newest step complete in the store and the gang continues from that
step, not from random init. That a run resumed from the store follows the uninterrupted loss curve
bit for bit is tests/trainer/test_store_runs.py's; here it is the controller's part: the Secret's
keys reach the trainers, status.checkpointStore follows the uploads, and the start from the store.

The second test has no shared volume at all: the output directory is an emptyDir of each pod (a
cluster without ReadWriteMany storage), and the store is the only record of the other ranks' steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.api.constants import SHARED_VOLUME_NAME
from controller.app import Controller
from respawn_protocol import contract
from respawn_protocol.steplog import read_steps
from tests.support.e2e import long_run, losses, trainer_job
from tests.support.kube import create_job, final_status, job_pods, job_status, set_suspend
from tests.support.manifests import SHARED_MOUNT, run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.objectstore import ObjectStore, assert_metas_name_only_whole_objects, remote_metas
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def newest_in_store(object_store: ObjectStore, bucket: str) -> dict[str, int]:
    """Each rank folder's newest step in the store, after checking every meta.json names only whole
    objects (the store's invariant)."""
    s3 = object_store.client()
    assert_metas_name_only_whole_objects(s3, bucket)
    return {
        folder: max(r["global_step"] for r in meta["checkpoints"])
        for folder, meta in remote_metas(s3, bucket).items()
    }


def store_spec(
    api_client: client.ApiClient, namespace: str, object_store: ObjectStore, bucket: str
) -> dict[str, str]:
    """The job's spec.checkpointStore, its Secret and the run's ConfigMap created in `namespace`."""
    core = client.CoreV1Api(api_client)
    keys = {
        contract.STORE_ACCESS_KEY_ID: object_store.access_key,
        contract.STORE_SECRET_ACCESS_KEY: object_store.secret_key,
    }
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-keys"}, "stringData": keys})
    core.create_namespaced_config_map(namespace, run_config_map(long_run(2, use_parallel=True)))
    return {"endpoint": object_store.endpoint, "bucket": bucket, "credentialsSecret": "s3-keys"}


def await_uploads(api_client: client.ApiClient, namespace: str, job: str) -> None:
    """status.checkpointStore follows the gang's uploads to step 5, without failures."""

    def uploaded() -> dict[str, Any] | None:
        s = job_status(api_client, namespace, job).get("checkpointStore") or {}
        return s if s.get("step", 0) >= 5 else None

    progress = wait_for("the gang's uploads in status", uploaded, 300)
    assert progress["failures"] == 0 and "lastError" not in progress, progress


def test_a_job_suspended_and_resumed_on_empty_disks_continues_from_the_store(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
    object_store: ObjectStore,
    store_bucket: str,
) -> None:
    store = store_spec(api_client, namespace, object_store, store_bucket)
    create_job(api_client, namespace, trainer_job("st", shared_root, spec={"checkpointStore": store}))

    await_uploads(api_client, namespace, "st")

    set_suspend(api_client, namespace, "st", True)

    def suspended() -> dict[str, Any] | None:
        s = job_status(api_client, namespace, "st")
        gone = not job_pods(api_client, namespace, "st")
        return s if s.get("phase") == "Suspended" and gone and s.get("lastCompleteCheckpoint") else None

    held = wait_for("suspended with no pods", suspended, 180)
    final = held["lastCompleteCheckpoint"]["step"]
    folders = [f"{namespace}/st/rank_{rank}" for rank in (0, 1)]
    # The final commit was flushed before the pods went (the default prefix: namespace/job).
    assert newest_in_store(object_store, store_bucket) == dict.fromkeys(folders, final)

    output = shared_root / namespace / "st"
    for lost in (contract.CHECKPOINT_DIR, contract.CHECKPOINT_NETWORK_DIR):
        shutil.rmtree(output / lost, ignore_errors=True)
    set_suspend(api_client, namespace, "st", False)

    status = final_status(api_client, namespace, "st", 600)
    assert status["phase"] == "Succeeded", status
    assert status["resumedFromStep"] == final, "the start came from the store: the disk had nothing"
    total = max(r["global_step"] for r in losses(shared_root, namespace, "st", 0))
    for rank in (0, 1):
        resumed = [
            r["resumed_from"] for r in losses(shared_root, namespace, "st", rank) if r.get("resumed_from")
        ]
        assert resumed and resumed[-1]["global_step"] == final, (rank, resumed)
    assert newest_in_store(object_store, store_bucket) == dict.fromkeys(folders, total)
    done = status["checkpointStore"]
    assert done["step"] > final and done["failures"] == 0, done


def test_a_job_on_per_pod_disks_resumes_from_the_store(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    node_agent: NodeAgentHandle,
    object_store: ObjectStore,
    store_bucket: str,
) -> None:
    """The cluster has no ReadWriteMany volume: the output directory is an emptyDir of each pod, so no
    rank sees another's folder and a new pod starts on an empty disk. The gang tells so once it has
    met and resumes, after a suspension, from the newest step complete in the store."""
    store = store_spec(api_client, namespace, object_store, store_bucket)
    per_pod = {"mountPath": SHARED_MOUNT, "volume": {"emptyDir": {}}}
    spec = {"checkpointStore": store, "sharedVolume": per_pod}
    create_job(api_client, namespace, trainer_job("pp", Path("/unused"), spec=spec))

    await_uploads(api_client, namespace, "pp")
    set_suspend(api_client, namespace, "pp", True)

    def suspended() -> dict[str, Any] | None:
        s = job_status(api_client, namespace, "pp")
        return s if s.get("phase") == "Suspended" and not job_pods(api_client, namespace, "pp") else None

    wait_for("suspended with no pods", suspended, 180)
    folders = [f"{namespace}/pp/rank_{rank}" for rank in (0, 1)]
    stored = newest_in_store(object_store, store_bucket)
    assert sorted(stored) == folders and len(set(stored.values())) == 1, stored
    final = stored[folders[0]]
    set_suspend(api_client, namespace, "pp", False)

    status = final_status(api_client, namespace, "pp", 600)
    assert status["phase"] == "Succeeded", status
    assert status["resumedFromStep"] == final, "the start came from the store: each disk was new"
    # Every pod had its own disk (the suspended pods' emptyDirs went with them, as kubelet removes
    # them): each resumed pod's holds one rank's folders, its steps beginning at `final`.
    pods = node_agent.state_dir / "pods"
    disks = sorted(pods.glob(f"{namespace}_pp-a1-*/volumes/{SHARED_VOLUME_NAME}/{namespace}/pp"))
    assert len(disks) == 2, disks
    for rank, disk in enumerate(disks):
        for folder in ("log", contract.CHECKPOINT_DIR):
            assert [p.name for p in (disk / folder).iterdir()] == [f"rank_{rank}"], (disk, folder)
        first = read_steps(disk / "log" / f"rank_{rank}" / "steps.jsonl")[0]
        assert first["resumed_from"]["global_step"] == final, (rank, first)
    done = status["checkpointStore"]["step"]
    assert newest_in_store(object_store, store_bucket) == dict.fromkeys(folders, done)
