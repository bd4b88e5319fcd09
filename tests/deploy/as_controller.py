"""Run `python -m controller` as a ServiceAccount against a test API server, as the chart would.

Shared by the RBAC tests: a token from the TokenRequest API, the controller process with a
given command line, and what can be read from outside it (health endpoints, its Lease, its log).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from devcluster.controlplane import ControlPlane
from tests.deploy.conftest import REPO_ROOT


def service_account_kubeconfig(
    control_plane: ControlPlane, api_client: client.ApiClient, namespace: str, name: str, path: Path
) -> Path:
    """A kubeconfig holding a fresh token of ServiceAccount `namespace/name`."""
    token = (
        client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
        )
        .status.token
    )
    return control_plane.write_kubeconfig(path, user=name, token=token)


def spawn_controller(
    kubeconfig: Path, args: list[str], log: Path, *, pod_namespace: str
) -> subprocess.Popen[bytes]:
    """The controller with `args` (argparse keeps the last value of a repeated flag), output to `log`."""
    env = {**os.environ, "POD_NAME": "respawn-test-0", "POD_NAMESPACE": pod_namespace}
    env.pop("KUBECONFIG", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "controller", f"--kubeconfig={kubeconfig}", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body); status 0 while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def http_status(port: int, path: str) -> int:
    return http_get(port, path)[0]


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
