"""Session fixtures: one real control plane (etcd + kube-apiserver, RBAC on) for the whole run,
the CRDs from deploy/ applied to it, and a fresh namespace per test.

There is no kube-controller-manager here (as in envtest): no garbage collection, no namespace
finalisation, no service-account controller. Tests assert owner references, not cascades,
and the namespace fixture creates the `default` ServiceAccount the admission plugin requires.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from devcluster.controlplane import ControlPlane
from devcluster.crds import apply_crds
from tests.support import REPO

pytest_plugins = ["tests.support.nodeagent", "tests.support.fixtures", "tests.support.objectstore"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(workdir=tmp_path_factory.mktemp("controlplane")) as cp:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        try:
            apply_crds(api, REPO / "deploy")
        finally:
            api.close()
        yield cp


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig_path


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )
    yield name
    core.delete_namespace(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any process started under this session's temp dirs outlived it.

    Session fixtures are torn down before this hook, so anything found here leaked.
    """
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    root = str(factory.getbasetemp())
    leaked = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (root in cmdline or cwd.startswith(root)):
            leaked.append(f"{entry.name}: {cmdline[:200]}")
    if leaked:
        session.config.get_terminal_writer().line(
            "processes left running after the test session:\n  " + "\n  ".join(leaked), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
