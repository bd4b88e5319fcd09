"""Every verb the chart grants is needed: take one away and a named feature breaks, visibly.

The chart is installed once into an API server of this module's own that also runs the
OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and other hardened
clusters), the only setting in which `trainingjobs/finalizers` matters. For each case the
chart's ClusterRole and Roles are copied with one verb removed, bound to a fresh ServiceAccount,
and `python -m controller` runs with the installed Deployment's arguments as that account,
watching the case's namespace and holding its Lease there. The test plays kubelet (and
MindCluster's device plugin); `FEATURES` drive what the controller is for, and `CASES` says
which one breaks without each verb, how, and which refusal in the controller's log shows why.
The same features all work with the full rules (`test_full_rules_every_feature_works`).

A breakage with a refusal to point at (a 403 on a write, a Lease, a list) ends a step at once;
a breakage that is an absence (a watch refused, so a change is never seen) is observed for
`PATIENCE`, several times what the full-rules controller needs to react.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from devcluster.controlplane import ControlPlane, free_port
from devcluster.crds import apply_crds
from respawn_protocol.crd import GROUP, PLURAL, VERSION
from tests.support import REPO
from tests.support.deploy import (
    CHART,
    Helm,
    allowed,
    http_get,
    lease_holder,
    metrics_reader,
    service_account_kubeconfig,
    spawn_controller,
)
from tests.support.kube import create_job, get_job, job_pods, set_phase
from tests.support.manifests import played_job
from tests.support.poll import DEADLINE, poll, wait_for

pytestmark = pytest.mark.timeout(600)

RELEASE_NAMESPACE = "respawn-system"
PATIENCE = 5.0  # for what must not happen; a full-rules controller reacts within a second
# Short Lease timings (lease > renew deadline > 1.2 x retry), so a failing renewal shows in seconds.
LEASE_TIMINGS = ["--lease-duration=4", "--renew-deadline=3", "--retry-period=1"]

# What breaks: the first step of a feature that does not happen.
NEVER_READY = "never ready: an informer cannot list, so nothing is reconciled"
NEVER_LEADS = "never acquires its Lease, so nothing is reconciled"
LOSES_LEASE = "cannot renew its Lease: loses leadership and exits"
NO_PODS = "a new job never gets pods"
NO_STATUS = "the job's status is never written"
NOT_RUNNING = "the job never shows Running: pod changes are not seen"
NO_RESTART = "a failed attempt is never replaced"
NO_EVENTS = "no events are recorded"
NOT_EXPIRED = "a finished job is never deleted after its ttlSecondsAfterFinished"
NO_GANG = "a gang-scheduled job never gets its PodGroup, so never its pods"
FOREIGN_GROUP = "a foreign PodGroup holding a job's name is not named on the job"
STALE_GROUP = "a resized gang's PodGroup keeps the old size: the next attempt is never created"
VOLCANO = {"podGroup": "Volcano"}
COSCHEDULING = {"podGroup": "Coscheduling"}
NODE_LOSS_MISSED = "a lost node goes unnoticed: no restart, node not avoided"
DEVICE_FAULT_MISSED = "a device fault goes unnoticed: no restart, node not avoided"
FOREIGN_UNNAMED = "a foreign Service or pod holding a job's name is not named on the job"
NO_METRICS = "/metrics is served to nobody: the controller cannot check a scraper's token (500)"


# -- the chart's rules, verb by verb ------------------------------------------------------------

Rules = dict[str, list[dict[str, Any]]]  # role label -> rules


def verb_id(role: str, group: str, resource: str, verb: str) -> str:
    """`ClusterRole pods:create`, `Role leases.coordination.k8s.io:get` ..."""
    return f"{role.split()[0]} {resource}{'.' + group if group else ''}:{verb}"


def each_verb(rules: Rules) -> list[str]:
    return [
        verb_id(role, group, resource, verb)
        for role, role_rules in rules.items()
        for rule in role_rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def without(rules: Rules, removed: str | None) -> Rules:
    """`rules` with one verb taken out, split into one rule per group and resource."""
    reduced: Rules = {}
    for role, role_rules in rules.items():
        reduced[role] = []
        for rule in role_rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    verbs = [v for v in rule["verbs"] if verb_id(role, group, resource, v) != removed]
                    if verbs:
                        split = {"apiGroups": [group], "resources": [resource], "verbs": verbs}
                        reduced[role].append({**rule, **split})
    return reduced


@dataclass(frozen=True)
class Chart:
    rules: Rules  # "ClusterRole", "ClusterRole system:auth-delegator", "Role leader-election", ...
    args: list[str]  # the Deployment's container args
    lease_name: str


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(
        workdir=tmp_path_factory.mktemp("rbac-rules"),
        apiserver_args=("--enable-admission-plugins=OwnerReferencesPermissionEnforcement",),
    ) as cp:
        yield cp


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
    apply_crds(api, REPO / "deploy")
    apply_crds(api, REPO / "tests" / "support" / "crds")  # PodGroups, for gang scheduling
    yield api
    api.close()


@pytest.fixture(scope="module")
def chart(helm: Helm, plane: ControlPlane, admin: client.ApiClient) -> Chart:
    """The chart with default values, installed once; its RBAC read back from the API server."""
    result = helm(
        "install", "respawn", str(CHART), "--kubeconfig", str(plane.kubeconfig_path),
        "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--set", "crds.enabled=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rbac = client.RbacAuthorizationV1Api(admin)

    def rules(role: Any) -> list[dict[str, Any]]:
        return list(admin.sanitize_for_serialization(role.rules))

    pod = client.AppsV1Api(admin).read_namespaced_deployment("respawn", RELEASE_NAMESPACE).spec.template.spec
    args = list(pod.containers[0].args)
    delegator = rbac.read_cluster_role_binding("respawn-auth-delegator").role_ref.name
    return Chart(
        rules={
            "ClusterRole": rules(rbac.read_cluster_role("respawn")),
            # Bound by the chart, not written by it: the built-in role's rules, as this API server has them.
            f"ClusterRole {delegator}": rules(rbac.read_cluster_role(delegator)),
            "Role leader-election": rules(
                rbac.read_namespaced_role("respawn-leader-election", RELEASE_NAMESPACE)
            ),
            "Role device-faults": rules(rbac.read_namespaced_role("respawn-device-faults", "kube-system")),
        },
        args=args,
        lease_name=next(a.split("=", 1)[1] for a in args if a.startswith("--lease-name=")),
    )


# -- one controller with given rules ------------------------------------------------------------


def grant(admin: client.ApiClient, namespace: str, rules: Rules) -> str:
    """Bind `rules` to a new ServiceAccount `namespace/respawn` where the chart binds them, with
    the Lease Role in `namespace`; wait until the authorizer applies them. Returns the user."""
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    for account in ("default", "respawn"):  # pods need `default` (no ServiceAccount controller here)
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
        )
    subject = [{"kind": "ServiceAccount", "name": "respawn", "namespace": namespace}]
    for label in (label for label in rules if label.startswith("ClusterRole")):
        name = "-".join([namespace, *label.replace(":", "-").split()[1:]])
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules[label]})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject,
            }
        )
    for label, where in (("Role leader-election", namespace), ("Role device-faults", "kube-system")):
        rbac.create_namespaced_role(where, {"metadata": {"name": namespace}, "rules": rules[label]})
        rbac.create_namespaced_role_binding(
            where,
            {
                "metadata": {"name": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": namespace},
                "subjects": subject,
            },
        )
    user = f"system:serviceaccount:{namespace}:respawn"
    checks = access_checks(rules, user, namespace)
    wait_for("the authorizer to apply the rules", lambda: all(allowed(admin, *c) for c in checks.values()))
    return user


def access_checks(rules: Rules, user: str, namespace: str) -> dict[str, tuple[str, ...]]:
    """For each verb in `rules`, the SubjectAccessReview arguments that it allows."""
    scope = {"Role leader-election": namespace, "Role device-faults": "kube-system"}
    return {
        verb_id(label, group, resource, verb): (
            user,
            verb,
            group,
            resource,
            scope.get(label, namespace),
            name,
        )
        for label, role_rules in rules.items()
        for rule in role_rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [""]
    }


@dataclass
class Run:
    """A running controller, and what the test can see of it."""

    admin: client.ApiClient
    namespace: str
    nodes: tuple[str, str]  # one to lose, one to report a device fault on
    lease_name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    expected: str | None  # the breakage this run expects: only that absence is given PATIENCE

    def step(self, what: str, done: Callable[[], Any], refused: Callable[[], Any] = lambda: False) -> bool:
        """Wait for `done`; give up early once `refused` (a refusal in the log) or the process ended."""
        # What happened before the refusal was logged counts: `poll` asks `done` once more.
        return bool(
            poll(
                done,
                PATIENCE if what == self.expected else DEADLINE,
                interval=0.05,
                give_up=lambda: refused() or self.process.poll() is not None,
            )
        )

    # -- the log: one JSON object per line; quotes and escapes dropped so refusals read plainly

    def log_size(self) -> int:
        return self.log.stat().st_size

    def records(self, since: int = 0) -> list[str]:
        with self.log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                out.append(line)
                continue
            text = " ".join(f"{k}={v}" for k, v in record.items()) if isinstance(record, dict) else line
            out.append(text.replace("\\", "").replace('"', ""))
        return out

    def refusals(self, since: int = 0) -> list[str]:
        return [r for r in self.records(since) if re.search(r"HTTP 403|\(403\)|[Ff]orbidden", r)]

    def reconcile_refused(self, since: int) -> bool:
        return any(re.search(r"msg=reconcile (failed|blocked)", r) for r in self.refusals(since))

    def refused_informers(self) -> set[str]:
        return {m.group(1) for r in self.refusals() if (m := re.search(r"informer=([\w-]+)", r))}

    # -- the API server's view

    def ready(self) -> tuple[bool, str]:
        status, body = http_get(self.port, "/readyz")
        return status == 200, body

    def leader(self) -> str | None:
        return lease_holder(self.admin, self.namespace, self.lease_name)

    def status(self, job: str) -> dict[str, Any]:
        return dict(get_job(self.admin, self.namespace, job).get("status") or {})


@pytest.fixture
def controller(
    plane: ControlPlane, admin: client.ApiClient, chart: Chart, tmp_path: Path
) -> Iterator[Callable[[str | None, str | None], Run]]:
    """Start the controller with the chart's rules minus one verb (None: the full rules)."""
    runs: list[Run] = []

    def start(removed: str | None, expected: str | None) -> Run:
        slug = re.sub(r"[^a-z0-9]+", "-", (removed or "full").lower()).strip("-")[:40]
        namespace = f"{slug}-{uuid.uuid4().hex[:6]}"
        user = grant(admin, namespace, without(chart.rules, removed))
        if removed is not None:  # and the copy really lacks it
            assert not allowed(admin, *access_checks(chart.rules, user, namespace)[removed])
        nodes = (f"{namespace}-lost", f"{namespace}-faulty")
        for node in nodes:  # before the controller starts: its node cache must know them
            create_node(admin, node)
        kubeconfig = service_account_kubeconfig(
            plane, admin, namespace, "respawn", tmp_path / "sa.kubeconfig"
        )
        port, log = free_port(), tmp_path / "controller.log"
        overrides = [
            f"--health-port={port}",
            "--health-host=127.0.0.1",
            f"--namespace={namespace}",  # cases share the API server; each watches its own
            f"--lease-namespace={namespace}",
            *LEASE_TIMINGS,
        ]
        process = spawn_controller(kubeconfig, [*chart.args, *overrides], log, pod_namespace=namespace)
        run = Run(admin, namespace, nodes, chart.lease_name, process, port, log, expected)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait(timeout=30)


