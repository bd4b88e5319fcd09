"""Worker pods under the restricted Pod Security Standard, judged by the API server's own PodSecurity
admission (on by default in kube-apiserver): the pods the controller builds from each sample, and
from a template that says nothing about security, with and without `spec.securityDefaults`."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.api.types import parse_job
from controller.core.podspec import worker_pod
from tests.support import REPO
from tests.support.deploy import documents
from tests.support.poll import wait_for

pytestmark = pytest.mark.timeout(300)

SAMPLES = sorted((REPO / "deploy" / "samples").glob("*.yaml"))
REFUSED = 'violates PodSecurity "restricted:latest"'


def pods_of(body: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """Every pod of attempt 0, as the controller would create them."""
    body = copy.deepcopy(body)
    body["metadata"] |= {"namespace": namespace, "uid": str(uuid.uuid4())}
    job = parse_job(body)
    return [
        worker_pod(job, attempt=0, rank=rank, replicas=job.spec.replicas) for rank in range(job.spec.replicas)
    ]


def refusal(api: client.ApiClient, namespace: str, pod: dict[str, Any]) -> str | None:
    """The API server's reason for refusing `pod` (a server-side dry run), None if it admits it. The
    body is posted as it is, as the controller posts it (the client's models would refuse a sample's
    integer quantities before the server saw them)."""
    request = api.param_serialize(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        query_params=[("dryRun", "All")],
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=pod,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=30)
    data = response.read()
    if 200 <= response.status <= 299:
        return None
    return str(json.loads(data)["message"])


def bare_job(**spec: Any) -> dict[str, Any]:
    container = {"name": "trainer", "image": "respawn/trainer:0.1.0", "args": ["--config", "/c"]}
    return {
        "apiVersion": "training.respawn.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "bare"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [container]}}, **spec},
    }


@pytest.fixture
def restricted(api_client: client.ApiClient) -> Iterator[str]:
    """A namespace enforcing `restricted`, once admission is seen refusing a pod there (the label
    reaches PodSecurity through its namespace cache)."""
    core = client.CoreV1Api(api_client)
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace({"metadata": {"name": name, "labels": labels}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    try:
        lax = pods_of(bare_job(securityDefaults=False), name)[0]
        # The accounts the workers run as (the controller creates them with the job's report Role).
        jobs = [
            doc
            for sample in SAMPLES
            for doc in yaml.safe_load_all(sample.read_text())
            if doc and doc.get("kind") == "TrainingJob"
        ]
        for account in {"respawn-bare", *(f"respawn-{doc['metadata']['name']}" for doc in jobs)}:
            core.create_namespaced_service_account(name, {"metadata": {"name": account}})
        wait_for(
            "PodSecurity to enforce restricted", lambda: REFUSED in (refusal(api_client, name, lax) or "")
        )
        yield name
    finally:
        core.delete_namespace(name)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_the_samples_workers_are_admitted_under_restricted(
    sample: Path, restricted: str, api_client: client.ApiClient
) -> None:
    body = next(d for d in documents(sample.read_text()) if d["kind"] == "TrainingJob")
    pods = pods_of(body, restricted)
    assert len(pods) == body["spec"]["replicas"]
    for pod in pods:
        assert refusal(api_client, restricted, pod) is None, pod["metadata"]["name"]


def test_a_template_without_security_settings_is_admitted_only_with_the_defaults(
    restricted: str, api_client: client.ApiClient
) -> None:
    for pod in pods_of(bare_job(), restricted):
        assert refusal(api_client, restricted, pod) is None, pod["spec"]["containers"][0]["securityContext"]
    without = pods_of(bare_job(securityDefaults=False), restricted)[0]
    assert "securityContext" not in without["spec"]["containers"][0]
    message = refusal(api_client, restricted, without) or ""
    for need in ("allowPrivilegeEscalation != false", "unrestricted capabilities", "runAsNonRoot != true"):
        assert need in message, message


def test_a_container_with_its_own_settings_is_judged_on_them(
    restricted: str, api_client: client.ApiClient
) -> None:
    body = bare_job()
    body["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    message = refusal(api_client, restricted, pods_of(body, restricted)[0]) or ""
    assert REFUSED in message and "allowPrivilegeEscalation != false" in message, message
