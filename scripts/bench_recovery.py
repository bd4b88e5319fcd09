"""Kill -> first resumed step, per restart: median and max of status.lastRecovery, with pod
recreation or (`--in-place`) restarting the trainers in their pods.

The demo's job (`make demo`: 2-rank data-parallel TrainingJob, the tiny LLaMA with hidden size 64,
async checkpoints every 2 steps) runs on a local cluster with the controller in this process
(backoff 1 s). Once an attempt has finished its first steps, one rank's trainer is SIGKILLed —
rank 1, then rank 0 (which runs MindSpore's scheduler), in turn — and the controller restarts the
gang with new pods; with `--in-place` (failurePolicy.restartInPlace) the rank's trainer process
under the pod's supervisor is killed and the gang restarts in the same pods. For every restart
the controller records `status.lastRecovery`: the failure to the first step the next attempt
finished (`totalSeconds`), and the phases detect, teardown, podStart, processStart, import,
rendezvous, load, compile, firstStep (docs/controller.md, Time to recover). Printed: each
restart, then n / median / max of the total and of each phase.

    python scripts/bench_recovery.py [--kills 6] [--in-place] [--steps-before-kill 4] [--trainer DIR]
                                     [--no-compile-cache] [--format ckpt|safetensors] [--workdir DIR]

`--trainer DIR` runs the trainer of another checkout (the pods' PYTHONPATH; the controller is
always this tree's): the before figure of a trainer change. `--no-compile-cache` sets
RESPAWN_COMPILE_CACHE=off in the pods. The compile cache root is `<workdir>/compile-cache`, a
directory of the host shared by the local cluster's nodes, as a hostPath volume would be per node.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devcluster import faults  # noqa: E402
from devcluster.local import LocalCluster  # noqa: E402
from devcluster.statedir import StateDir  # noqa: E402
from respawn_protocol.steplog import read_steps  # noqa: E402
from scripts.demo import RUN_YAML as DEMO_RUN  # noqa: E402
from tests.support.kube import create_job, job_status, running_controller  # noqa: E402
from tests.support.manifests import run_config_map, trainer_command, training_job  # noqa: E402
from tests.support.poll import wait_for  # noqa: E402
from trainer_image.warm import SPARE_NAME  # noqa: E402

NS = "bench"
JOB = "recover"
PHASES = (
    "detect",
    "teardown",
    "podStart",
    "processStart",
    "import",
    "rendezvous",
    "load",
    "compile",
    "firstStep",
)
STEPS_BEFORE_KILL = 4  # steps each attempt trains before the next kill (--steps-before-kill)


def run_yaml(fmt: str) -> dict[str, Any]:
    """The demo's run, long enough for every kill (the LR schedule's length is the demo's), its
    checkpoints in `fmt`."""
    (monitor,) = DEMO_RUN["callbacks"]
    return {
        **DEMO_RUN,
        "runner_config": {**DEMO_RUN["runner_config"], "epochs": 200},
        "callbacks": [{**monitor, "checkpoint_format": fmt}],
        "load_ckpt_format": fmt,
    }


def job(shared: Path, *, trainer: Path, cache: Path | None, kills: int, in_place: bool) -> dict[str, Any]:
    body = training_job(
        JOB,
        namespace=NS,
        command=trainer_command(),
        run_config="run",
        shared=shared,
        backoff=(1, 1),
        maxRestarts=kills + 2,
        restartInPlace=in_place,
    )
    env = [{"name": "PYTHONPATH", "value": str(trainer)}]
    env += (
        [{"name": "RESPAWN_COMPILE_CACHE_DIR", "value": str(cache)}]
        if cache is not None
        else [{"name": "RESPAWN_COMPILE_CACHE", "value": "off"}]
    )
    body["spec"]["template"]["spec"]["containers"][0]["env"] = env
    return body


def steps_of(shared: Path, rank: int) -> list[dict[str, Any]]:
    return read_steps(shared / NS / JOB / "log" / f"rank_{rank}" / "steps.jsonl")


def kill_once(
    api: client.ApiClient,
    state: StateDir,
    shared: Path,
    attempt: int,
    victim: int,
    *,
    in_place: bool,
    steps: int = STEPS_BEFORE_KILL,
) -> dict[str, Any]:
    """Wait until `attempt` has trained a few steps, SIGKILL rank `victim`'s trainer, and wait for the
    next attempt's recovery record (every rank's first step finished)."""
    done = len(steps_of(shared, victim))
    wait_for(
        f"attempt {attempt} training",
        lambda: (
            job_status(api, NS, JOB).get("attempt") == attempt
            and len(steps_of(shared, victim)) >= done + steps
        ),
        600,
        interval=0.05,
    )
    if in_place:  # the trainer, the supervisor's child that is not a warm spare; pods of attempt 0
        top = faults.find_process(state, NS, f"{JOB}-a0-{victim}").pid
        children = [int(c) for c in Path(f"/proc/{top}/task/{top}/children").read_text().split()]
        (trainer,) = (c for c in children if Path(f"/proc/{c}/comm").read_text().strip() != SPARE_NAME)
        os.kill(trainer, signal.SIGKILL)
    else:
        faults.kill(state, NS, f"{JOB}-a{attempt}-{victim}")
    recovery = wait_for(
        f"the recovery of attempt {attempt + 1}",
        lambda: (
            (r := job_status(api, NS, JOB).get("lastRecovery") or {}).get("attempt") == attempt + 1
            and "totalSeconds" in r
            and r
        ),
        600,
        interval=0.1,
    )
    row = {"attempt": attempt + 1, "victim": victim, "reason": recovery.get("reason")}
    said = client.CoreV1Api(api).list_namespaced_event(NS, field_selector=f"involvedObject.name={JOB}").items
    row["how"] = [e.message for e in said if e.reason in ("Restarting", "InPlaceRestartAbandoned")][-2:]
    row["totalSeconds"] = recovery["totalSeconds"]
    row.update({p: recovery.get("seconds", {}).get(p) for p in PHASES})
    print(json.dumps(row), flush=True)
    return row


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'':<14}{'n':>3}{'median':>9}{'max':>9}"]
    for name in ("totalSeconds", *PHASES):
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            lines.append(f"{name:<14}{len(values):>3}{statistics.median(values):>9.2f}{max(values):>9.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--in-place", action="store_true", help="failurePolicy.restartInPlace")
    parser.add_argument(
        "--steps-before-kill", type=int, default=STEPS_BEFORE_KILL, help="steps each attempt trains first"
    )
    parser.add_argument("--trainer", type=Path, default=REPO, help="checkout whose trainer the pods run")
    parser.add_argument("--no-compile-cache", action="store_true", help="RESPAWN_COMPILE_CACHE=off")
    parser.add_argument("--format", choices=("ckpt", "safetensors"), default="ckpt", help="checkpoints")
    parser.add_argument("--workdir", type=Path, default=REPO / ".devcluster" / "bench_recovery")
    args = parser.parse_args()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    cache = None if args.no_compile_cache else workdir / "compile-cache"
    started = time.monotonic()
    with LocalCluster(workdir=workdir / "cluster") as cluster:
        api = cluster.api_client()
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_namespaced_service_account(NS, {"metadata": {"name": "default"}})
        core.create_namespaced_config_map(NS, run_config_map(run_yaml(args.format), "run"))
        state = StateDir(cluster.agent_state_dir)
        with running_controller(api, NS, shared=shared, device_faults=False):
            trainer = args.trainer.resolve()
            create_job(
                api, NS, job(shared, trainer=trainer, cache=cache, kills=args.kills, in_place=args.in_place)
            )
            rows = [
                kill_once(
                    api,
                    state,
                    shared,
                    k,
                    victim=1 - k % 2,
                    in_place=args.in_place,
                    steps=args.steps_before_kill,
                )
                for k in range(args.kills)
            ]
    print(
        f"\n{'in place' if args.in_place else 'pods recreated'}, trainer {args.trainer}, "
        f"compile cache {'off' if cache is None else cache}, {args.format}, "
        f"{args.steps_before_kill} steps before each kill, "
        f"{len(rows)} kills in {time.monotonic() - started:.0f} s"
    )
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
