"""The chart, the plain manifests and the images, checked with the pinned helm binary
(`python -m devcluster assets` builds it next to the control-plane binaries).

Helm keeps its cache, config and data under a per-session temporary directory, never the
user's home.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster import assets
from tests.support.deploy import CHART, Helm, Rendered, documents


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run the pinned helm with isolated state; returns the completed process (check=False)."""
    binary = assets.ensure_assets() / "helm"
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("HELM_")}
    env |= {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    return run


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., Rendered]:
    """`helm template` the chart; raises with helm's message if it fails."""

    def run(*args: str, release: str = "respawn", namespace: str = "respawn-system") -> Rendered:
        result = helm("template", release, str(CHART), "--namespace", namespace, *args)
        assert result.returncode == 0, result.stderr
        return Rendered(documents(result.stdout))

    return run


@pytest.fixture
def helm_release(
    helm: Helm, kubeconfig: Path, namespace: str
) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """`helm install` into the test API server; every release is uninstalled afterwards, since
    ClusterRoles and kube-system Roles outlive the test namespace."""
    installed: list[tuple[str, str]] = []

    def install(release: str, *args: str, ns: str = namespace) -> subprocess.CompletedProcess[str]:
        result = helm(
            "install", release, str(CHART), "--kubeconfig", str(kubeconfig), "--namespace", ns, *args
        )
        if result.returncode == 0:
            installed.append((release, ns))
        return result

    yield install
    for release, ns in installed:
        helm("uninstall", release, "--kubeconfig", str(kubeconfig), "--namespace", ns)
