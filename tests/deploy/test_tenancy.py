"""Tenancy (docs/security.md, "Tenants"): a TrainingJob grants no more than its author has, jobs of
one namespace cannot reach another's files, and the controller's identity can create only the pods
of TrainingJobs, only where it watches, never with host access.

The chart is installed into the session's API server watching two tenant namespaces (`team-a`
enforces Pod Security `restricted`) and not a third; the controller runs as a process with a token
of the chart's ServiceAccount and the installed Deployment's arguments. Authors are real users
with client certificates and only the Roles given here.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from devcluster.controlplane import ControlPlane, free_port
from tests.support import REPO
from tests.support.deploy import CHART, Helm, http_status, service_account_kubeconfig, spawn_controller
from tests.support.kube import create_job, get_job, job_pods
from tests.support.manifests import PLAYED_SCHEDULER, training_job
from tests.support.poll import wait_for

pytestmark = pytest.mark.timeout(300)
RBAC = "rbac.authorization.k8s.io"


@dataclass
class Tenancy:
    admin: client.ApiClient
    plane: ControlPlane
    release: str  # also the release namespace
    a: str  # watched, Pod Security "restricted"
    b: str  # watched
    c: str  # not watched
    args: list[str]  # the installed Deployment's container args
    tmp: Path

    @property
    def controller_user(self) -> str:
        return f"system:serviceaccount:{self.release}:{self.release}-respawn"

    def as_user(self, name: str) -> client.ApiClient:
        path = self.plane.write_kubeconfig(self.tmp / f"{name}.kubeconfig", user=name)
        return config.new_client_from_config(config_file=str(path))

    def as_controller(self) -> tuple[client.ApiClient, Path]:
        path = service_account_kubeconfig(
            self.plane,
            self.admin,
            self.release,
            f"{self.release}-respawn",
            self.tmp / "controller.kubeconfig",
        )
        return config.new_client_from_config(config_file=str(path)), path


def _namespace(admin: client.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )


@pytest.fixture(scope="module")
def tenancy(
    helm: Helm, kubeconfig: Path, api_client: client.ApiClient, control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tenancy]:  # fmt: skip
    suffix = uuid.uuid4().hex[:6]
    release, a, b, c = (f"{n}-{suffix}" for n in ("tenancy", "team-a", "team-b", "team-c"))
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    for ns, labels in ((release, None), (a, restricted), (b, None), (c, None)):
        _namespace(api_client, ns, labels)
    result = helm(
        "install", release, str(CHART), "--kubeconfig", str(kubeconfig), "--namespace", release,
        "--set", "crds.enabled=false", "--set", f"controller.watchNamespaces={{{a},{b}}}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(f"{release}-respawn", release)
    args = list(deployment.spec.template.spec.containers[0].args)
    found = Tenancy(api_client, control_plane, release, a, b, c, args, tmp_path_factory.mktemp("tenancy"))
    probe = client.CustomObjectsApi(found.as_user("probe"))
    wait_for(  # the API server loads new policies asynchronously
        "the TrainingJob policy to apply",
        lambda: refused(lambda: probe.create_namespaced_custom_object(
            "training.respawn.dev", "v1alpha1", c, "trainingjobs", job("probe"), dry_run="All"
        )),
    )  # fmt: skip
    controller_core = client.CoreV1Api(found.as_controller()[0])
    unowned = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    wait_for(
        "the pod policy to apply",
        lambda: (
            "ValidatingAdmissionPolicy"
            in (refused(lambda: controller_core.create_namespaced_pod(b, unowned, dry_run="All")) or "")
        ),
    )
    yield found
    helm("uninstall", release, "--kubeconfig", str(kubeconfig), "--namespace", release)
    for ns in (release, a, b, c):
        client.CoreV1Api(api_client).delete_namespace(ns)


def grant(admin: client.ApiClient, namespace: str, user: str, rules: list[dict[str, Any]]) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": user}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": user},
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": user},
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": user}],
        },
    )


CREATE_JOBS = {"apiGroups": ["training.respawn.dev"], "resources": ["trainingjobs"], "verbs": ["create"]}
CREATE_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}


def refused(create: Callable[[], Any]) -> str | None:
    """The API server's message if `create` is refused (403 or 422); None if it succeeds."""
    try:
        create()
    except ApiException as exc:
        if exc.status not in (403, 422):
            raise
        return str(json.loads(exc.body)["message"])
    return None


