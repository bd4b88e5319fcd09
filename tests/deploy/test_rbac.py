"""The controller works with exactly the chart's RBAC, and that RBAC grants nothing more.

The chart is installed into the test API server; the controller then runs as a process with a
token of the chart's ServiceAccount (TokenRequest API) and the arguments of the installed
Deployment, while the test plays kubelet. Any permission the chart lacks shows up as a 403:
in the controller's log, as a readiness that never comes, or as a job that never restarts.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from devcluster.controlplane import ControlPlane, free_port
from tests.support.deploy import (
    allowed,
    http_get,
    http_status,
    lease_holder,
    may_get_url,
    metrics_reader,
    service_account_kubeconfig,
    spawn_controller,
)
from tests.support.kube import create_job, get_job, job_pods, run_attempt, set_phase
from tests.support.manifests import played_job
from tests.support.poll import wait_for

pytestmark = pytest.mark.timeout(300)

GROUP = "training.respawn.dev"


@dataclass(frozen=True)
class Installed:
    release: str
    fullname: str  # the prefix of the chart's objects
    namespace: str  # the release's, where the ServiceAccount and the Lease live
    service_account: str
    watch_namespace: str | None
    args: list[str]  # the installed Deployment's container args

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture(params=["cluster-wide", "one-namespace"])
def installed(
    request: pytest.FixtureRequest,
    helm_release: Callable[..., Any],
    api_client: client.ApiClient,
    namespace: str,
) -> Installed:
    """The chart with default values (the CRD is the session's), or watching only `namespace`."""
    extra = (
        ["--set", f"controller.watchNamespaces={{{namespace}}}"] if request.param == "one-namespace" else []
    )
    result = helm_release(namespace, "--set", "crds.enabled=false", *extra)
    assert result.returncode == 0, result.stderr
    name = namespace if "respawn" in namespace else f"{namespace}-respawn"
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    pod = deployment.spec.template.spec
    return Installed(
        release=namespace,
        fullname=name,
        namespace=namespace,
        service_account=pod.service_account_name,
        watch_namespace=namespace if extra else None,
        args=list(pod.containers[0].args),
    )


def token_kubeconfig(
    control_plane: ControlPlane, api_client: client.ApiClient, installed: Installed, path: Path
) -> Path:
    return service_account_kubeconfig(
        control_plane, api_client, installed.namespace, installed.service_account, path
    )


@pytest.fixture
def as_controller(
    control_plane: ControlPlane, api_client: client.ApiClient, installed: Installed, tmp_path: Path
) -> Iterator[client.ApiClient]:
    kubeconfig = token_kubeconfig(control_plane, api_client, installed, tmp_path / "controller.kubeconfig")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


# -- what the identity may do ------------------------------------------------------------------


def can(
    api_client: client.ApiClient, user: str, verb: str, resource: str, namespace: str = "", name: str = ""
) -> bool:
    """`resource` as `plural[.group][/subresource]`."""
    kind, slash, subresource = resource.partition("/")
    plural, _, group = kind.partition(".")
    return allowed(api_client, user, verb, group, plural + slash + subresource, namespace, name)


JOB_VERBS = [
    ("list", "trainingjobs.training.respawn.dev"),
    ("watch", "trainingjobs.training.respawn.dev"),
    ("delete", "trainingjobs.training.respawn.dev"),  # a finished job past ttlSecondsAfterFinished
    ("update", "trainingjobs.training.respawn.dev/status"),
    ("update", "trainingjobs.training.respawn.dev/finalizers"),
    ("list", "pods"),
    ("watch", "pods"),
    ("create", "pods"),
    ("get", "pods"),  # only after a create answered 409: the job's own pod, or a foreign one?
    ("delete", "pods"),
    ("patch", "pods"),  # never called: held so the controller may grant the workers' report Role
    ("create", "services"),
    ("get", "services"),
    ("create", "events"),
    ("create", "serviceaccounts"),
    ("get", "serviceaccounts"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("get", "roles.rbac.authorization.k8s.io"),
    ("update", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("get", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "podgroups.scheduling.volcano.sh"),
    ("get", "podgroups.scheduling.volcano.sh"),
    ("update", "podgroups.scheduling.volcano.sh"),
    ("create", "podgroups.scheduling.x-k8s.io"),
    ("get", "podgroups.scheduling.x-k8s.io"),
    ("update", "podgroups.scheduling.x-k8s.io"),
]
NEVER = [
    # Reads come from informer caches (tests/deploy/test_rbac_rules.py shows what needs get).
    ("get", "trainingjobs.training.respawn.dev"),
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "trainingjobs.training.respawn.dev"),
    ("update", "trainingjobs.training.respawn.dev"),
    ("patch", "trainingjobs.training.respawn.dev"),
    ("patch", "trainingjobs.training.respawn.dev/status"),
    ("update", "pods"),
    ("deletecollection", "pods"),
    ("create", "pods/exec"),
    ("create", "pods/eviction"),
    ("update", "pods/status"),
    ("delete", "services"),
    ("update", "services"),
    ("update", "events"),
    ("delete", "events"),
    ("create", "configmaps"),
    ("update", "configmaps"),
    ("create", "serviceaccounts/token"),
    ("delete", "serviceaccounts"),
    ("update", "serviceaccounts"),
    ("delete", "roles.rbac.authorization.k8s.io"),
    ("escalate", "roles.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"),
    ("update", "rolebindings.rbac.authorization.k8s.io"),
    ("delete", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("delete", "leases.coordination.k8s.io"),
    ("list", "leases.coordination.k8s.io"),
]


def test_identity_gets_exactly_the_chart_permissions(
    api_client: client.ApiClient, installed: Installed
) -> None:
    ns, user = installed.namespace, installed.user
    unexpected = [(v, r) for v, r in JOB_VERBS if not can(api_client, user, v, r, ns)]
    assert unexpected == [], "missing in the watched namespace"
    other = "default"
    reach = [(v, r) for v, r in JOB_VERBS if can(api_client, user, v, r, other)]
    assert reach == ([] if installed.watch_namespace else JOB_VERBS), "job permissions outside the watch"
    assert [(v, r) for v, r in NEVER if can(api_client, user, v, r, ns)] == []
    assert [(v, r) for v, r in NEVER if can(api_client, user, v, r, "kube-system")] == []

    assert can(api_client, user, "list", "nodes") and can(api_client, user, "watch", "nodes")
    assert not any(can(api_client, user, v, "nodes", name="n1") for v in ("get", "update", "patch", "delete"))
    assert can(api_client, user, "list", "configmaps", "kube-system")
    assert can(api_client, user, "watch", "configmaps", "kube-system")
    assert not can(api_client, user, "get", "configmaps", "kube-system", "kubeadm-config")
    assert not can(api_client, user, "list", "configmaps", other)

    # /metrics: the controller asks the API server about a scraper's token (system:auth-delegator),
    # and may not read metrics itself.
    assert can(api_client, user, "create", "tokenreviews.authentication.k8s.io")
    assert can(api_client, user, "create", "subjectaccessreviews.authorization.k8s.io")
    assert not may_get_url(api_client, user, "/metrics")

    lease = "leases.coordination.k8s.io"
    assert can(api_client, user, "create", lease, ns)
    for verb in ("get", "update"):
        assert can(api_client, user, verb, lease, ns, "respawn-controller")
        assert not can(api_client, user, verb, lease, ns, "someone-elses-lease")
        assert not can(api_client, user, verb, lease, other, "respawn-controller")


def test_identity_cannot_read_secrets(
    api_client: client.ApiClient, as_controller: client.ApiClient, installed: Installed
) -> None:
    admin, ns = client.CoreV1Api(api_client), installed.namespace
    admin.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="credentials"), string_data={"password": "x"})
    )
    core = client.CoreV1Api(as_controller)
    attempts: list[Callable[[], Any]] = [
        lambda: core.read_namespaced_secret("credentials", ns),
        lambda: core.list_namespaced_secret(ns),
        lambda: core.list_namespaced_secret("kube-system"),
        lambda: core.list_secret_for_all_namespaces(),
    ]
    for attempt in attempts:
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status == 403
        assert installed.user in json.loads(refused.value.body)["message"]
    # The token itself is good: what the chart grants works with it.
    assert client.CoreV1Api(as_controller).list_namespaced_pod(ns).items == []


