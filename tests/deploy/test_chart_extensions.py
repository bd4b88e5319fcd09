"""What lets the chart compose with others (issue 18, item 3): `global` from an umbrella chart, an
image registry, extension values for the controller pod, a disruption budget that cannot block a
drain, a `helm test` hook, Chart.yaml metadata and the generated README."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.runtime.health import HealthServer
from controller.runtime.metrics_auth import KubeReviewer, MetricsAuth
from tests.support import REPO
from tests.support.deploy import ALL_OPTIONS, CHART, Helm, Rendered, documents

pytestmark = pytest.mark.timeout(300)

Render = Callable[..., Rendered]


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    return dict(rendered.one("Deployment")["spec"]["template"]["spec"])


def image(rendered: Rendered) -> str:
    return str(pod_spec(rendered)["containers"][0]["image"])


# -- global and the image ----------------------------------------------------------------------


def test_global_is_accepted_as_an_umbrella_chart_sets_it(render: Render) -> None:
    rendered = render(
        "--set", "global.imageRegistry=registry.example.com:5000",
        "--set", "global.storageClass=fast",  # a parent's global for other subcharts: ignored
        "--set", "global.imagePullSecrets[0].name=shared",
        "--set", "imagePullSecrets[0].name=shared,imagePullSecrets[1].name=own",
    )  # fmt: skip
    assert image(rendered) == "registry.example.com:5000/respawn/controller:0.1.0"
    assert pod_spec(rendered)["imagePullSecrets"] == [{"name": "shared"}, {"name": "own"}], "each name once"
    assert (
        render("--set", "global.imageRegistry=x")
        .one("Pod")["spec"]["containers"][0]["image"]
        .startswith("x/respawn/controller")
    ), "the helm test pod runs the same image"


def test_the_image_registry_prefixes_the_repository_and_a_global_one_wins(render: Render) -> None:
    assert image(render()) == "respawn/controller:0.1.0", "no registry: the repository as it is"
    assert (
        image(render("--set", "image.registry=own.example.com")) == "own.example.com/respawn/controller:0.1.0"
    )
    both = render(
        "--set", "image.registry=own.example.com", "--set", "global.imageRegistry=mirror.example.com"
    )
    assert image(both) == "mirror.example.com/respawn/controller:0.1.0"
    digest = "sha256:" + "cd" * 32
    pinned = render("--set", "image.registry=own.example.com", "--set", f"image.digest={digest}")
    assert image(pinned) == f"own.example.com/respawn/controller@{digest}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "global.imageRegistry=not a registry"], "/global/imageRegistry"),
        (["--set", "extraEnv[0].value=x"], "missing property 'name'"),
        (["--set", "extraVolumeMounts[0].name=x"], "missing property 'mountPath'"),
        (["--set", "topologySpreadConstraints[0].maxSkew=0"], "/topologySpreadConstraints/0"),
        (["--set", "metrics.prometheusRule.budgetNearlySpentRatio=2"], "budgetNearlySpentRatio"),
        (
            ["--set", "metrics.prometheusRule.restartStorm.window=soon"],
            "/metrics/prometheusRule/restartStorm/window",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v[-1],
)
def test_the_schema_checks_the_new_values(helm: Helm, args: list[str], message: str) -> None:
    result = helm("template", "respawn", str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# -- the controller pod ------------------------------------------------------------------------


def test_extension_values_reach_the_controller_pod(render: Render) -> None:
    values = {
        "extraEnv": [
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/owner": "platform"},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            },
            {
                "maxSkew": 2,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"team": "platform"}},
            },
        ],
    }
    rendered = render("--set-json", ",".join(f"{k}={json.dumps(v)}" for k, v in values.items()))
    deployment = rendered.one("Deployment")
    template, pod = deployment["spec"]["template"], pod_spec(rendered)
    container = pod["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names == ["POD_NAME", "POD_NAMESPACE", "HTTPS_PROXY", "NODE"], "the chart's own stay first"
    assert container["env"][3]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp", "ca"]
    assert template["metadata"]["labels"]["team"] == "platform"
    assert template["metadata"]["annotations"] == {"example.com/owner": "platform"}
    zone, host = pod["topologySpreadConstraints"]
    # Without a selector a constraint would count every pod of the namespace: the chart adds its own.
    assert zone["labelSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert host["labelSelector"] == {"matchLabels": {"team": "platform"}}, "a given selector is kept"


def test_security_context_overrides_merge_over_the_restricted_defaults(render: Render) -> None:
    rendered = render(
        "--set", "podSecurityContext.runAsUser=1001,podSecurityContext.fsGroup=1001",
        "--set", "securityContext.runAsUser=1001",
    )  # fmt: skip
    pod = pod_spec(rendered)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1001,
        "runAsGroup": 65532,
        "fsGroup": 1001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = pod["containers"][0]["securityContext"]
    assert container["runAsUser"] == 1001
    assert container["readOnlyRootFilesystem"] is True and container["capabilities"] == {"drop": ["ALL"]}
    default = pod_spec(render())["containers"][0]["securityContext"]
    assert default["runAsUser"] == 65532 and default["allowPrivilegeEscalation"] is False


# -- disruption budget -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "min_available", "rendered"),
    [(2, "1", True), (3, "2", True), (2, "50%", True), (1, "1", False), (2, "2", False), (2, "100%", False)],
)
def test_the_disruption_budget_is_rendered_only_when_it_cannot_block_a_drain(
    render: Render, replicas: int, min_available: str, rendered: bool
) -> None:
    args = ["--set", f"podDisruptionBudget.enabled=true,replicaCount={replicas}"]
    args += [
        "--set-string" if "%" in min_available else "--set",
        f"podDisruptionBudget.minAvailable={min_available}",
    ]
    budgets = render(*args).of_kind("PodDisruptionBudget")
    assert bool(budgets) is rendered
    if budgets:
        assert budgets[0]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_a_skipped_budget_is_explained_in_the_notes(helm: Helm) -> None:
    args = ["--set", "podDisruptionBudget.enabled=true,replicaCount=1"]
    result = helm("install", "r", str(CHART), "--dry-run=client", *args)
    assert result.returncode == 0, result.stderr
    assert "No PodDisruptionBudget was created" in result.stdout


# -- helm test ---------------------------------------------------------------------------------


def test_the_helm_test_pod_checks_the_controller_through_its_service(render: Render) -> None:
    rendered = render()
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = rendered.one("Service")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    port = service["spec"]["ports"][0]["port"]
    assert env["RESPAWN_URL"] == f"http://{service['metadata']['name']}.respawn-system.svc:{port}"
    assert env["RESPAWN_METRICS_AUTH"] == "true"
    tls = render("--set", "metrics.tls.secretName=respawn-tls").one("Pod")["spec"]
    assert tls["containers"][0]["env"][0]["value"].startswith("https://")
    assert tls["volumes"][0]["secret"] == {
        "secretName": "respawn-tls",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert "Pod" not in render("--set", "tests.enabled=false").kinds()
    assert "Pod" not in render("--set", "metrics.service.enabled=false").kinds(), "nothing to test through"


@pytest.fixture
def controller_port(api_client: client.ApiClient) -> Iterator[tuple[HealthServer, list[bool]]]:
    """The controller's health server as the chart runs it (/metrics behind a token); its
    readiness is the returned flag."""
    ready = [True]
    health = HealthServer(host="127.0.0.1", port=0, metrics_auth=MetricsAuth(KubeReviewer(api_client)))
    health.add_readiness_check("informers", lambda: ready[0])
    health.start()
    yield health, ready
    health.stop()


def test_the_helm_test_script_passes_on_a_ready_controller_and_fails_otherwise(
    render: Render, controller_port: tuple[HealthServer, list[bool]]
) -> None:
    """The pod's own script, run here against the controller's health server in place of the Service."""
    health, ready = controller_port
    container = render().one("Pod")["spec"]["containers"][0]
    assert container["command"][:2] == ["python", "-c"]

    def run(metrics_auth: str = "true") -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "RESPAWN_URL": f"http://127.0.0.1:{health.port}",
            "RESPAWN_METRICS_AUTH": metrics_auth,
        }
        return subprocess.run(
            [sys.executable, "-c", container["args"][0]], env=env, capture_output=True, text=True, timeout=60
        )

    passed = run()
    assert passed.returncode == 0, passed.stderr
    assert "/readyz: 200" in passed.stdout and "/metrics without a token: 401" in passed.stdout
    ready[0] = False
    unready = run()
    assert unready.returncode != 0 and "no controller replica is ready" in unready.stderr
    ready[0] = True
    # A controller serving /metrics to anyone while the chart says auth is on fails the test.
    open_metrics = HealthServer(host="127.0.0.1", port=0)
    open_metrics.start()
    try:
        env = {
            **os.environ,
            "RESPAWN_URL": f"http://127.0.0.1:{open_metrics.port}",
            "RESPAWN_METRICS_AUTH": "true",
        }
        opened = subprocess.run(
            [sys.executable, "-c", container["args"][0]], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        open_metrics.stop()
    assert opened.returncode != 0 and "not 401" in opened.stderr


def test_the_helm_test_pod_meets_the_restricted_pod_security_standard(
    render: Render, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    pod = render(namespace=namespace).one("Pod")
    core.create_namespaced_pod(namespace, pod, dry_run="All")
    pod["spec"]["containers"][0]["securityContext"] = {}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403, "the check has teeth"


# -- metadata and README -----------------------------------------------------------------------


def test_chart_metadata_names_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["kubeVersion"] and chart["description"]


def test_the_readme_documents_every_value() -> None:
    """Every leaf of values.yaml is in the README's generated table, itself or through the parent
    whose row shows it (`make manifests` regenerates it; test_manifests fails on drift)."""
    spec = importlib.util.spec_from_file_location("readme", REPO / "hack" / "helm" / "readme.py")
    assert spec is not None and spec.loader is not None
    readme = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme", readme)  # its dataclass looks its module up there
    spec.loader.exec_module(readme)
    text = (CHART / "README.md").read_text()
    rows = [r.key for r in readme.documented_keys((CHART / "values.yaml").read_text())]
    assert len(rows) > 60
    for key in rows:
        assert f"| `{key}` |" in text, key
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Any, prefix: str = "") -> Iterator[str]:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                yield from leaves(child, f"{prefix}{key}.")
        else:
            yield prefix.rstrip(".")

    for leaf in leaves(values):
        assert any(leaf == row or leaf.startswith(row + ".") for row in rows), f"{leaf} has no README row"
    assert readme.expected() == text, "run `make manifests`"
    assert "docker push" in text and "helm test" in text


def test_all_options_switch_the_new_values_on() -> None:
    options = yaml.safe_load(ALL_OPTIONS.read_text())
    for key in ("global", "extraEnv", "extraVolumes", "extraVolumeMounts", "topologySpreadConstraints"):
        assert options.get(key), key
    assert options["metrics"]["prometheusRule"]["enabled"] is True


def test_the_chart_works_as_a_subchart_of_an_umbrella_chart(helm: Helm, tmp_path: Path) -> None:
    """What issue 18 found broken: a parent chart's globals (its own keys among them) reach the
    subchart, whose schema refused `global`."""
    umbrella = tmp_path / "platform"
    umbrella.mkdir()
    (umbrella / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "respawn", "version": "0.1.0", "repository": f"file://{CHART}"}],
            }
        )
    )
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {"imageRegistry": "mirror.example.com", "clusterDomain": "cluster.local"},
                "respawn": {"replicaCount": 3},
            }
        )
    )
    built = helm("dependency", "build", str(umbrella))
    assert built.returncode == 0, built.stderr
    result = helm("template", "platform", str(umbrella), "--namespace", "ml")
    assert result.returncode == 0, result.stderr
    [deployment] = [d for d in documents(result.stdout) if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "mirror.example.com/respawn/controller:0.1.0"
    )
