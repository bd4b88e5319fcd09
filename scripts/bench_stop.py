"""Survivor reaction in start-up: a peer SIGKILLed while the gang starts -> the next attempt running.

A 2-rank data-parallel TrainingJob (the trainer's tiny model, real MindSpore processes, the pods'
default 30 s grace period) is started on a local cluster with the controller (backoff 0). At a
random moment of the start-up, aimed in turn at three phases of the surviving rank — importing
(before the rendezvous), inside MindSpore's dynamic-cluster rendezvous (`init()`), compiling the
first step — one rank, chosen at random, is SIGKILLed. The controller restarts the gang: it deletes
the survivor's pod (SIGTERM, then SIGKILL after the grace period) and creates the next attempt once
the old pods are gone. Measured: from the kill to every pod of the next attempt Running, and to the
survivor's exit; the survivor's phase at the kill is read from its log.

    python scripts/bench_stop.py [--runs 6] [--seed 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster import faults  # noqa: E402
from devcluster.local import LocalCluster  # noqa: E402
from devcluster.statedir import StateDir  # noqa: E402
from respawn_protocol.crd import GROUP, LABEL_JOB, PLURAL, VERSION  # noqa: E402
from tests.support.e2e import trainer_job  # noqa: E402
from tests.support.kube import create_job, running_controller  # noqa: E402
from tests.support.manifests import run_config_map  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402
from tests.support.trainer import TINY_LLAMA  # noqa: E402

NS = "bench"
PHASES = ("before rendezvous", "rendezvous", "compile")
RUN_YAML: dict[str, Any] = {
    "seed": 5,
    "context": {"mode": 0},
    "use_parallel": True,
    "runner_config": {"epochs": 3, "batch_size": 8},
    "callbacks": [{"type": "CheckpointMonitor", "prefix": "bench", "save_checkpoint_steps": 1000}],
    "model": TINY_LLAMA,
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 960}},
}


@dataclass
class Sample:
    aimed: str  # the phase the kill was aimed at
    victim: int
    survivor_phase: str  # what the survivor's log said at the kill
    survivor_exit: int | None
    survivor_gone: float | None  # seconds from the kill to the survivor's container ending
    next_running: float  # seconds from the kill to every pod of the next attempt Running


class Pods:
    """Watches the namespace's pods: when each was first Running, how each container ended."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.running: dict[str, float] = {}
        self.ended: dict[str, tuple[float, int]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="bench-pods", daemon=True).start()

    def _run(self) -> None:
        rv = self.core.list_namespaced_pod(NS).metadata.resource_version
        while not self._stop.is_set():
            for event in watch.Watch().stream(
                self.core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=20
            ):
                pod = event["object"]
                rv = pod.metadata.resource_version
                self._see(pod, time.perf_counter())

    def _see(self, pod: Any, now: float) -> None:
        name = pod.metadata.name
        if pod.status.phase == "Running":
            self.running.setdefault(name, now)
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.terminated and name not in self.ended:
                self.ended[name] = (now, cs.state.terminated.exit_code)

    def stop(self) -> None:
        self._stop.set()


def pod_log(state: StateDir, pod: str) -> str:
    dirs = state.pod_dirs(NS, pod)
    path = dirs[-1] / "trainer.log" if dirs else None
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def phase_of(state: StateDir, shared: Path, job: str, rank: int) -> str:
    """The start-up phase a rank's log and step log show."""
    text = pod_log(state, f"{job}-a0-{rank}")
    steps = shared / NS / job / "log" / f"rank_{rank}" / "steps.jsonl"
    if steps.exists() and steps.stat().st_size > 0:
        return "training"
    if "start: global step" in text:
        return "compile"
    if "joined the cluster" in text:
        return "build/load"
    if "starting the MindSpore scheduler" in text or "joining the cluster" in text:
        return "rendezvous"
    return "before rendezvous" if rank == 0 or "joining the cluster" in text else "import/rendezvous"


