"""What a worker of a job that restarts in place may do with its token, on the real API server:
watch its own pod by name (the supervisor's channel, trainer_image/inplace.py) and patch it, and
nothing about any other pod: not list the namespace, not read or patch a pod of another attempt."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from controller.api.types import parse_job
from controller.core import podspec
from devcluster.controlplane import ControlPlane
from tests.support.core_inputs import job
from tests.support.deploy import service_account_kubeconfig


def test_a_worker_watches_its_own_pod_and_nothing_else(
    control_plane: ControlPlane, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    body = job(failurePolicy={"restartInPlace": True})
    body["metadata"]["namespace"] = namespace
    spec = parse_job(body)
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    create = {
        "ServiceAccount": core.create_namespaced_service_account,
        "Role": rbac.create_namespaced_role,
        "RoleBinding": rbac.create_namespaced_role_binding,
    }
    for obj in podspec.report_access(spec, attempt=0, replicas=2):  # as the controller makes them
        meta = {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}  # no job object here
        create[obj["kind"]](namespace, {**obj, "metadata": meta})
    for name in ("llm-a0-0", "llm-a1-0"):
        pod = {"metadata": {"name": name}, "spec": {"containers": [{"name": "trainer", "image": "x"}]}}
        core.create_namespaced_pod(namespace, pod)
    path = service_account_kubeconfig(
        control_plane, api_client, namespace, "respawn-llm", tmp_path / "w.kubeconfig"
    )
    worker = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))

    events = watch.Watch().stream(
        worker.list_namespaced_pod, namespace, field_selector="metadata.name=llm-a0-0", timeout_seconds=1
    )
    assert [e["object"].metadata.name for e in events] == ["llm-a0-0"]
    worker.patch_namespaced_pod("llm-a0-0", namespace, {"metadata": {"annotations": {"k": "v"}}})
    for call in (
        lambda: worker.list_namespaced_pod(namespace),
        lambda: worker.list_namespaced_pod(namespace, field_selector="metadata.name=llm-a1-0"),
        lambda: worker.read_namespaced_pod("llm-a1-0", namespace),
        lambda: worker.patch_namespaced_pod("llm-a1-0", namespace, {"metadata": {"annotations": {"k": "v"}}}),
    ):
        with pytest.raises(ApiException) as refused:
            call()
        assert refused.value.status == 403