def refusal(create: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        create()
    assert refused.value.status in (403, 422), refused.value.body
    return str(json.loads(refused.value.body)["message"])


def job(name: str, **spec: Any) -> dict[str, Any]:
    return training_job(name, replicas=1, pod={"schedulerName": PLAYED_SCHEDULER}, spec=spec)


# -- item 1: a TrainingJob grants no more than its author has ----------------------------------


def test_an_author_who_may_not_create_pods_may_not_create_a_training_job(tenancy: Tenancy) -> None:
    grant(tenancy.admin, tenancy.b, "alice", [CREATE_JOBS])
    alice = tenancy.as_user("alice")
    message = refusal(lambda: create_job(alice, tenancy.b, job("nopods")))
    assert "ValidatingAdmissionPolicy" in message and "respawn-trainingjob-author" in message
    assert f"alice may not create pods in namespace {tenancy.b}" in message


def test_a_template_may_name_only_a_service_account_its_author_may_use(tenancy: Tenancy) -> None:
    ns = tenancy.b
    for account in ("cluster-admin-ish", "trainer"):
        client.CoreV1Api(tenancy.admin).create_namespaced_service_account(ns, {"metadata": {"name": account}})
    use_trainer = {
        "apiGroups": [""],
        "resources": ["serviceaccounts"],
        "verbs": ["use"],
        "resourceNames": ["trainer"],
    }
    grant(tenancy.admin, ns, "bob", [CREATE_JOBS, CREATE_PODS, use_trainer])
    bob = tenancy.as_user("bob")
    body = job("privileged-sa")
    body["spec"]["template"]["spec"]["serviceAccountName"] = "cluster-admin-ish"
    message = refusal(lambda: create_job(bob, ns, body))
    assert f"bob may not use ServiceAccount {ns}/cluster-admin-ish" in message
    del body["spec"]["template"]["spec"]["serviceAccountName"]
    body["spec"]["template"]["spec"]["serviceAccount"] = "cluster-admin-ish"  # the deprecated field too
    assert "may not use ServiceAccount" in refusal(lambda: create_job(bob, ns, body))
    allowed = job("own-sa")
    allowed["spec"]["template"]["spec"]["serviceAccountName"] = "trainer"
    create_job(bob, ns, allowed)
    create_job(bob, ns, job("no-sa"))  # runs as its own respawn-no-sa


# -- item 2: a job's files lie under its namespace --------------------------------------------


def test_an_output_directory_in_another_namespace_is_refused(tenancy: Tenancy) -> None:
    grant(tenancy.admin, tenancy.a, "carol", [CREATE_JOBS, CREATE_PODS])
    carol = tenancy.as_user("carol")
    message = refusal(lambda: create_job(carol, tenancy.a, job("steal", outputDir=f"{tenancy.b}/llm")))
    assert (
        f"spec.outputDir {tenancy.b}/llm must lie under the job namespace directory {tenancy.a}/" in message
    )
    create_job(carol, tenancy.a, job("mine", outputDir=f"{tenancy.a}/runs/mine"))


# -- item 3: what the controller's identity may create ------------------------------------------


def owned_pod(namespace: str, **spec: Any) -> dict[str, Any]:
    owner = {
        "apiVersion": "training.respawn.dev/v1alpha1", "kind": "TrainingJob", "name": "x",
        "uid": str(uuid.uuid4()), "controller": True,
    }  # fmt: skip
    container = {"name": "c", "image": "i", **spec.pop("container", {})}
    return {
        "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}", "namespace": namespace, "ownerReferences": [owner]},
        "spec": {"schedulerName": PLAYED_SCHEDULER, "containers": [container], **spec},
    }


def test_the_controller_identity_creates_only_training_job_pods_where_it_watches(tenancy: Tenancy) -> None:
    api, _ = tenancy.as_controller()
    core, ns = client.CoreV1Api(api), tenancy.b
    unowned = owned_pod(ns)
    del unowned["metadata"]["ownerReferences"]
    assert "only pods a TrainingJob controls" in refusal(lambda: core.create_namespaced_pod(ns, unowned))
    for spec, words in (
        ({"hostNetwork": True}, "host's network, PID or IPC"),
        ({"hostPID": True}, "host's network, PID or IPC"),
        ({"container": {"securityContext": {"privileged": True}}}, "privileged containers"),
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath volumes"),
    ):
        body = owned_pod(ns, **spec)
        assert words in refusal(lambda body=body: core.create_namespaced_pod(ns, body))  # type: ignore[misc]
    for elsewhere in ("kube-system", tenancy.c):  # RBAC: no Role there
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_pod(elsewhere, owned_pod(elsewhere))
        assert denied.value.status == 403
    core.create_namespaced_pod(ns, owned_pod(ns))  # a TrainingJob's plain worker is fine
    api.close()


