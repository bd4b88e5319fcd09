"""Scale: N TrainingJobs x 4 pods against one controller process.

Measures the controller's RSS and CPU once every job runs, its reaction to a failure while all jobs
exist (pod Failed written -> every pod of the next attempt created, backoff 0; p50/p99), and API
requests per reconcile (informer LISTs must not grow with reconciles: caches serve every read).
Then the trainers' reports (respawn_protocol/report.py) are played for `--report-seconds`: rank 0
of every job patches its progress annotation once per `--report-interval`, and every rank a commit
once per `--commit-interval`; printed are the report writes/s, the controller's own writes/s and
its CPU while it absorbs them.

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
from respawn_protocol.report import Commit, Report, annotation_key  # noqa: E402
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


def play_reports(
    core: client.CoreV1Api, port: int, pid: int, names: list[str], args: argparse.Namespace
) -> None:
    """Every job's trainers reporting at the given rates, spread evenly over time."""
    rng = random.Random(11)
    attempt: dict[str, int] = {}  # job -> its current attempt, as the pods' names say
    for pod in core.list_namespaced_pod(NS, label_selector=f"{LABEL_MANAGED_BY}=respawn").items:
        job, _, number = pod.metadata.name.rpartition("-")[0].rpartition("-a")
        attempt[job] = max(attempt.get(job, 0), int(number))
    schedule = []  # (offset seconds, pod, rank, report)
    for name in names:
        prefix = f"{name}-a{attempt.get(name, 0)}"
        first = rng.uniform(0, args.report_interval)
        beats = int((args.report_seconds - first) // args.report_interval) + 1
        schedule += [(first + k * args.report_interval, f"{prefix}-0", 0, "beat") for k in range(beats)]
        for rank in range(args.replicas):
            at = rng.uniform(0, args.commit_interval)
            if at < args.report_seconds:
                schedule.append((at, f"{prefix}-{rank}", rank, "commit"))
    schedule.sort()
    before, (_, cpu_before) = scrape(port), proc_stats(pid)
    started = time.monotonic()

    def send(item: tuple[float, str, int, str]) -> None:
        offset, pod, rank, kind = item
        time.sleep(max(0.0, started + offset - time.monotonic()))
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report = Report(rank=rank, attempt=1, step=int(offset), step_time=0.5, at=at)
        if kind == "commit":
            report = Report(rank=rank, attempt=1, commit=Commit(step=int(offset), attempt=1, at=at))
        body = {"metadata": {"annotations": {annotation_key(rank): report.encode()}}}
        core.patch_namespaced_pod(pod, NS, body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, schedule))
    took = time.monotonic() - started
    after, (_, cpu_after) = scrape(port), proc_stats(pid)
    writes = (
        after['respawn_api_requests_total{kind="write"}'] - before['respawn_api_requests_total{kind="write"}']
    )
    reconciles = (
        after["respawn_reconcile_duration_seconds_count"] - before["respawn_reconcile_duration_seconds_count"]
    )
    print(
        f"reports ({len(names)} jobs, heartbeat every {args.report_interval:.0f} s, a commit per rank every "
        f"{args.commit_interval:.0f} s) over {took:.0f} s: {len(schedule) / took:.1f} report writes/s, "
        f"controller {writes / took:.1f} writes/s, {reconciles / took:.1f} reconciles/s, "
        f"CPU {(cpu_after - cpu_before) / took * 100:.1f} % of one core"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--failures", type=int, default=50)
    parser.add_argument("--report-interval", type=float, default=30.0, help="rank 0 heartbeat, seconds")
    parser.add_argument("--commit-interval", type=float, default=600.0, help="per rank, seconds")
    parser.add_argument("--report-seconds", type=float, default=60.0)
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
                "--metrics-auth=false",  # local, on loopback: read /metrics without a token
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
            play_reports(core, port, controller.pid, names, args)
        finally:
            kubelet.stop()
            controller.terminate()
            controller.wait(timeout=30)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
