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
import time
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster.controlplane import ControlPlane  # noqa: E402
from devcluster.crds import apply_crds  # noqa: E402
from respawn_protocol.crd import LABEL_JOB  # noqa: E402
from tests.support.kube import PodWatcher, create_job, job_status, running_controller  # noqa: E402
from tests.support.manifests import played_job, pod_status  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402

NS = "bench"


def fail_pod(core: client.CoreV1Api, name: str, container: str) -> float:
    """Write the pod's Failed status (exit code 137); returns when the write was started."""
    started = time.perf_counter()
    core.patch_namespaced_pod_status(name, NS, pod_status("Failed", 137, container=container, image="x"))
    return started


def bench_respawn(api: client.ApiClient, failures: int, replicas: int) -> list[float]:
    core = client.CoreV1Api(api)
    samples = []
    started = 0.0
    with running_controller(api, NS, device_faults=False) as controller:
        watcher = PodWatcher(api, NS, f"{LABEL_JOB}=bench")
        create_job(api, NS, played_job("bench", replicas, maxRestarts=10 * failures))
        try:
            for attempt in range(failures + 1):
                names = {f"bench-a{attempt}-{r}" for r in range(replicas)}
                created = watcher.wait(names)
                if attempt > 0:
                    samples.append(created - started)
                for name in names:
                    core.patch_namespaced_pod_status(name, NS, pod_status("Running"))
                wait_for(
                    "job Running",
                    lambda: job_status(api, NS, "bench").get("phase") == "Running",
                    30,
                    interval=0.01,
                )
                if attempt < failures:
                    started = fail_pod(core, f"bench-a{attempt}-{attempt % replicas}", "trainer")
        finally:
            watcher.stop()
    print(f"respawn: {len(samples)} failures, reconcile API writes {controller.writer.requests}")
    return samples


def bench_job_controller(api: client.ApiClient, failures: int) -> list[float]:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    watcher = PodWatcher(api, NS, "job-name=jobbench")
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
            new = wait_for(
                "the Job controller to create a pod",
                lambda: set(watcher.first_seen) - seen,
                60,
                interval=0.002,
            )
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
