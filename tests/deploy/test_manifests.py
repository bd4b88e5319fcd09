"""deploy/ and the chart do not drift apart: deploy/crds/ is the CRDs' source of truth, and
deploy/respawn.yaml is the chart rendered with its default values (`make manifests`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import yaml

from tests.support import REPO
from tests.support.deploy import CHART, Rendered, documents

pytestmark = pytest.mark.timeout(300)

CRD_SOURCES = sorted((REPO / "deploy" / "crds").glob("*.yaml"))


def test_deploy_matches_the_chart() -> None:
    """Fails with a diff when deploy/respawn.yaml or the chart's CRD copy is out of date."""
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "helm" / "manifests.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_chart_crds_are_copies_of_deploy_crds() -> None:
    copies = sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in CRD_SOURCES]
    for source, copy in zip(CRD_SOURCES, copies, strict=True):
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}: run `make manifests`"


def test_rendered_crd_is_the_source_plus_labels_and_keep_policy(render: Callable[..., Rendered]) -> None:
    rendered = render().of_kind("CustomResourceDefinition")
    sources = [yaml.safe_load(p.read_text()) for p in CRD_SOURCES]
    assert len(rendered) == len(sources) == 1
    for crd, source in zip(rendered, sources, strict=True):
        labels = crd["metadata"].pop("labels")
        annotations = crd["metadata"].pop("annotations")
        assert crd == source
        assert labels["app.kubernetes.io/part-of"] == "respawn"
        assert annotations == {"helm.sh/resource-policy": "keep"}


def test_plain_manifests_hold_no_crd_and_live_in_respawn_system() -> None:
    objects = documents((REPO / "deploy" / "respawn.yaml").read_text())
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace" and objects[0]["metadata"]["name"] == "respawn-system"
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "CustomResourceDefinition" not in kinds
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service"} <= set(kinds)
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert namespaces == {None, "respawn-system", "kube-system"}
    assert objects[kinds.index("Deployment")]["spec"]["replicas"] == 2
