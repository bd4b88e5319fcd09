"""`make demo`: a training job that heals itself, on a local cluster.

Starts a local control plane and node agent (devcluster), runs the respawn controller, applies a
2-replica data-parallel TrainingJob with the trainer's tiny model, SIGKILLs one rank mid-training,
and shows the controller restarting the gang and the trainer resuming from its last complete
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster.controlplane import free_port  # noqa: E402
from devcluster.local import LocalCluster  # noqa: E402
from respawn_protocol.steplog import read_steps  # noqa: E402
from tests.support.kube import job_status  # noqa: E402
from tests.support.manifests import run_config_map, trainer_command, training_job  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402

NAMESPACE = "demo"
JOB = "tiny-llama"
RUN_YAML: dict[str, Any] = {
    "seed": 42,
    "context": {"mode": 0},
    # Real data parallel: the ranks all-reduce gradients, so they step and checkpoint in lockstep
    # and one rank's death stops the gang, as on a real cluster.
    "use_parallel": True,
    "runner_config": {"epochs": 3, "batch_size": 8},
    "callbacks": [
        {
            "type": "CheckpointMonitor",
            "prefix": "tiny",
            "save_checkpoint_steps": 2,
            "keep_checkpoint_max": 3,
            "checkpoint_format": "ckpt",
            "async_save": True,
        }
    ],
    "lr_schedule": {
        "type": "CosineWithWarmUpLR",
        "learning_rate": 0.003,
        "warmup_steps": 5,
        "total_steps": 200,
    },
    "model": {
        "type": "llama",
        "seq_length": 32,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 176,
    },
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 1600}},
}


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def manifest(shared: Path) -> list[dict[str, Any]]:
    # The node agent runs containers as local processes, so the image is not pulled.
    job = training_job(
        JOB,
        namespace=NAMESPACE,
        image="respawn/trainer:0.1.0",
        command=trainer_command(),
        run_config="tiny-run",
        shared=shared,
        backoff=(1, 10),
        maxRestarts=3,
    )
    return [run_config_map(RUN_YAML, "tiny-run", NAMESPACE), job]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=REPO / ".devcluster" / "demo")
    args = parser.parse_args()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    kubectl = [str(Path(sys.executable).parent / "kubectl")]

    say("starting a local cluster: etcd, kube-apiserver, and a node agent with nodes node-0, node-1")
    with LocalCluster(workdir=workdir / "cluster") as cluster:
        kubectl += ["--kubeconfig", str(cluster.kubeconfig_path)]
        subprocess.run([*kubectl, "get", "nodes"], check=True)
        say(
            "starting the respawn controller (no volume: the trainers report their checkpoints on their pods)"
        )
        health = free_port()
        controller_log = (workdir / "controller.log").open("w")
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "--kubeconfig",
                str(cluster.kubeconfig_path),
                "--no-leader-election",
                "--health-port",
                str(health),
                "--health-host",
                "127.0.0.1",
                "--metrics-auth=false",  # local, on loopback: read /metrics without a token
            ],
            stdout=controller_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            return run_demo(cluster, kubectl, shared, workdir, health)
        finally:
            controller.terminate()
            controller.wait(timeout=30)
            controller_log.close()


def run_demo(cluster: LocalCluster, kubectl: list[str], shared: Path, workdir: Path, health: int) -> int:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "default"}})
    job_file = workdir / "trainingjob.yaml"
    job_file.write_text(yaml.safe_dump_all(manifest(shared)))
    say(f"kubectl apply -f {job_file}")
    subprocess.run([*kubectl, "apply", "-f", str(job_file)], check=True)

    def status() -> dict[str, Any]:
        return job_status(api, NAMESPACE, JOB)

    steps_log = shared / NAMESPACE / JOB / "log" / "rank_1" / "steps.jsonl"
    wait_for(
        "a checkpoint complete on both ranks",
        lambda: status().get("lastCompleteCheckpoint", {}).get("step", 0) >= 20,
        300,
    )
    subprocess.run([*kubectl, "get", "tj", "-n", NAMESPACE], check=True)
    say(f"injecting a fault: SIGKILL rank 1 (pod {JOB}-a0-1)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "devcluster",
            "fault",
            "--state-dir",
            str(cluster.agent_state_dir),
            "kill",
            f"{NAMESPACE}/{JOB}-a0-1",
            "--signal",
            "KILL",
        ],
        check=True,
    )

    wait_for(
        "the next attempt",
        lambda: (s := status()).get("attempt", 0) >= 1 and s.get("phase") in ("Running", "Succeeded"),
        120,
    )
    say("the controller restarted the whole gang:")
    subprocess.run([*kubectl, "get", "pods", "-n", NAMESPACE, "-o", "wide"], check=True)
    final = wait_for(
        "the job to finish", lambda: (s := status()).get("phase") in ("Succeeded", "Failed") and s, 600
    )
    subprocess.run([*kubectl, "get", "tj", "-n", NAMESPACE], check=True)

    records = read_steps(steps_log)
    restart = next(i for i, r in enumerate(records) if r.get("resumed_from"))
    killed_at = max(r["global_step"] for r in records[:restart])  # rank 1's last step before the kill
    restarted = records[restart]
    resumed = restarted["resumed_from"]
    recover = metric(health, "respawn_time_to_recover_seconds_sum")
    say("summary")
    summary = {
        "phase": final["phase"],
        "restarts": final.get("restarts"),
        "uncounted_restarts": final.get("uncountedRestarts"),
        "last_failure": {k: final["lastFailure"].get(k) for k in ("reason", "pod", "node", "exitCode")},
        "resumed_from_step": resumed["global_step"],
        "resumed_from_file": resumed["file"],
        "steps_lost": max(0, killed_at - resumed["global_step"]),
        "time_to_recover_seconds": recover,
        "trainer_startup_seconds": restarted.get("startup_seconds"),
        # status.lastRecovery: the kill -> the first step the next attempt finished, and its phases.
        "kill_to_first_step_seconds": (final.get("lastRecovery") or {}).get("totalSeconds"),
        "recovery_breakdown_seconds": (final.get("lastRecovery") or {}).get("seconds"),
        # status.checkpointInterval: Young/Daly from this run's failure and measured save cost.
        "checkpoint_interval_suggested": final.get("checkpointInterval"),
        "final_step": final.get("lastCompleteCheckpoint", {}).get("step"),
        "steps_log": str(steps_log),
    }
    print(json.dumps(summary, indent=2))
    (workdir / "summary.json").write_text(json.dumps(summary))
    return 0 if final["phase"] == "Succeeded" else 1


def metric(port: int, name: str) -> float | None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name):
                return round(float(line.rsplit(" ", 1)[1]), 2)
    return None


if __name__ == "__main__":
    sys.exit(main())
