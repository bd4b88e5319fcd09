"""Chaos soak benchmark: real-trainer TrainingJobs under two controller replicas and random faults.

Stands up its own local cluster (etcd + kube-apiserver + node agent with node-0 and node-1, via
devcluster.local.LocalCluster) and runs the scenario of tests/e2e/test_chaos.py for `--duration`
seconds: it keeps `--jobs` 2-replica jobs of the trainer's tiny model training (ranks alone, or
one data-parallel gang with `--parallel`; a new one starts when one finishes; every other job does
not avoid faulty nodes, so node faults keep finding targets), next to one uninterrupted reference
job per config, under two `python -m controller` replicas with leader election, while a seeded
injector picks a fault every `--gap` seconds (uniform) from: rank SIGKILL, eviction, node
NotReady, device-fault ConfigMap, SIGKILL of the leader replica, kube-apiserver restart (SIGTERM or
SIGKILL). Then it waits for every job to finish, checks the rules of tests/e2e/test_chaos.py and
prints the figures. Exit code 1 on any violation.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import signal
import sys
import time
from pathlib import Path

from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster.local import LocalCluster  # noqa: E402
from tests.support.chaos import ChaosSoak, run_config, summary  # noqa: E402

WEIGHTS = {
    "kill": 4,
    "evict": 2,
    "node-not-ready": 1,
    "device-fault": 1,
    "leader-kill": 1,
    "apiserver-restart": 1,
}
NAMESPACE = "chaos"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of fault injection")
    parser.add_argument("--jobs", type=int, default=4, help="chaos jobs training at any time")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each job (49 steps each)")
    parser.add_argument("--gap", type=float, nargs=2, default=(4.0, 12.0), help="seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--parallel", action="store_true", help="data-parallel jobs (use_parallel: MindSpore collectives)"
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".devcluster" / "chaos")
    args = parser.parse_args()
    # Stopped by a signal, still tear the cluster down (a background job starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    started = time.monotonic()

    with LocalCluster(workdir=workdir / "cluster") as cluster:
        with cluster.api_client() as api:
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "default"}})
        soak = ChaosSoak(
            kubeconfig=cluster.kubeconfig_path,
            namespace=NAMESPACE,
            shared=shared,
            workdir=workdir,
            agent_state=cluster.agent_state_dir,
            nodes=cluster.nodes,
            control_plane=cluster.control_plane,
            seed=args.seed,
        )
        try:
            soak.start()
            configs = {"c0": 11, "c1": 12}
            for name, seed in configs.items():
                soak.add_config(name, run_config(seed=seed, epochs=args.epochs, parallel=args.parallel))
            numbers = itertools.count()
            cycle = itertools.cycle(configs)

            def add_job() -> None:
                i = next(numbers)
                soak.add_job(f"job{i}", next(cycle), avoid_faulty_nodes=i % 2 == 0)

            for _ in range(args.jobs):
                add_job()
            kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
            t0 = time.monotonic()
            print(f"injecting faults for {args.duration:.0f} s (seed {args.seed})", flush=True)
            while time.monotonic() - t0 < args.duration:
                for _ in range(args.jobs - len(soak.unfinished_chaos_jobs())):
                    add_job()
                soak.run_injector([soak.rng.choices(kinds, weights)[0]], gap=args.gap, until=lambda: False)
            print(f"injection over after {time.monotonic() - t0:.0f} s; waiting for every job", flush=True)
            soak.wait_all_finished(timeout=1200)
            try:
                figures = soak.verify()
            except AssertionError as exc:
                print(exc, flush=True)
                return 1
        finally:
            soak.close()
    print(f"\n== chaos soak: {args.duration:.0f} s of faults, {time.monotonic() - started:.0f} s wall ==")
    print(summary(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
