"""`helm install` into the real test API server (RBAC, admission, Pod Security on).

There is no kube-controller-manager: the Deployment creates no pods, so the pod it would create
is checked by creating it as a server-side dry run in a namespace that enforces `restricted`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import REPO
from tests.support.deploy import ALL_OPTIONS, CHART

pytestmark = pytest.mark.timeout(300)

Install = Callable[..., Any]
KUBECTL = REPO / ".venv" / "bin" / "kubectl"


def fullname(release: str) -> str:
    return release if "respawn" in release else f"{release}-respawn"


def install_defaults(helm_release: Install, namespace: str) -> str:
    """Install with default values (the CRD is already there, owned by the test session)."""
    result = helm_release(namespace, "--set", "crds.enabled=false")
    assert result.returncode == 0, result.stderr
    return fullname(namespace)


def test_install_with_defaults_creates_the_controller_and_its_rbac(
    helm_release: Install, api_client: client.ApiClient, namespace: str
) -> None:
    result = helm_release(namespace, "--set", "crds.enabled=false")
    assert result.returncode == 0, result.stderr
    name = fullname(namespace)
    assert f"kubectl -n {namespace} rollout status deployment/{name}" in result.stdout  # NOTES.txt

    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    deployment = apps.read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 2
    assert deployment.metadata.annotations["meta.helm.sh/release-name"] == namespace
    assert core.read_namespaced_service_account(name, namespace)
    assert core.read_namespaced_service(f"{name}-metrics", namespace).spec.ports[0].name == "metrics"
    assert rbac.read_cluster_role(name).rules
    assert rbac.read_cluster_role_binding(name).subjects[0].namespace == namespace
    assert rbac.read_namespaced_role(f"{name}-leader-election", namespace)
    assert rbac.read_namespaced_role_binding(f"{name}-device-faults", "kube-system")
    assert core.list_namespaced_secret(namespace, label_selector="owner=helm").items, "the release record"


def test_install_with_every_option(
    helm_release: Install, api_client: client.ApiClient, namespace: str
) -> None:
    name = f"{namespace}-all"
    result = helm_release(
        namespace,
        "-f",
        str(ALL_OPTIONS),
        "--set",
        f"crds.enabled=false,fullnameOverride={name},controller.watchNamespaces={{{namespace}}}",
        "--set",
        f"dashboards.namespace={namespace},serviceAccount.name={name}",
    )
    assert result.returncode == 0, result.stderr
    assert "no ServiceMonitor was created" in result.stdout  # this API server has no Prometheus Operator

    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    rbac, policy = client.RbacAuthorizationV1Api(api_client), client.PolicyV1Api(api_client)
    deployment = apps.read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 3
    assert f"--namespace={namespace}" in deployment.spec.template.spec.containers[0].args
    assert policy.read_namespaced_pod_disruption_budget(name, namespace).spec.min_available == 1
    dashboards = core.read_namespaced_config_map(f"{name}-dashboards", namespace)
    assert dashboards.metadata.labels["grafana_dashboard"] == "1"
    assert json.loads(dashboards.data["respawn-training-jobs.json"])["title"] == "respawn / Training jobs"
    assert [r.resources for r in rbac.read_cluster_role(name).rules] == [["nodes"]]
    assert rbac.read_namespaced_role(name, namespace).rules


def test_install_rejects_a_mistyped_value(helm_release: Install, namespace: str) -> None:
    result = helm_release(namespace, "--set", "crds.enabled=false", "--set", "replicaCount=two")
    assert result.returncode != 0
    assert "at '/replicaCount': got string, want integer" in result.stderr


def _pod_from_template(deployment: client.V1Deployment, name: str) -> client.V1Pod:
    template = deployment.spec.template
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=template.metadata.labels), spec=template.spec
    )


def test_controller_pod_meets_the_restricted_pod_security_standard(
    helm_release: Install, api_client: client.ApiClient, namespace: str
) -> None:
    name = install_defaults(helm_release, namespace)
    core = client.CoreV1Api(api_client)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)

    core.create_namespaced_pod(namespace, _pod_from_template(deployment, "controller"), dry_run="All")

    # The check has teeth: the same pod without its security context is refused.
    insecure = _pod_from_template(deployment, "insecure")
    insecure.spec.security_context = None
    insecure.spec.containers[0].security_context = None
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, insecure, dry_run="All")
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted' in json.loads(refused.value.body)["message"]


def test_every_object_of_the_chart_passes_server_side_dry_run(
    helm: Callable[..., Any], kubeconfig: Path, namespace: str
) -> None:
    """All options on, the CRD included: the API server validates what the chart renders (the CRD
    as an update of the session's, since it exists), and changes nothing."""
    rendered = helm(
        "template",
        namespace,
        str(CHART),
        "--namespace",
        namespace,
        "-f",
        str(ALL_OPTIONS),
        "--set",
        f"controller.watchNamespaces={{{namespace}}},dashboards.namespace={namespace}",
    )
    assert rendered.returncode == 0, rendered.stderr
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), "apply", "--dry-run=server", "-f", "-"],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for kind in ("customresourcedefinition", "deployment", "clusterrole", "role", "poddisruptionbudget"):
        assert f"{kind}." in result.stdout
