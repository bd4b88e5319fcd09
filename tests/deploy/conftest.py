"""The chart, the plain manifests and the images, checked with the pinned helm binary
(`python -m devcluster assets` builds it next to the control-plane binaries).

Helm keeps its cache, config and data under a per-session temporary directory, never the
user's home.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import assets

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHART = REPO_ROOT / "helm" / "respawn"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"

Helm = Callable[..., subprocess.CompletedProcess[str]]


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