# -- the controller with that identity ---------------------------------------------------------


@pytest.fixture
def controller_process(
    control_plane: ControlPlane, api_client: client.ApiClient, installed: Installed, tmp_path: Path
) -> Iterator[Callable[[], tuple[subprocess.Popen[bytes], int, Path]]]:
    """Start `python -m controller` as the chart's ServiceAccount with the Deployment's args."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], int, Path]:
        kubeconfig = token_kubeconfig(control_plane, api_client, installed, tmp_path / "sa.kubeconfig")
        port, log = free_port(), tmp_path / "controller.log"
        # Only the listening address and the scope change: argparse keeps the last value, and
        # a cluster-wide controller here would also reconcile other tests' leftover jobs.
        overrides = [f"--health-port={port}", "--health-host=127.0.0.1", f"--namespace={installed.namespace}"]
        process = spawn_controller(
            kubeconfig, [*installed.args, *overrides], log, pod_namespace=installed.namespace
        )
        started.append(process)
        return process, port, log

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_controller_drives_a_restart_with_exactly_the_chart_rbac(
    api_client: client.ApiClient,
    installed: Installed,
    controller_process: Callable[[], tuple[subprocess.Popen[bytes], int, Path]],
) -> None:
    ns = installed.namespace
    assert "--lease-name=respawn-controller" in installed.args and "--no-device-faults" not in installed.args
    process, port, log = controller_process()
    # Ready = every informer listed, kube-system ConfigMaps and Nodes included.
    wait_for("/readyz", lambda: http_status(port, "/readyz") == 200 or process.poll() is not None, timeout=60)
    assert process.poll() is None, log.read_text()
    lease = wait_for(
        "the Lease",
        lambda: lease_holder(api_client, ns),
        timeout=30,
    )
    assert lease == "respawn-test-0"
    # /metrics as the chart serves it: to Prometheus's token (bound to the chart's reader role) only.
    assert http_status(port, "/metrics") == 401
    with metrics_reader(api_client, ns, cluster_role=f"{installed.fullname}-metrics-reader") as token:
        status, body = http_get(port, "/metrics", token=token)
        assert status == 200 and "respawn_leader 1.0" in body

    create_job(api_client, ns, played_job("rbac"))
    run_attempt(api_client, ns, "rbac", 0)
    assert client.CoreV1Api(api_client).read_namespaced_service("rbac", ns).spec.cluster_ip == "None"
    set_phase(api_client, ns, "rbac-a0-1", "Failed", exit_code=1)
    run_attempt(api_client, ns, "rbac", 1)
    assert job_pods(api_client, ns, "rbac", 0) == []
    status = get_job(api_client, ns, "rbac")["status"]
    assert (status["attempt"], status["restarts"], status["lastFailure"]["pod"]) == (1, 1, "rbac-a0-1")
    events = {e.reason for e in client.CoreV1Api(api_client).list_namespaced_event(ns).items}
    assert {"Restarting", "Running"} <= events

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()
    output = log.read_text()
    # A refusal is logged with the API's reason; "403" alone also matches a timestamp's milliseconds.
    assert "Forbidden" not in output and "(403)" not in output, output
    wait_for("the Lease released", lambda: not lease_holder(api_client, ns), timeout=10)