def create_node(admin: client.ApiClient, name: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ready = {"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now}
    client.CoreV1Api(admin).create_node({"metadata": {"name": name}, "status": {"conditions": [ready]}})


# -- the features ---------------------------------------------------------------------------------


def starts(run: Run) -> str | None:
    """Every informer lists (readiness), then the Lease is acquired."""

    def stuck() -> bool:
        _, body = run.ready()
        unsynced = any(f"[-]informer-{name} " in body for name in run.refused_informers())
        return unsynced or any("attempt failed (403)" in r for r in run.refusals())

    if run.step("start", lambda: run.ready()[0] and run.leader(), stuck):
        return None
    return NEVER_LEADS if run.ready()[0] else NEVER_READY


def keeps_leadership(run: Run) -> str | None:
    """The leader renews its Lease."""
    if broken := starts(run):
        return broken
    leases = client.CoordinationV1Api(run.admin)
    first = leases.read_namespaced_lease(run.lease_name, run.namespace).spec.renew_time

    def renewed() -> bool:
        return bool(leases.read_namespaced_lease(run.lease_name, run.namespace).spec.renew_time != first)

    if run.step("renewal", renewed):
        return None
    assert run.process.wait(timeout=DEADLINE) == 1
    assert any("failed to renew lease" in r for r in run.records())
    return LOSES_LEASE


def runs_a_job(
    run: Run, name: str = "job", node: str | None = None, spec: dict[str, Any] | None = None, **policy: Any
) -> str | None:
    """A job created now gets its Service and pods; when they run, its status says Running."""
    if broken := starts(run):
        return broken
    admin, ns = run.admin, run.namespace
    mark = run.log_size()
    create_job(admin, ns, played_job(name, spec=spec, **policy))
    if not run.step(
        NO_PODS, lambda: len(job_pods(admin, ns, name, 0)) == 2, lambda: run.reconcile_refused(mark)
    ):
        return NO_PODS
    assert client.CoreV1Api(admin).read_namespaced_service(name, ns).spec.cluster_ip == "None"
    mark = run.log_size()
    for pod in job_pods(admin, ns, name, 0):
        if node is not None:  # as the scheduler would
            target = client.V1ObjectReference(kind="Node", name=node)
            body = client.V1Binding(metadata=client.V1ObjectMeta(name=pod.metadata.name), target=target)
            client.CoreV1Api(admin).create_namespaced_pod_binding(
                pod.metadata.name, ns, body, _preload_content=False
            )
        set_phase(admin, ns, pod.metadata.name, "Running")
    if run.step(
        NOT_RUNNING, lambda: run.status(name).get("phase") == "Running", lambda: run.reconcile_refused(mark)
    ):
        return None
    return NOT_RUNNING if run.status(name) else NO_STATUS


def restarts(run: Run) -> str | None:
    """A failed worker's attempt is deleted and a new one created."""
    if broken := runs_a_job(run, "restart"):
        return broken
    admin, ns, mark = run.admin, run.namespace, run.log_size()
    set_phase(admin, ns, "restart-a0-1", "Failed", exit_code=1)

    def replaced() -> bool:
        return len(job_pods(admin, ns, "restart", 1)) == 2 and not job_pods(admin, ns, "restart", 0)

    return None if run.step(NO_RESTART, replaced, lambda: run.reconcile_refused(mark)) else NO_RESTART


def deletes_finished_jobs(run: Run) -> str | None:
    """A job that succeeded is deleted once its ttlSecondsAfterFinished has passed."""
    if broken := runs_a_job(run, "expires", spec={"ttlSecondsAfterFinished": 0}):
        return broken
    admin, ns, mark = run.admin, run.namespace, run.log_size()
    for rank in (0, 1):
        set_phase(admin, ns, f"expires-a0-{rank}", "Succeeded", exit_code=0)

    def gone() -> bool:
        try:
            get_job(admin, ns, "expires")
        except client.ApiException as exc:
            return exc.status == 404
        return False

    return None if run.step(NOT_EXPIRED, gone, lambda: run.reconcile_refused(mark)) else NOT_EXPIRED


def _pod_group(run: Run, api: str, name: str) -> dict[str, Any] | None:
    group, version = api.split("/")
    try:
        return client.CustomObjectsApi(run.admin).get_namespaced_custom_object(
            group, version, run.namespace, "podgroups", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def gang_schedules(run: Run) -> str | None:
    """A job for Volcano, and one for the coscheduling plugin, get their PodGroup (minMember = the
    gang) before their pods; each pod is marked as a member."""
    for name, spec, api in (
        ("vc", VOLCANO, "scheduling.volcano.sh/v1beta1"),
        ("cs", COSCHEDULING, "scheduling.x-k8s.io/v1alpha1"),
    ):
        if broken := runs_a_job(run, name, spec=spec):
            return NO_GANG if broken == NO_PODS else broken
        group = _pod_group(run, api, name)
        assert group is not None and group["spec"]["minMember"] == 2, group
    pods = job_pods(run.admin, run.namespace, "vc", 0)
    assert all(p.metadata.annotations["scheduling.k8s.io/group-name"] == "vc" for p in pods)
    return None


def names_foreign_pod_groups(run: Run) -> str | None:
    """A PodGroup that holds a job's name but is not the job's is named on the job, left alone."""
    if broken := starts(run):
        return broken
    admin, ns, mark = run.admin, run.namespace, run.log_size()
    theirs = {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": {"name": "pg"}}
    client.CustomObjectsApi(admin).create_namespaced_custom_object(
        "scheduling.volcano.sh", "v1beta1", ns, "podgroups", {**theirs, "spec": {"minMember": 9}}
    )
    create_job(admin, ns, played_job("pg", spec=VOLCANO))

    def named() -> bool:
        conditions = run.status("pg").get("conditions") or []
        return any(c["type"] == "ReconcileError" and c["reason"] == "ForeignObject" for c in conditions)

    if not run.step(FOREIGN_GROUP, named, lambda: run.reconcile_refused(mark)):
        return FOREIGN_GROUP
    group = _pod_group(run, "scheduling.volcano.sh/v1beta1", "pg")
    assert group is not None and group["spec"]["minMember"] == 9, "a foreign PodGroup is left alone"
    return None


def resizes_pod_groups(run: Run) -> str | None:
    """A gang grown between attempts gets its PodGroup's minMember raised before its new pods."""
    for name, spec, api in (
        ("vcgrow", VOLCANO, "scheduling.volcano.sh/v1beta1"),
        ("csgrow", COSCHEDULING, "scheduling.x-k8s.io/v1alpha1"),
    ):
        if broken := runs_a_job(run, name, spec=spec) or _grows(run, name, api):
            return broken
    return None


def _grows(run: Run, name: str, api: str) -> str | None:
    admin, ns, mark = run.admin, run.namespace, run.log_size()
    client.CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"replicas": 3}}
    )
    set_phase(admin, ns, f"{name}-a0-1", "Failed", exit_code=1)

    def grown() -> bool:
        group = _pod_group(run, api, name)
        return (
            len(job_pods(admin, ns, name, 1)) == 3 and group is not None and group["spec"]["minMember"] == 3
        )

    return None if run.step(STALE_GROUP, grown, lambda: run.reconcile_refused(mark)) else STALE_GROUP


def records_events(run: Run) -> str | None:
    """What happens to a job is told in Events on it."""
    mark = run.log_size()
    if broken := runs_a_job(run, "events"):
        return broken
    core = client.CoreV1Api(run.admin)

    def reasons() -> set[str]:
        events = core.list_namespaced_event(run.namespace, field_selector="involvedObject.name=events").items
        return {e.reason for e in events}

    def refused() -> bool:
        return any("msg=event not recorded" in r for r in run.refusals(mark))

    return (
        None
        if run.step(NO_EVENTS, lambda: {"AttemptCreated", "Running"} <= reasons(), refused)
        else NO_EVENTS
    )


def avoids_lost_nodes(run: Run) -> str | None:
    """A worker's node going NotReady restarts the job and puts the node on its avoid list."""
    node = run.nodes[0]
    if broken := runs_a_job(run, "lost", node=node, nodeLostTimeoutSeconds=0):
        return broken
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lost = {"type": "Ready", "status": "False", "lastHeartbeatTime": long_ago, "lastTransitionTime": long_ago}
    client.CoreV1Api(run.admin).patch_node_status(node, {"status": {"conditions": [lost]}})
    if run.step(NODE_LOSS_MISSED, lambda: node in (run.status("lost").get("faultyNodes") or [])):
        return None
    return NODE_LOSS_MISSED


def avoids_faulty_devices(run: Run) -> str | None:
    """MindCluster reporting a faulty device on a worker's node restarts the job off that node."""
    node = run.nodes[1]
    if broken := runs_a_job(run, "fault", node=node):
        return broken
    document = {"DeviceInfo": {"DeviceList": {"huawei.com/Ascend910-Unhealthy": "Ascend910-0"}}}
    client.CoreV1Api(run.admin).create_namespaced_config_map(
        "kube-system",
        {
            "metadata": {"name": f"mindx-dl-deviceinfo-{node}"},
            "data": {"DeviceInfoCfg": json.dumps(document)},
        },
    )
    if run.step(DEVICE_FAULT_MISSED, lambda: node in (run.status("fault").get("faultyNodes") or [])):
        return None
    return DEVICE_FAULT_MISSED


def reports_foreign_objects(run: Run) -> str | None:
    """A Service, pod, ServiceAccount, Role or RoleBinding that holds a name the job needs but is
    not the job's is named on the job, and left alone; telling it from the job's own takes a read of
    the object that answered 409."""
    if broken := starts(run):
        return broken
    admin, ns, mark = run.admin, run.namespace, run.log_size()
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service(ns, {"metadata": {"name": "theirs"}, "spec": {"ports": [{"port": 80}]}})
    squatter = played_job("squat")["spec"]["template"]["spec"]
    core.create_namespaced_pod(ns, {"metadata": {"name": "squat-a0-1"}, "spec": squatter})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "respawn-acct"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "respawn-role"}, "rules": []})
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "respawn-role"}
    rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "respawn-bind"}, "roleRef": role_ref})
    for name in ("theirs", "squat", "acct", "role", "bind"):
        create_job(admin, ns, played_job(name))

        def named(job: str = name) -> bool:
            conditions = run.status(job).get("conditions") or []
            return any(c["type"] == "ReconcileError" and c["reason"] == "ForeignObject" for c in conditions)

        if not run.step(FOREIGN_UNNAMED, named, lambda: run.reconcile_refused(mark)):
            return FOREIGN_UNNAMED
    return None


