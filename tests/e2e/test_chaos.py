"""Chaos soak, short version: real-trainer jobs under two controller replicas and a seeded fault
injector. Three 2-replica TrainingJobs of the trainer's tiny model (a checkpoint every step, 98
steps) run next to one uninterrupted reference job per distinct config (two configs), under two
`python -m controller` replicas with leader election (lease 3 s). Once every chaos job has a
complete checkpoint, a seeded injector (the seed is printed; set RESPAWN_CHAOS_SEED to replay)
injects, with random 0.5-2 s gaps: a node fault of node-0; then, in random order, rank SIGKILL
(twice), eviction and the other node fault; then, while the jobs hit are still restarting, SIGKILL
of the controller replica holding the Lease (a replacement replica is started, as a Deployment
would) and a kube-apiserver crash (SIGKILL, started again on the same port and etcd; the pod
watches resume or relist after 410). NotReady kills node-0's processes (`nodeLostTimeoutSeconds`
2) and the device-fault ConfigMap names an unhealthy Ascend910; either stays on until every job it
hit has moved past the attempt hit. A job fault that finds nothing to hit is not injected but
tried again later (up to 60 s). The references are pinned to node-1 and node faults only hit
node-0 (see tests/support/chaos/); job2 does not avoid faulty nodes, so it keeps coming back to
node-0 and the second node fault usually finds a target.

Each fault records what it hit: a list of (job, attempt, pod) — the pod whose process was
SIGKILLed (only if the process was alive), the pod the Eviction API accepted, or every pod of a
chaos job the pod watch saw on node-0, neither terminal nor being deleted, while the node fault
was on (plus 10 s for the controller's caches). Controller and API-server faults hit no job.
Rules checked (`ChaosSoak.verify`):

* every job ends `Succeeded`; every loss record of every rank of every chaos job, including steps
  redone after a resume, has the `loss_bits` of the reference of its config at that global step,
  and every step of the reference appears; the references were never restarted;
* attempts never overlap: in resourceVersion (etcd revision) order, from a pod watch that resumes
  across the API-server restart, the first pod event of attempt b of a job comes after the DELETED
  event of every pod of every attempt a < b, and every pod of a non-final attempt was deleted
  (undecidable pairs, only possible when the watch had to relist, are reported, not failed);
* restarts match faults, per job: each attempt N < the final attempt (each restart) was hit by at
  least one landed fault (so controller and API-server faults caused none); all landed faults that
  hit one attempt coalesce into that attempt's one restart, whatever their number; a fault that
  hit the final attempt is allowed only if the pod it hit ended `Succeeded` (it raced with the end
  of training). Summed over jobs: counted + uncounted = the number of hit attempts, and counted
  lies between the number of attempts hit only by SIGKILLs and the number hit by at least one
  SIGKILL (the earliest failure of an attempt decides its class, and which of two faults the
  controller sees first is a race). Restarts + uncountedRestarts = attempt for every job.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from devcluster.controlplane import ControlPlane
from tests.support.chaos import ChaosSoak, run_config, summary
from tests.support.nodeagent import NodeAgentHandle
from tests.support.poll import poll

pytestmark = pytest.mark.slow
EPOCHS = 1  # 49 steps: jobs hit by the first fault outlive the plan


def test_chaos_soak(
    kubeconfig: Path,
    control_plane: ControlPlane,
    node_agent: NodeAgentHandle,
    namespace: str,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("RESPAWN_CHAOS_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"chaos seed {seed} (RESPAWN_CHAOS_SEED={seed} replays the schedule)")
    shared = tmp_path / "shared"
    shared.mkdir()

    soak = ChaosSoak(
        kubeconfig=kubeconfig,
        namespace=namespace,
        shared=shared,
        workdir=tmp_path,
        agent_state=node_agent.state_dir,
        nodes=node_agent.nodes,
        control_plane=control_plane,
        apiserver_signals=(signal.SIGKILL,),  # a crash: a SIGTERM'd one takes 15 s more to stop
        seed=seed,
    )
    try:
        soak.start()
        soak.add_config("c0", run_config(seed=11, epochs=EPOCHS))
        soak.add_config("c1", run_config(seed=12, epochs=EPOCHS))
        for i, cfg in enumerate(("c0", "c1", "c0")):
            # job2 keeps coming back to node-0 after a node fault, so the second one finds a target.
            soak.add_job(f"job{i}", cfg, avoid_faulty_nodes=i != 2)
        chaos_jobs = [j for j, spec in soak.jobs.items() if not spec.reference]
        assert poll(
            lambda: all(
                soak.status(j).get("lastCompleteCheckpoint", {}).get("step", 0) >= 2 for j in chaos_jobs
            ),
            240,
            interval=0.5,
        ), {j: soak.status(j) for j in chaos_jobs}
        print(f"{time.monotonic() - soak.t0:.0f}s: every chaos job has a checkpoint; injecting", flush=True)
        # A node fault first (later ones find the jobs it hit avoiding node-0), then the other job
        # faults, then the control-plane faults while the jobs hit are still restarting.
        node_faults = ["node-not-ready", "device-fault"]
        soak.rng.shuffle(node_faults)
        job_faults = ["kill", "kill", "evict", node_faults[1]]
        control_faults = ["leader-kill", "apiserver-restart"]
        soak.rng.shuffle(job_faults)
        soak.rng.shuffle(control_faults)
        plan = [node_faults[0], *job_faults, *control_faults]
        soak.run_injector(
            plan, gap=(0.5, 2.0), until=lambda: not soak.unfinished_chaos_jobs(), land_within=60
        )
        print(f"{time.monotonic() - soak.t0:.0f}s: injection over", flush=True)
        soak.wait_all_finished(timeout=300)
        print(f"{time.monotonic() - soak.t0:.0f}s: every job finished", flush=True)
        figures = soak.verify()
        print(summary(figures))
        landed = figures["landed_by_kind"]
        assert all(landed[k] for k in ("kill", "evict", "leader-kill", "apiserver-restart")), figures
        assert landed["node-not-ready"] + landed["device-fault"] >= 1, figures
        assert figures["restarts_counted"] >= 1 and figures["restarts_uncounted"] >= 1, figures
    finally:
        soak.close()
