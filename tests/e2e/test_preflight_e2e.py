"""End to end: a TrainingJob whose "shared" volume is not shared between its workers (an emptyDir:
each pod its own) fails the trainer's pre-flight check on rank 1, and the job says why.

Rank 1 never sees the probe rank 0 writes to the output directory, exits 74 naming the check, and
the controller restarts the gang without counting it and without avoiding the node (the volume is
at fault, not the node).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from controller.app import Controller
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support.e2e import long_run, trainer_job
from tests.support.kube import create_job, job_status
from tests.support.manifests import SHARED_MOUNT, run_config_map
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import wait_for

pytestmark = pytest.mark.slow


def test_ranks_that_do_not_share_the_output_directory_fail_the_preflight_check(
    api_client: client.ApiClient,
    namespace: str,
    job_controller: Controller,
    shared_root: Path,
    node_agent: NodeAgentHandle,
) -> None:
    client.CoreV1Api(api_client).create_namespaced_config_map(namespace, run_config_map(long_run(3)))
    body = trainer_job("apart", shared_root, maxRestarts=0)
    body["spec"]["sharedVolume"] = {"mountPath": SHARED_MOUNT, "volume": {"emptyDir": {}}}
    (container,) = body["spec"]["template"]["spec"]["containers"]
    container["env"] = [{"name": "RESPAWN_PREFLIGHT_TIMEOUT", "value": "3"}]
    create_job(api_client, namespace, body)

    def failed_preflight() -> dict | None:
        status = job_status(api_client, namespace, "apart")
        failure = status.get("lastFailure") or {}
        return status if failure.get("reason") == "PreflightFailed" else None

    status = wait_for("the pre-flight failure on the job", failed_preflight, 180)
    failure = status["lastFailure"]
    assert failure["counted"] is False and failure["pod"] == "apart-a0-1", failure
    assert "pre-flight check shared-directory failed: no probe of attempt 0 from rank 0" in failure["message"]
    assert status.get("restarts", 0) == 0 and status["uncountedRestarts"] >= 1, status
    assert not status.get("faultyNodes"), "a volume that is not shared is not the node's fault"
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "apart", {"spec": {"suspend": True}}
    )
