"""The chart and manifests' paths, rendered objects, and the controller run as a ServiceAccount
against a test API server, as the chart would run it: a token from the TokenRequest API, the
controller process with a given command line, and what can be read from outside it (health
endpoints, its Lease, its log)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from devcluster.controlplane import ControlPlane
from tests.support import REPO
from tests.support.poll import wait_for

CHART = REPO / "helm" / "respawn"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"

Helm = Callable[..., subprocess.CompletedProcess[str]]


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass
class Rendered:
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}


def service_account_token(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """A fresh token of ServiceAccount `namespace/name` (TokenRequest API, the API server's audience)."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    response = client.CoreV1Api(api_client).create_namespaced_service_account_token(name, namespace, request)
    return str(response.status.token)


def service_account_kubeconfig(
    control_plane: ControlPlane, api_client: client.ApiClient, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig holding a fresh token of ServiceAccount `namespace/name`."""
    token = service_account_token(api_client, namespace, name)
    return control_plane.write_kubeconfig(path, user=name, token=token)


def may_get_url(admin: client.ApiClient, user: str, path: str) -> bool:
    """Whether ServiceAccount user `user` may `get` the non-resource URL `path`."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            non_resource_attributes=client.V1NonResourceAttributes(path=path, verb="get"),
        )
    )
    return bool(client.AuthorizationV1Api(admin).create_subject_access_review(review).status.allowed)


@contextlib.contextmanager
def metrics_reader(
    admin: client.ApiClient, namespace: str, account: str = "prometheus", cluster_role: str | None = None
) -> Iterator[str]:
    """A token of a new ServiceAccount `namespace/account` that may get /metrics, as Prometheus's:
    bound to `cluster_role` (e.g. the chart's metrics reader), by default to a new ClusterRole with
    that one rule. Waits until the authorizer allows it; the cluster-scoped objects are deleted on
    the way out (the ServiceAccount goes with its namespace)."""
    rbac, name = client.RbacAuthorizationV1Api(admin), f"metrics-reader-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(admin).create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    if cluster_role is None:
        rules = [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    binding = {
        "metadata": {"name": name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role or name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    rbac.create_cluster_role_binding(binding)
    try:
        user = f"system:serviceaccount:{namespace}:{account}"
        wait_for(f"{user} to be allowed /metrics", lambda: may_get_url(admin, user, "/metrics"), 30)
        yield service_account_token(admin, namespace, account)
    finally:
        rbac.delete_cluster_role_binding(name)
        if cluster_role is None:
            rbac.delete_cluster_role(name)


def spawn_controller(
    kubeconfig: Path, args: list[str], log: Path, *, pod_namespace: str
) -> subprocess.Popen[bytes]:
    """The controller with `args` (argparse keeps the last value of a repeated flag), output to `log`."""
    env = {**os.environ, "POD_NAME": "respawn-test-0", "POD_NAMESPACE": pod_namespace}
    env.pop("KUBECONFIG", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "controller", f"--kubeconfig={kubeconfig}", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def http_get(port: int, path: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET on a local port, with `token` as bearer token if given; status 0
    while nothing listens."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def http_status(port: int, path: str) -> int:
    return http_get(port, path)[0]


def allowed(
    admin: client.ApiClient,
    user: str,
    verb: str,
    group: str,
    resource: str,
    namespace: str = "",
    name: str = "",
) -> bool:
    """Whether `user` (a ServiceAccount) may `verb` the `resource` (`plural` or `plural/subresource`) of
    API `group`, as the API server's authorizer answers a SubjectAccessReview."""
    resource, _, subresource = resource.partition("/")
    attributes = client.V1ResourceAttributes(
        verb=verb, group=group, resource=resource, subresource=subresource, namespace=namespace, name=name
    )
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=attributes,
        )
    )
    return bool(client.AuthorizationV1Api(admin).create_subject_access_review(review).status.allowed)


def lease_holder(
    api_client: client.ApiClient, namespace: str, name: str = "respawn-controller"
) -> str | None:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity
