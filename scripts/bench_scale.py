"""Scale: N TrainingJobs x 4 pods against one controller process.

Measures the controller's RSS and CPU once every job runs, its reaction to a failure while all jobs
exist (pod Failed written -> every pod of the next attempt created, backoff 0; p50/p99), and API
requests per reconcile (informer LISTs must not grow with reconciles: caches serve every read).

The benchmark plays kubelet: pods use a scheduler name nothing serves, and it writes their status
(Running, then Failed for the injected faults) itself, so the figures are the controller's, not
those of thousands of local processes.

    python scripts/bench_scale.py [--jobs 1000] [--replicas 4] [--failures 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster.controlplane import ControlPlane, free_port  # noqa: E402
from devcluster.crds import apply_crds  # noqa: E402
from respawn_protocol.crd import GROUP, LABEL_MANAGED_BY, PLURAL, VERSION  # noqa: E402
from tests.support.kube import PodWatcher  # noqa: E402
from tests.support.manifests import played_job, pod_status  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402

NS = "scale"


class Kubelet(PodWatcher):
    """Marks every new pod Running and records when each pod name first appeared."""

    def __init__(self, api: client.ApiClient) -> None:
        self.pool = ThreadPoolExecutor(8)
        super().__init__(api, NS, f"{LABEL_MANAGED_BY}=respawn")

    def added(self, pod: Any) -> None:
        self.pool.submit(self.core.patch_namespaced_pod_status, pod.metadata.name, NS, pod_status("Running"))


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        out = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of a process."""
    rss = (
        next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        / 1024
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--failures", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(workdir=Path(tmp) / "cp") as cp:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        api.configuration.connection_pool_maxsize = 16
        apply_crds(api, REPO / "deploy")
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        port = free_port()
        log = (Path(tmp) / "controller.log").open("w")
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "--kubeconfig",
                str(cp.kubeconfig_path),
                "--namespace",
                NS,
                "--no-leader-election",
                "--no-device-faults",
                "--health-port",
                str(port),
                "--health-host",
                "127.0.0.1",
                "--workers",
                "4",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        kubelet = Kubelet(api)
        try:
            started = time.monotonic()
            names = [f"job-{i:04d}" for i in range(args.jobs)]
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda n: custom.create_namespaced_custom_object(
                            GROUP, VERSION, NS, PLURAL, played_job(n, args.replicas, maxRestarts=1000)
                        ),
                        names,
                    )
                )
            expected = {f"{n}-a0-{r}" for n in names for r in range(args.replicas)}
            kubelet.wait(expected, timeout=1800)

            def running() -> int:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
                return sum((j.get("status") or {}).get("phase") == "Running" for j in items)

            wait_for(
                "every job Running",
                lambda: running() >= args.jobs,
                max(0.0, 1800 - (time.monotonic() - started)),
                interval=1,
            )
            ramp = time.monotonic() - started
            rss_idle, cpu_before = proc_stats(controller.pid)
            time.sleep(30)  # steady state: what does the controller cost while nothing happens?
            rss_steady, cpu_after = proc_stats(controller.pid)
            before = scrape(port)

            samples = []
            for i, name in enumerate(random.Random(7).sample(names, args.failures)):
                nxt = {f"{name}-a1-{r}" for r in range(args.replicas)}
                t0 = time.perf_counter()
                core.patch_namespaced_pod_status(
                    f"{name}-a0-{i % args.replicas}", NS, pod_status("Failed", 137)
                )
                samples.append(kubelet.wait(nxt) - t0)
            time.sleep(2)
            after = scrape(port)
            rss_peak, _ = proc_stats(controller.pid)
            reconciles = (
                after["respawn_reconcile_duration_seconds_count"]
                - before["respawn_reconcile_duration_seconds_count"]
            )
            lists = (
                after['respawn_api_requests_total{kind="list"}']
                - before['respawn_api_requests_total{kind="list"}']
            )
            writes = (
                after['respawn_api_requests_total{kind="write"}']
                - before['respawn_api_requests_total{kind="write"}']
            )
            print(f"jobs={args.jobs} x {args.replicas} pods; all Running after {ramp:.0f}s")
            print(
                f"controller RSS: {rss_idle:.0f} MiB when all running, {rss_steady:.0f} MiB after 30 s idle, "
                f"{rss_peak:.0f} MiB after the failures"
            )
            print(f"controller CPU while idle: {(cpu_after - cpu_before) / 30 * 100:.1f} % of one core")
            print(
                f"reaction (Failed written -> all {args.replicas} pods of the next attempt created), "
                f"n={len(samples)}: p50={statistics.median(samples) * 1000:.0f} ms "
                f"p99={percentile(samples, 0.99) * 1000:.0f} ms max={max(samples) * 1000:.0f} ms"
            )
            print(
                f"during the failures: {reconciles:.0f} reconciles, {lists:.0f} LIST requests, "
                f"{writes / max(reconciles, 1):.2f} writes per reconcile"
            )
        finally:
            kubelet.stop()
            controller.terminate()
            controller.wait(timeout=30)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