def test_cluster_wide_the_controller_identity_never_creates_pods_in_kube_system(
    helm_release: Callable[..., Any], api_client: client.ApiClient, control_plane: ControlPlane,
    namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    assert helm_release(namespace, "--set", "crds.enabled=false").returncode == 0
    name = namespace if "respawn" in namespace else f"{namespace}-respawn"
    path = service_account_kubeconfig(control_plane, api_client, namespace, name, tmp_path / "sa.kubeconfig")
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))
    try:  # as in a real cluster (here no controller creates it), so only the policy can refuse
        client.CoreV1Api(api_client).create_namespaced_service_account(
            "kube-system", {"metadata": {"name": "default"}}
        )
    except ApiException as exc:
        assert exc.status == 409

    def refusal_now() -> str:
        pod = owned_pod("kube-system")
        return refused(lambda: core.create_namespaced_pod("kube-system", pod, dry_run="All")) or ""

    message = wait_for(
        "the policy to apply", lambda: "ValidatingAdmissionPolicy" in (m := refusal_now()) and m
    )
    assert "never creates pods in namespace kube-system" in message


# -- the controller, with its own token -----------------------------------------------------------


@pytest.fixture(scope="module")
def controller(tenancy: Tenancy) -> Iterator[subprocess.Popen[bytes]]:
    _, kubeconfig = tenancy.as_controller()
    port, log = free_port(), tenancy.tmp / "controller.log"
    overrides = [f"--health-port={port}", "--health-host=127.0.0.1"]
    process = spawn_controller(kubeconfig, [*tenancy.args, *overrides], log, pod_namespace=tenancy.release)
    wait_for("/readyz", lambda: http_status(port, "/readyz") == 200 or process.poll() is not None, timeout=60)
    assert process.poll() is None, log.read_text()
    yield process
    process.kill()
    process.wait(timeout=30)


def conditions(api: client.ApiClient, ns: str, name: str) -> dict[str, dict[str, Any]]:
    found = (get_job(api, ns, name).get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in found}


def test_the_controller_runs_jobs_in_both_watched_namespaces_and_ignores_a_third(
    tenancy: Tenancy, controller: subprocess.Popen[bytes]
) -> None:
    assert f"--namespace={tenancy.a},{tenancy.b}" in tenancy.args
    for ns in (tenancy.b, tenancy.c):
        create_job(tenancy.admin, ns, job("where"))
    pod = wait_for("a pod in the second namespace", lambda: job_pods(tenancy.admin, tenancy.b, "where"))[0]
    mounts = [m for c in pod.spec.containers for m in c.volume_mounts or [] if m.name == "respawn-shared"]
    assert mounts == []  # no sharedVolume: nothing mounted
    wait_for("the controller to settle", lambda: get_job(tenancy.admin, tenancy.b, "where").get("status"))
    assert job_pods(tenancy.admin, tenancy.c, "where") == []
    assert not get_job(tenancy.admin, tenancy.c, "where").get("status"), "an unwatched job was reconciled"


def test_under_restricted_pod_security_the_samples_run_and_a_privileged_template_is_named(
    tenancy: Tenancy, controller: subprocess.Popen[bytes]
) -> None:
    ns, admin = tenancy.a, tenancy.admin
    sample = [d for d in yaml.safe_load_all((REPO / "deploy/samples/two-workers.yaml").read_text()) if d]
    apply_sample(admin, ns, sample)
    pods = wait_for(
        "the sample's pods",
        lambda: len(job_pods(admin, ns, "two-workers")) == 2 and job_pods(admin, ns, "two-workers"),
    )
    shared = [m for m in pods[0].spec.containers[0].volume_mounts if m.name == "respawn-shared"]
    assert [(m.mount_path, m.sub_path) for m in shared] == [
        (f"/mnt/shared/{ns}/two-workers", f"{ns}/two-workers")
    ]

    lax = job("lax")
    lax["spec"]["securityDefaults"] = False  # no securityContext at all: Pod Security refuses the pods
    create_job(admin, ns, lax)
    lax = wait_for("a condition", lambda: conditions(admin, ns, "lax").get("ReconcileError"))
    assert lax["reason"] == "FailedCreate" and 'violates PodSecurity "restricted:latest"' in lax["message"]
    for where, words in ((ns, "privileged"), (tenancy.b, "may not run privileged containers")):
        privileged = job("root")
        privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        create_job(admin, where, privileged)  # the admin may: the controller may not create its pods
        root = wait_for("a condition", lambda w=where: conditions(admin, w, "root").get("ReconcileError"))  # type: ignore[misc]
        assert root["reason"] == "FailedCreate" and words in root["message"], root


def apply_sample(admin: client.ApiClient, ns: str, documents: list[dict[str, Any]]) -> None:
    """Create a sample's ConfigMap, claim and TrainingJob in `ns`."""
    for doc in documents:
        if doc["kind"] == "TrainingJob":
            create_job(admin, ns, doc)
        elif doc["kind"] == "ConfigMap":
            client.CoreV1Api(admin).create_namespaced_config_map(ns, doc)
        elif doc["kind"] == "PersistentVolumeClaim":
            client.CoreV1Api(admin).create_namespaced_persistent_volume_claim(ns, doc)
