"""The chart on its own: lint, render, the values schema, and what each value switches."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.deploy import ALL_OPTIONS, CHART, Helm, Rendered

pytestmark = pytest.mark.timeout(300)

Render = Callable[..., Rendered]
PROMETHEUS_OPERATOR = ("--api-versions", "monitoring.coreos.com/v1")


def controller_args(rendered: Rendered) -> list[str]:
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container["args"]


def rules_by_resource(rendered: Rendered, kind: str, name: str) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for rule in rendered.one(kind, name)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = f"{resource}.{group}" if group else resource
                rules.setdefault(key, set()).update(rule["verbs"])
    return rules


# -- lint and render ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_OPTIONS)]], ids=["defaults", "all-options"])
def test_lint_is_clean(helm: Helm, values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_defaults_render_the_controller_and_its_permissions(render: Render) -> None:
    rendered = render()
    assert rendered.kinds() == {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Pod",  # the `helm test` hook
    }
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "respawn/controller:0.1.0"
    digest = "sha256:" + "ab" * 32
    pinned = render("--set", f"image.digest={digest}", "--set", "image.tag=0.1.0")
    by_digest = pinned.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert by_digest == f"respawn/controller@{digest}", "a digest wins over the tag"
    assert container["args"] == [
        "--workers=2",
        "--health-port=8081",
        "--lease-name=respawn-controller",
        "--log-level=info",
    ]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == rendered.one("ServiceAccount")["metadata"]["name"]
    service = rendered.one("Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_pod_security_is_restricted(render: Render) -> None:
    pod = render().one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = pod["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_all_options_render(render: Render) -> None:
    rendered = render("-f", str(ALL_OPTIONS), *PROMETHEUS_OPERATOR)
    assert {"PodDisruptionBudget", "ServiceMonitor", "ConfigMap"} <= rendered.kinds()
    assert controller_args(rendered) == [
        "--namespace=team-a,team-b",
        "--workers=4",
        "--health-port=9090",
        "--lease-name=respawn-all",
        "--shared-root=/mnt/training",
        "--checkpoint-poll-interval=10",
        "--log-level=debug",
        "--lease-duration=20",
        "--renew-deadline=15",
    ]
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["shared"] == {"name": "shared", "mountPath": "/mnt/training", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shared"]["persistentVolumeClaim"] == {"claimName": "training-shared", "readOnly": True}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert set(pod["affinity"]) == {"nodeAffinity"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


# -- RBAC --------------------------------------------------------------------------------------

JOB_RULES = {
    "trainingjobs.training.respawn.dev": {"list", "watch", "delete"},  # delete: ttlSecondsAfterFinished
    "trainingjobs/status.training.respawn.dev": {"update"},
    "trainingjobs/finalizers.training.respawn.dev": {"update"},
    "pods": {"list", "watch", "create", "get", "delete", "patch"},
    "services": {"create", "get"},
    "events": {"create"},
    "serviceaccounts": {"create", "get"},
    "roles.rbac.authorization.k8s.io": {"create", "get", "update"},
    "rolebindings.rbac.authorization.k8s.io": {"create", "get"},
    # Gang scheduling: the job's PodGroup, Volcano's or the coscheduling plugin's.
    "podgroups.scheduling.volcano.sh": {"create", "get", "update"},
    "podgroups.scheduling.x-k8s.io": {"create", "get", "update"},
}


def test_rbac_grants_exactly_what_the_controller_uses(render: Render) -> None:
    rendered = render()
    assert rules_by_resource(rendered, "ClusterRole", "respawn") == {"nodes": {"list", "watch"}, **JOB_RULES}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in rendered.of_kind("Role")}
    assert roles == {("respawn-system", "respawn-leader-election"), ("kube-system", "respawn-device-faults")}
    assert rules_by_resource(rendered, "Role", "respawn-device-faults") == {"configmaps": {"list", "watch"}}
    lease_rules = rendered.one("Role", "respawn-leader-election")["rules"]
    assert lease_rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["respawn-controller"],
            "verbs": ["get", "update"],
        },
    ]
    for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "respawn", "namespace": "respawn-system"}
        ]
        if binding["metadata"]["name"] == "respawn-auth-delegator":  # TokenReview, SubjectAccessReview
            assert binding["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            }
        else:
            assert binding["roleRef"]["name"] == binding["metadata"]["name"]
    assert {b["metadata"]["name"] for b in rendered.of_kind("ClusterRoleBinding")} == {
        "respawn",
        "respawn-auth-delegator",
    }
    reader = rendered.one("ClusterRole", "respawn-metrics-reader")  # bound to nobody by default
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


@pytest.mark.parametrize("values", [[], ["-f", str(ALL_OPTIONS)]], ids=["defaults", "all-options"])
def test_no_rule_reaches_secrets_or_wildcards(render: Render, values: list[str]) -> None:
    for role in render(*values).of_kind("ClusterRole") + render(*values).of_kind("Role"):
        for rule in role["rules"]:
            if "nonResourceURLs" in rule:  # the metrics reader
                assert (rule["nonResourceURLs"], rule["verbs"]) == (["/metrics"], ["get"])
                continue
            assert "secrets" not in rule["resources"]
            assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_watch_namespaces_move_job_permissions_into_a_role_in_each(render: Render) -> None:
    rendered = render("--set", "controller.watchNamespaces={team-a,team-b}")
    assert "--namespace=team-a,team-b" in controller_args(rendered)
    assert rules_by_resource(rendered, "ClusterRole", "respawn") == {"nodes": {"list", "watch"}}
    roles = [r for r in rendered.of_kind("Role") if r["metadata"]["name"] == "respawn"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert all(rules_by_resource(Rendered([r]), "Role", "respawn") == JOB_RULES for r in roles)
    bindings = [b for b in rendered.of_kind("RoleBinding") if b["metadata"]["name"] == "respawn"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    pods = rendered.one("ValidatingAdmissionPolicy", "respawn-controller-pods")
    assert "object.metadata.namespace in ['team-a','team-b']" in [
        v["expression"] for v in pods["spec"]["validations"]
    ]


def test_admission_opt_outs_drop_only_their_checks(render: Render) -> None:
    def expressions(rendered: Rendered, policy: str) -> str:
        return " ".join(
            v["expression"] for v in rendered.one("ValidatingAdmissionPolicy", policy)["spec"]["validations"]
        )

    default = render()
    assert "check('use')" in expressions(default, "respawn-trainingjob-author")
    assert "hostPath" in expressions(default, "respawn-controller-pods")
    assert "'kube-system'" in expressions(default, "respawn-controller-pods")
    opted = render(
        "--set", "admission.trainingJobs.checkServiceAccount=false",
        "--set", "admission.controllerPods.allowHostAccess=true",
    )  # fmt: skip
    author = expressions(opted, "respawn-trainingjob-author")
    assert "check('use')" not in author and "check('create')" in author and "outputDir" in author
    assert "hostPath" not in expressions(opted, "respawn-controller-pods")
    assert not render("--set", "admission.enabled=false").kinds() & {"ValidatingAdmissionPolicy"}


def test_device_faults_off_drops_kube_system_access(render: Render) -> None:
    rendered = render("--set", "deviceFaults.enabled=false")
    assert "--no-device-faults" in controller_args(rendered)
    assert [o for o in rendered.objects if o["metadata"].get("namespace") == "kube-system"] == []


def test_leader_election_off_needs_one_replica_and_drops_the_lease_role(render: Render, helm: Helm) -> None:
    rendered = render("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    assert "--no-leader-election" in controller_args(rendered)
    assert not any("leader-election" in r["metadata"]["name"] for r in rendered.of_kind("Role"))
    result = helm("template", "respawn", str(CHART), "--set", "leaderElection.enabled=false")
    assert result.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in result.stderr


def test_rbac_and_service_account_can_be_brought_by_the_user(render: Render) -> None:
    rendered = render("--set", "rbac.create=false", "--set", "serviceAccount.create=false")
    assert not rendered.kinds() & {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    }
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "default"


# -- /metrics: who may read it, and who may reach it ------------------------------------------


def test_metrics_auth_is_on_and_can_be_turned_off(render: Render) -> None:
    on = render(*PROMETHEUS_OPERATOR, "--set", "metrics.serviceMonitor.enabled=true")
    assert not [a for a in controller_args(on) if a.startswith("--metrics-auth")], "on: the default"
    assert on.one("ClusterRoleBinding", "respawn-auth-delegator")
    endpoint = on.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    off = render(
        *PROMETHEUS_OPERATOR,
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.auth.enabled=false",
    )  # fmt: skip
    assert "--metrics-auth=false" in controller_args(off)
    assert [b["metadata"]["name"] for b in off.of_kind("ClusterRoleBinding")] == ["respawn"]
    assert "bearerTokenFile" not in off.one("ServiceMonitor")["spec"]["endpoints"][0]


def test_metrics_tls_serves_https_from_the_secret_and_prometheus_checks_it(render: Render) -> None:
    rendered = render(
        *PROMETHEUS_OPERATOR,
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.tls.secretName=respawn-metrics-tls",
    )  # fmt: skip
    args = controller_args(rendered)
    assert {"--tls-cert-file=/etc/respawn/tls/tls.crt", "--tls-key-file=/etc/respawn/tls/tls.key"} <= set(
        args
    )
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "mountPath": "/etc/respawn/tls", "readOnly": True} in container["volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "respawn-metrics-tls"}} in pod["volumes"]
    endpoint = rendered.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "serverName": "respawn-metrics.respawn-system.svc",
        "ca": {"secret": {"name": "respawn-metrics-tls", "key": "ca.crt"}},
    }
    plain = render()
    assert not [a for a in controller_args(plain) if a.startswith("--tls")], "plain HTTP without a Secret"


def test_the_metrics_reader_is_bound_to_the_subjects_given(render: Render) -> None:
    rendered = render(
        "--set", "metrics.reader.subjects[0].kind=ServiceAccount",
        "--set", "metrics.reader.subjects[0].name=prometheus",
        "--set", "metrics.reader.subjects[0].namespace=monitoring",
    )  # fmt: skip
    binding = rendered.one("ClusterRoleBinding", "respawn-metrics-reader")
    assert binding["roleRef"]["name"] == "respawn-metrics-reader"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]
    none = render("--set", "metrics.reader.create=false").of_kind("ClusterRole")
    assert [r["metadata"]["name"] for r in none] == ["respawn"]


def test_network_policy_admits_only_the_given_peers_to_the_metrics_port_and_reaches_only_the_api(
    render: Render,
) -> None:
    assert "NetworkPolicy" not in render().kinds()
    closed = render("--set", "networkPolicy.enabled=true", "--set", "tests.enabled=false").one(
        "NetworkPolicy"
    )["spec"]
    assert closed["policyTypes"] == ["Ingress", "Egress"]
    assert closed["ingress"] == [], "no peers given: nothing but the probes"
    tested = render("--set", "networkPolicy.enabled=true").one("NetworkPolicy")["spec"]
    test_pod = render().one("Pod")["metadata"]["labels"]
    [peer] = tested["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"].items() <= test_pod.items(), "the helm test pod gets through"
    assert closed["egress"] == [
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    ]
    rendered = render("-f", str(ALL_OPTIONS))
    policy = rendered.one("NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"] == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    )
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert policy["egress"] == [
        {
            "ports": [{"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}],
        }
    ]


# -- optional pieces ---------------------------------------------------------------------------


def test_service_monitor_needs_the_value_and_the_api(render: Render) -> None:
    on = ("--set", "metrics.serviceMonitor.enabled=true")
    assert "ServiceMonitor" not in render(*on).kinds(), "rendered although the cluster has no such API"
    assert "ServiceMonitor" not in render(*PROMETHEUS_OPERATOR).kinds(), "rendered although disabled"
    assert "ServiceMonitor" in render(*on, *PROMETHEUS_OPERATOR).kinds()


def test_dashboard_configmap_carries_the_json_file_and_the_sidecar_label(render: Render) -> None:
    assert "ConfigMap" not in render().kinds()
    configmap = render("--set", "dashboards.enabled=true").one("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = CHART / "dashboards" / "respawn-training-jobs.json"
    assert configmap["data"] == {source.name: source.read_text()}


def test_dashboard_shows_every_metric_with_a_datasource_variable() -> None:
    dashboard = json.loads((CHART / "dashboards" / "respawn-training-jobs.json").read_text())
    assert dashboard["title"] == "respawn / Training jobs"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    assert "sum by (reason) (increase(respawn_restarts_total" in exprs["Restarts by reason"]
    assert (
        "histogram_quantile(0.9, sum by (le) (rate(respawn_time_to_recover_seconds_bucket"
        in (exprs["Time to recover"])
    )
    assert "respawn_jobs" in exprs["Jobs by phase"]
    assert "respawn_checkpoint_age_seconds" in exprs["Checkpoint age per job"]
    assert "respawn_steps_lost_bucket" in exprs["Steps lost per failure"]
    assert "respawn_reconcile_duration_seconds_bucket" in exprs["Reconcile latency"]
    assert "respawn_reconcile_errors_total" in exprs["Reconcile errors"]
    assert "respawn_workqueue_depth" in exprs["Work queue depth"]
    assert "respawn_job_restarts{" in exprs["Restarts per job"]
    # A gauge every job has from its first reconcile, so the list is not empty before any restart.
    assert variables["namespace"]["definition"] == "label_values(respawn_job_restarts, namespace)"
    job = variables["trainingjob"]
    assert job["definition"] == 'label_values(respawn_job_restarts{namespace=~"$namespace"}, trainingjob)'
    assert job["includeAll"] and job["allValue"] == ".*"
    for title in ("Restarts by reason", "Checkpoint age per job", "Restarts per job", "Job phase"):
        assert 'trainingjob=~"$trainingjob"' in exprs[title], title
    assert "respawn_job_phase{" in exprs["Job phase"]
    assert "respawn_rest_client_requests_total" in exprs["API requests by response code"]
    [restarts] = [a for a in dashboard["annotations"]["list"] if a["name"] == "Restarts"]
    assert restarts["enable"] and restarts["datasource"]["uid"] == "${datasource}"
    assert "increase(respawn_restarts_total{" in restarts["expr"] and restarts["expr"].endswith("> 0")
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_shared_volume_needs_a_source(helm: Helm) -> None:
    result = helm("template", "respawn", str(CHART), "--set", "sharedVolume.enabled=true")
    assert result.returncode != 0
    assert "sharedVolume.enabled needs sharedVolume.volume" in result.stderr


def test_crd_keep_policy_follows_the_value(render: Render) -> None:
    kept = render().one("CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "annotations" not in render("--set", "crds.keep=false").one("CustomResourceDefinition")["metadata"]
    assert "CustomResourceDefinition" not in render("--set", "crds.enabled=false").kinds()


# -- the values schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "image.pullpolicy=Always"], "additional properties 'pullpolicy' not allowed"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "controller.logLevel=verbose"], "/controller/logLevel"),
        (
            ["--set", "sharedVolume.volume.persistentVolumeClam.claimName=x"],
            "'persistentVolumeClam' not allowed",
        ),
        (["--set", "metrics.serviceMonitor.interval=soon"], "/metrics/serviceMonitor/interval"),
        (["--set", "tolerations[0].efect=NoSchedule"], "additional properties 'efect' not allowed"),
        (["--set", "replicaCount=0"], "/replicaCount"),
        (
            ["--set", "networkPolicy.metricsFrom[0].namespaceSelecter.matchLabels.a=b"],
            "additional properties 'namespaceSelecter' not allowed",
        ),
        (["--set", "networkPolicy.apiServer.cidrs[0]=apiserver"], "/networkPolicy/apiServer/cidrs/0"),
        (["--set", "metrics.reader.subjects[0].kind=Robot"], "/metrics/reader/subjects/0"),
        (["--set", "image.digest=latest"], "/image/digest"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[-1],
)
def test_schema_rejects_mistyped_values(helm: Helm, args: list[str], message: str) -> None:
    result = helm("template", "respawn", str(CHART), *args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def _object_schemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path or "/", node
        for key, child in node.items():
            yield from _object_schemas(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _object_schemas(child, f"{path}/{i}")


def test_schema_closes_every_object() -> None:
    """Objects with named properties allow no others; maps type their values; only embedded
    Kubernetes API types (affinity terms, a CSI source, security contexts, ...) are passed through
    to the API server, which checks them; and `global`, whose keys belong to an umbrella chart."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    passthrough = []
    for path, node in _object_schemas(schema):
        assert "additionalProperties" in node, f"{path} accepts any key"
        if node["additionalProperties"] is True:
            passthrough.append(path.removeprefix("/properties/").replace("/properties/", "."))
        elif "properties" in node:
            assert node["additionalProperties"] is False, path
    assert sorted(passthrough) == [
        "affinity.nodeAffinity",
        "affinity.podAffinity",
        "affinity.podAntiAffinity",
        "extraEnv/items.valueFrom",
        "extraVolumes/items",
        "global",
        "podSecurityContext",
        "securityContext",
        "sharedVolume.volume.csi",
        "topologySpreadConstraints/items",
    ]


def _leaf_keys(values_text: str) -> Iterator[tuple[str, bool]]:
    """(dotted key, documented) for every leaf of values.yaml; a `# --` comment documents a key
    and everything below it."""
    stack: list[tuple[int, str, bool]] = []
    comment = False
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = True
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):(.*)$", line)
        assert match, line
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).split(" #")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = comment or any(d for _, _, d in stack)
        comment = False
        dotted = ".".join([k for _, k, _ in stack] + [key])
        if rest:
            yield dotted, documented
        else:
            stack.append((indent, key, documented))


def test_every_value_is_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    leaves = dict(_leaf_keys(text))
    assert len(leaves) > 40
    assert [key for key, documented in leaves.items() if not documented] == []
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key in leaves:
        node = schema
        for part in key.split("."):
            props = node.get("properties", {})
            if part in props:
                node = props[part]
            else:
                assert isinstance(node.get("additionalProperties"), dict), f"{key} is not in the schema"
                node = node["additionalProperties"]
    assert yaml.safe_load(text)["replicaCount"] == 2