def serves_metrics(run: Run) -> str | None:
    """Prometheus, with a token of an account bound to the chart's metrics reader ClusterRole,
    scrapes /metrics; the controller asks the API server who that is and whether it may."""
    mark = run.log_size()
    with metrics_reader(run.admin, run.namespace, cluster_role="respawn-metrics-reader") as token:

        def scraped() -> bool:
            status, body = http_get(run.port, "/metrics", token=token)
            return status == 200 and "respawn_workqueue_depth" in body

        def refused() -> bool:
            return any("msg=metrics request not reviewed" in r for r in run.refusals(mark))

        return None if run.step(NO_METRICS, scraped, refused) else NO_METRICS


FEATURES: dict[str, Callable[[Run], str | None]] = {
    f.__name__: f
    for f in (
        starts,
        keeps_leadership,
        runs_a_job,
        restarts,
        deletes_finished_jobs,
        gang_schedules,
        names_foreign_pod_groups,
        resizes_pod_groups,
        records_events,
        avoids_lost_nodes,
        avoids_faulty_devices,
        reports_foreign_objects,
        serves_metrics,
    )
}


@dataclass(frozen=True)
class Case:
    feature: str
    breaks: str
    refusal: str  # in the controller's log: what was refused


TJ = "trainingjobs.training.respawn.dev"
LEASES = "leases.coordination.k8s.io"
ROLES = "roles.rbac.authorization.k8s.io"
BINDINGS = "rolebindings.rbac.authorization.k8s.io"
VC_GROUPS = "podgroups.scheduling.volcano.sh"
CS_GROUPS = "podgroups.scheduling.x-k8s.io"
CASES: dict[str, Case] = {
    "ClusterRole nodes:list": Case("starts", NEVER_READY, "informer=nodes"),
    "ClusterRole nodes:watch": Case("avoids_lost_nodes", NODE_LOSS_MISSED, "informer=nodes"),
    f"ClusterRole {TJ}:list": Case("starts", NEVER_READY, "informer=trainingjobs"),
    f"ClusterRole {TJ}:watch": Case("runs_a_job", NO_PODS, "informer=trainingjobs"),
    f"ClusterRole {TJ}:delete": Case(
        "deletes_finished_jobs", NOT_EXPIRED, "cannot delete resource trainingjobs"
    ),
    "ClusterRole trainingjobs/status.training.respawn.dev:update": Case(
        "runs_a_job", NO_STATUS, "cannot update resource trainingjobs/status"
    ),
    "ClusterRole trainingjobs/finalizers.training.respawn.dev:update": Case(
        "runs_a_job", NO_PODS, "cannot set blockOwnerDeletion"
    ),
    "ClusterRole pods:list": Case("starts", NEVER_READY, "informer=pods"),
    "ClusterRole pods:watch": Case("runs_a_job", NOT_RUNNING, "informer=pods"),
    "ClusterRole pods:create": Case("runs_a_job", NO_PODS, "cannot create resource pods"),
    "ClusterRole pods:get": Case("reports_foreign_objects", FOREIGN_UNNAMED, "cannot get resource pods"),
    "ClusterRole pods:delete": Case("restarts", NO_RESTART, "cannot delete resource pods"),
    "ClusterRole pods:patch": Case(
        "runs_a_job", NO_PODS, "is attempting to grant RBAC permissions not currently held"
    ),
    "ClusterRole serviceaccounts:create": Case(
        "runs_a_job", NO_PODS, "cannot create resource serviceaccounts"
    ),
    "ClusterRole serviceaccounts:get": Case(
        "reports_foreign_objects", FOREIGN_UNNAMED, "cannot get resource serviceaccounts"
    ),
    f"ClusterRole {ROLES}:create": Case("runs_a_job", NO_PODS, "cannot create resource roles"),
    f"ClusterRole {ROLES}:get": Case("reports_foreign_objects", FOREIGN_UNNAMED, "cannot get resource roles"),
    f"ClusterRole {ROLES}:update": Case("restarts", NO_RESTART, "cannot update resource roles"),
    f"ClusterRole {BINDINGS}:create": Case("runs_a_job", NO_PODS, "cannot create resource rolebindings"),
    f"ClusterRole {BINDINGS}:get": Case(
        "reports_foreign_objects", FOREIGN_UNNAMED, "cannot get resource rolebindings"
    ),
    f"ClusterRole {VC_GROUPS}:create": Case("gang_schedules", NO_GANG, "cannot create resource podgroups"),
    f"ClusterRole {CS_GROUPS}:create": Case("gang_schedules", NO_GANG, "cannot create resource podgroups"),
    f"ClusterRole {VC_GROUPS}:get": Case(
        "names_foreign_pod_groups", FOREIGN_GROUP, "cannot get resource podgroups"
    ),
    f"ClusterRole {CS_GROUPS}:get": Case("resizes_pod_groups", STALE_GROUP, "cannot get resource podgroups"),
    f"ClusterRole {VC_GROUPS}:update": Case(
        "resizes_pod_groups", STALE_GROUP, "cannot update resource podgroups"
    ),
    f"ClusterRole {CS_GROUPS}:update": Case(
        "resizes_pod_groups", STALE_GROUP, "cannot update resource podgroups"
    ),
    "ClusterRole services:create": Case("runs_a_job", NO_PODS, "cannot create resource services"),
    "ClusterRole services:get": Case(
        "reports_foreign_objects", FOREIGN_UNNAMED, "cannot get resource services"
    ),
    "ClusterRole events:create": Case("records_events", NO_EVENTS, "msg=event not recorded"),
    f"Role {LEASES}:create": Case("starts", NEVER_LEADS, "attempt failed (403)"),
    f"Role {LEASES}:get": Case("starts", NEVER_LEADS, "attempt failed (403)"),
    f"Role {LEASES}:update": Case("keeps_leadership", LOSES_LEASE, "attempt failed (403)"),
    "Role configmaps:list": Case("starts", NEVER_READY, "informer=device-configmaps"),
    "Role configmaps:watch": Case("avoids_faulty_devices", DEVICE_FAULT_MISSED, "informer=device-configmaps"),
    # system:auth-delegator, bound while metrics.auth.enabled (the default).
    "ClusterRole tokenreviews.authentication.k8s.io:create": Case(
        "serves_metrics", NO_METRICS, "cannot create resource tokenreviews"
    ),
    "ClusterRole subjectaccessreviews.authorization.k8s.io:create": Case(
        "serves_metrics", NO_METRICS, "cannot create resource subjectaccessreviews"
    ),
}


# -- the tests ------------------------------------------------------------------------------------


def test_every_verb_the_chart_grants_has_a_case(chart: Chart) -> None:
    granted = each_verb(chart.rules)
    assert len(granted) == len(set(granted))
    assert set(granted) == set(CASES), "a verb nothing needs is a finding: drop it from the chart"
    assert {c.feature for c in CASES.values()} <= set(FEATURES)


def test_full_rules_every_feature_works(controller: Callable[[str | None, str | None], Run]) -> None:
    run = controller(None, None)
    for name, feature in FEATURES.items():
        assert feature(run) is None, f"{name}: {run.log.read_text()}"
    assert run.refusals() == []
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=DEADLINE) == 0


@pytest.mark.parametrize("removed", list(CASES))
def test_without(removed: str, controller: Callable[[str | None, str | None], Run]) -> None:
    case = CASES[removed]
    run = controller(removed, case.breaks)
    outcome = FEATURES[case.feature](run)
    assert outcome == case.breaks, f"{case.feature}: {outcome}\n{run.log.read_text()}"
    assert any(case.refusal in r for r in run.refusals()), run.refusals()