def aim(state: StateDir, job: str, phase: str, rng: random.Random) -> None:
    """Wait until the start-up reaches `phase` (by rank 0's log), then a random part of it."""
    first = f"{job}-a0-0"
    if phase == "before rendezvous":
        time.sleep(rng.uniform(0.0, 1.0))
        return
    marker = "starting the MindSpore scheduler" if phase == "rendezvous" else "start: global step"
    wait_for(f"{phase} of {job}", lambda: marker in pod_log(state, first), 120, interval=0.05)
    time.sleep(rng.uniform(1.0, 4.0) if phase == "rendezvous" else rng.uniform(0.0, 1.0))


def bench_job(job: str, shared: Path) -> dict[str, Any]:
    body = trainer_job(job, shared, config="run", backoff=(0, 0), maxRestarts=5)
    # The trainer of this tree, wherever the script runs from (a copy measures older code).
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PYTHONPATH", "value": str(REPO)}]
    return body


def one_run(
    api: client.ApiClient, pods: Pods, state: StateDir, shared: Path, i: int, rng: random.Random
) -> Sample:
    job, phase, victim = f"stop{i}", PHASES[i % len(PHASES)], rng.randrange(2)
    survivor = 1 - victim
    create_job(api, NS, bench_job(job, shared))
    first = [f"{job}-a0-{r}" for r in (0, 1)]
    wait_for(f"{job} attempt 0 running", lambda: all(p in pods.running for p in first), 120, interval=0.02)
    aim(state, job, phase, rng)
    seen = phase_of(state, shared, job, survivor)
    killed = time.perf_counter()
    faults.kill(state, NS, f"{job}-a0-{victim}")
    nxt = [f"{job}-a1-{r}" for r in (0, 1)]
    wait_for(f"{job} attempt 1 running", lambda: all(p in pods.running for p in nxt), 180, interval=0.02)
    ended = pods.ended.get(first[survivor])
    sample = Sample(
        aimed=phase,
        victim=victim,
        survivor_phase=seen,
        survivor_exit=ended[1] if ended else None,
        survivor_gone=round(ended[0] - killed, 2) if ended else None,
        next_running=round(max(pods.running[p] for p in nxt) - killed, 2),
    )
    print(json.dumps(asdict(sample)), flush=True)
    tear_down(api, job)
    return sample


def tear_down(api: client.ApiClient, job: str) -> None:
    """Delete the job and its pods at once (grace 0) and wait until they are gone."""
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, job)
    core = client.CoreV1Api(api)
    selector = f"{LABEL_JOB}={job}"

    def gone() -> bool:
        left = core.list_namespaced_pod(NS, label_selector=selector).items
        for pod in left:
            if pod.metadata.deletion_timestamp is None or pod.spec.termination_grace_period_seconds:
                core.delete_namespaced_pod(pod.metadata.name, NS, grace_period_seconds=0)
        return not left

    wait_for(f"{job}'s pods gone", gone, 120, interval=0.5)


def report(samples: list[Sample]) -> None:
    print()
    for s in samples:
        print(
            f"aimed {s.aimed:<18} victim rank {s.victim}  survivor in {s.survivor_phase:<18} "
            f"exit {s.survivor_exit}  gone {s.survivor_gone} s  next attempt running {s.next_running:6.2f} s"
        )
    times = sorted(s.next_running for s in samples)
    print(
        f"\nkill -> next attempt running: n={len(times)}  median={statistics.median(times):.2f} s  "
        f"max={times[-1]:.2f} s  min={times[0]:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=REPO / ".devcluster" / "bench_stop")
    args = parser.parse_args()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    rng = random.Random(args.seed)
    with LocalCluster(workdir=workdir / "cluster") as cluster:
        api = cluster.api_client()
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        core.create_namespaced_config_map(NS, run_config_map(RUN_YAML))
        state = StateDir(cluster.agent_state_dir)
        with running_controller(api, NS, shared=shared, device_faults=False):
            pods = Pods(api)
            samples = [one_run(api, pods, state, shared, i, rng) for i in range(args.runs)]
            pods.stop()
    report(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
