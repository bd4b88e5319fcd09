"""Reaction time: a worker pod's Failed status written -> every pod of the replacement created.

respawn (backoff 0) restarts the whole gang: it deletes every pod of the attempt, waits until they
are gone, and creates the next attempt. The built-in Job controller (real kube-controller-manager,
same API server) replaces the one failed pod of a Job whose podFailurePolicy ignores that exit
code (so its own backoff does not apply). The benchmark plays kubelet: it writes the Failed
status itself, and watches for the replacement pods.

    python scripts/bench_reaction.py [--failures 50] [--replicas 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.app import Controller, Settings  # noqa: E402
from devcluster.controlplane import ControlPlane  # noqa: E402
from devcluster.crds import apply_crds  # noqa: E402
from respawn_protocol.crd import GROUP, LABEL_JOB, PLURAL, VERSION  # noqa: E402

NS = "bench"


class PodWatcher:
    """Records when each pod name was first seen, from a watch started before the failures."""

    def __init__(self, api: client.ApiClient, selector: str) -> None:
        self.first_seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._api, self._selector = api, selector
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        core = client.CoreV1Api(self._api)
        rv = core.list_namespaced_pod(NS, label_selector=self._selector).metadata.resource_version
        w = watch.Watch()
        while not self._stop.is_set():
            for event in w.stream(
                core.list_namespaced_pod,
                NS,
                label_selector=self._selector,
                resource_version=rv,
                timeout_seconds=30,
            ):
                pod = event["object"]
                rv = pod.metadata.resource_version
                if event["type"] == "ADDED":
                    with self._cond:
                        self.first_seen.setdefault(pod.metadata.name, time.perf_counter())
                        self._cond.notify_all()
                if self._stop.is_set():
                    break

    def wait(self, names: set[str], timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not names <= self.first_seen.keys():
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"pods {sorted(names - self.first_seen.keys())} never appeared")
            return max(self.first_seen[n] for n in names)

    def stop(self) -> None:
        self._stop.set()


def fail_pod(core: client.CoreV1Api, name: str, container: str) -> float:
    body = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": container,
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "finishedAt": "2026-11-23T00:00:00Z",
                        }
                    },
                }
            ],
        }
    }
    started = time.perf_counter()
    core.patch_namespaced_pod_status(name, NS, body)
    return started


def wait_running(core: client.CoreV1Api, names: set[str], container: str) -> None:
    for name in names:
        body = {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": container,
                        "image": "x",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-11-23T00:00:00Z"}},
                    }
                ],
            }
        }
        core.patch_namespaced_pod_status(name, NS, body)


def bench_respawn(api: client.ApiClient, failures: int, replicas: int) -> list[float]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    controller = Controller(
        api,
        Settings(
            namespace=NS, leader_election=False, health_port=0, health_host="127.0.0.1", device_faults=False
        ),
    )
    controller.start()
    watcher = PodWatcher(api, f"{LABEL_JOB}=bench")
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": "bench"},
            "spec": {
                "replicas": replicas,
                "template": {
                    "spec": {"containers": [{"name": "trainer", "image": "x", "command": ["true"]}]}
                },
                "failurePolicy": {
                    "maxRestarts": 10 * failures,
                    "backoff": {"initialSeconds": 0, "maxSeconds": 0},
                },
            },
        },
    )
    samples = []
    started = 0.0
    try:
        for attempt in range(failures + 1):
            names = {f"bench-a{attempt}-{r}" for r in range(replicas)}
            created = watcher.wait(names)
            if attempt > 0:
                samples.append(created - started)
            wait_running(core, names, "trainer")
            deadline = time.monotonic() + 30
            while (
                custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "bench")
                .get("status", {})
                .get("phase")
                != "Running"
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("job never Running")
                time.sleep(0.01)
            if attempt < failures:
                started = fail_pod(core, f"bench-a{attempt}-{attempt % replicas}", "trainer")
    finally:
        watcher.stop()
        controller.stop()
        controller.shutdown()
    print(f"respawn: {len(samples)} failures, reconcile API writes {controller.writer.requests}")
    return samples


def bench_job_controller(api: client.ApiClient, failures: int) -> list[float]:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    watcher = PodWatcher(api, "job-name=jobbench")
    batch.create_namespaced_job(
        NS,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "jobbench"},
            "spec": {
                "parallelism": 1,
                "completions": 1,
                "backoffLimit": 6,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "Ignore",
                            "onExitCodes": {"containerName": "main", "operator": "In", "values": [137]},
                        }
                    ]
                },
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "x", "command": ["true"]}],
                    }
                },
            },
        },
    )
    samples: list[float] = []
    seen: set[str] = set()
    started = 0.0
    try:
        for i in range(failures + 1):
            deadline = time.monotonic() + 60
            while True:
                new = set(watcher.first_seen) - seen
                if new:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("Job controller never created a pod")
                time.sleep(0.002)
            name = new.pop()
            seen.add(name)
            if i > 0:
                samples.append(watcher.first_seen[name] - started)
            if i < failures:
                started = fail_pod(core, name, "main")
    finally:
        watcher.stop()
    return samples


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{name:<34} n={len(samples):3d}  p50={statistics.median(samples) * 1000:7.1f} ms  "
        f"p99={p99 * 1000:7.1f} ms  max={ordered[-1] * 1000:7.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ControlPlane(workdir=Path(tmp), with_controller_manager=True) as cp,
    ):
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        apply_crds(api, REPO / "deploy")
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        respawn = bench_respawn(api, args.failures, args.replicas)
        job = bench_job_controller(api, args.failures)
        print()
        report(f"respawn gang restart ({args.replicas} pods)", respawn)
        report("batch/v1 Job pod replacement", job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
