"""The in-place supervisor (trainer_image/inplace.py) with fake ranks and a channel of files instead
of the pod's annotations (the e2e test in tests/e2e/test_inplace_e2e.py runs the real one against
the API server). The supervisor runs in its own process, as in a pod, so the tests can signal it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol import inplace
from respawn_protocol.contract import ExitCode
from tests.support import REPO
from tests.support.poll import wait_for

# A rank of attempt A: records its environment in OUT/rank_<RANK>@<A>.json, then follows
# PLAN["<rank>@<A>"] (or PLAN["<rank>"]): "exit" with a code after "after" seconds, else wait.
# SIGTERM exits 75, as a trainer that committed its step.
FAKE_RANK = """
import json, os, signal, sys, time
rank, attempt = os.environ["RESPAWN_RANK"], os.environ["RESPAWN_ATTEMPT"]
plans = json.loads(os.environ["PLAN"])
plan = plans.get(f"{rank}@{attempt}", plans.get(rank, {}))
signal.signal(signal.SIGTERM, lambda *_: os._exit(75))
keys = ("RESPAWN_RANK", "RESPAWN_ATTEMPT", "RESPAWN_SAVE_CHECKPOINT_STEPS", "RESPAWN_RESTART_IN_PLACE")
out = os.path.join(os.environ["OUT"], f"rank_{rank}@{attempt}.json")
with open(out + ".tmp", "w") as f:
    json.dump({k: os.environ.get(k) for k in keys} | {"pid": os.getpid()}, f)
os.rename(out + ".tmp", out)
time.sleep(plan.get("after", 0))
if "exit" in plan:
    sys.exit(plan["exit"])
while True:
    time.sleep(0.05)
"""

# A warm process (trainer_image/warm.py's part): says it is up, waits for its environment on stdin,
# then is the rank.
FAKE_WARM = """
import json, os, sys
open(os.path.join(os.environ["OUT"], f"spare_{os.getpid()}"), "w").close()
line = sys.stdin.readline()
if not line:
    sys.exit(0)
os.environ.clear()
os.environ.update(json.loads(line))
exec(open(sys.argv[1]).read())
"""

# The supervisor with a channel of two files: DIR/command (written by the test, as the controller
# would annotate the pod) and DIR/states (one line per state the supervisor says).
RUN_IN_PLACE = """
import logging, os, sys
from pathlib import Path
from respawn_protocol import inplace
from trainer_image.inplace import InPlace

class FileChannel:
    def __init__(self, folder):
        self.folder = Path(folder)
    def command(self):
        path = self.folder / "command"
        return inplace.decode_command(path.read_text()) if path.exists() else None
    def trained(self, attempt):
        return (self.folder / f"trained@{attempt}").exists()
    def say(self, state):
        with open(self.folder / "states", "a") as f:
            f.write(state.encode() + "\\n")
    def close(self, timeout):
        pass

logging.basicConfig(level=logging.INFO)
n, child, folder, warm = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
warm_command = [sys.executable, *warm, child] if warm else None
pod = InPlace([sys.executable, child], os.environ, n, FileChannel(folder), warm_command=warm_command)
sys.exit(pod.run())
"""


class Pod:
    def __init__(self, tmp: Path, n: int, plan: dict[str, Any], warm: bool) -> None:
        self.dir = tmp
        child = tmp / "rank.py"
        child.write_text(FAKE_RANK)
        runner = tmp / "run.py"
        runner.write_text(RUN_IN_PLACE)
        (tmp / "warm.py").write_text(FAKE_WARM)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PLAN": json.dumps(plan),
            "OUT": str(tmp),
            "RESPAWN_RANK": "0",
            "RESPAWN_WORLD_SIZE": str(n),
            "RESPAWN_ATTEMPT": "0",
        }
        command = [sys.executable, str(runner), str(n), str(child), str(tmp)]
        self.proc = subprocess.Popen([*command, *([str(tmp / "warm.py")] if warm else [])], env=env)

    def states(self) -> list[inplace.State]:
        path = self.dir / "states"
        lines = path.read_text().splitlines() if path.exists() else []
        return [s for line in lines if (s := inplace.decode_state(line)) is not None]

    def said(self, attempt: int, state: str) -> inplace.State:
        return wait_for(
            f"the supervisor to say {state} of attempt {attempt}",
            lambda: next((s for s in self.states() if (s.attempt, s.state) == (attempt, state)), None),
            60,
        )

    def command(self, attempt: int, *, run: bool, save_steps: int | None = None) -> None:
        path = self.dir / "command"
        path.with_suffix(".tmp").write_text(inplace.Command(attempt, run, save_steps).encode())
        path.with_suffix(".tmp").rename(path)

    def env(self, rank: int, attempt: int) -> dict[str, Any]:
        path = self.dir / f"rank_{rank}@{attempt}.json"
        wait_for(f"rank {rank} of attempt {attempt} to start", path.exists, 60)
        return dict(json.loads(path.read_text()))


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Any]:
    started: list[Pod] = []

    def start(n: int, plan: dict[str, Any], warm: bool = False) -> Pod:
        folder = tmp_path / f"pod{len(started)}"
        folder.mkdir()
        started.append(Pod(folder, n, plan, warm))
        return started[-1]

    yield start
    for pod in started:
        if pod.proc.poll() is None:
            pod.proc.kill()
        pod.proc.wait()


def test_a_failed_rank_is_said_and_the_pod_waits_for_the_next_attempt(pods: Any) -> None:
    pod = pods(2, {"1@0": {"exit": 137, "after": 0.5}, "0@1": {"exit": 0}, "1@1": {"exit": 0}})
    failing = pod.said(0, inplace.FAILING)
    assert failing.exit_code == 137 and "rank 1" in (failing.message or ""), failing
    stopped = pod.said(0, inplace.STOPPED)
    assert stopped.exit_code == 137, "the failure is still said once every rank is down"
    assert pod.proc.poll() is None, "the pod outlives its ranks"

    pod.command(1, run=False)  # the stop of a gang already stopped starts nothing
    pod.command(1, run=True, save_steps=40)
    assert pod.env(0, 1) | {"pid": None} == {
        "pid": None,
        "RESPAWN_RANK": "0",
        "RESPAWN_ATTEMPT": "1",
        "RESPAWN_SAVE_CHECKPOINT_STEPS": "40",
        "RESPAWN_RESTART_IN_PLACE": None,
    }
    pod.said(1, inplace.RUNNING)
    assert pod.proc.wait(timeout=60) == ExitCode.SUCCESS
    assert [(s.attempt, s.state) for s in pod.states()] == [
        (0, "running"),
        (0, "failing"),
        (0, "stopped"),
        (1, "running"),
    ]


def test_the_controller_stops_running_ranks_then_starts_them_again(pods: Any) -> None:
    pod = pods(1, {"0@2": {"exit": 0}})
    pod.env(0, 0)
    pod.command(2, run=False)
    stopped = pod.said(0, inplace.STOPPED)
    assert stopped.exit_code is None, "a stop on request is no failure"
    assert not (pod.dir / "rank_0@2.json").exists()
    pod.command(2, run=True)
    assert pod.env(0, 2)["RESPAWN_ATTEMPT"] == "2"
    assert pod.proc.wait(timeout=60) == ExitCode.SUCCESS


def test_an_old_command_starts_nothing_and_sigterm_ends_an_idle_pod(pods: Any) -> None:
    pod = pods(1, {"0@0": {"exit": 1}})
    pod.said(0, inplace.STOPPED)
    pod.command(0, run=True)  # not after the attempt that ran: stale
    assert pod.proc.poll() is None and not (pod.dir / "rank_0@1.json").exists()
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.proc.wait(timeout=30) == ExitCode.STOPPED


def test_sigterm_to_a_running_pod_stops_its_ranks_and_ends_it(pods: Any) -> None:
    pod = pods(2, {})
    pod.env(0, 0)
    pod.env(1, 0)
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.proc.wait(timeout=30) == ExitCode.STOPPED
    assert [s.state for s in pod.states()] == ["running"], "the pod is going: nothing more to say"


def test_the_next_attempt_runs_in_processes_started_while_the_gang_stopped(pods: Any) -> None:
    pod = pods(2, {"0@0": {"exit": 1, "after": 0.3}, "0@1": {"exit": 0}, "1@1": {"exit": 0}}, warm=True)
    pod.said(0, inplace.STOPPED)

    def spares() -> set[int] | None:
        found = {int(p.name.split("_")[1]) for p in pod.dir.glob("spare_*")}
        return found if len(found) == 2 else None

    warm = wait_for("a warm process per local rank", spares, 60)
    pod.command(1, run=True)
    assert {pod.env(0, 1)["pid"], pod.env(1, 1)["pid"]} == warm
    assert pod.env(1, 1)["RESPAWN_ATTEMPT"] == "1"
    assert pod.proc.wait(timeout=60) == ExitCode.SUCCESS


def test_warm_processes_start_once_the_ranks_are_past_their_start_up(pods: Any) -> None:
    pod = pods(1, {"0@1": {"exit": 0}}, warm=True)
    pod.env(0, 0)
    assert not list(pod.dir.glob("spare_*")), "none while the ranks start: they would slow them down"
    (pod.dir / "trained@0").touch()  # the ranks reported their first steps
    spare = wait_for("a warm process ahead of any failure", lambda: list(pod.dir.glob("spare_*")), 60)
    assert pod.proc.poll() is None and [s.state for s in pod.states()] == ["running"]
    pod.command(1, run=False)
    pod.said(0, inplace.STOPPED)
    pod.command(1, run=True)
    assert pod.env(0, 1)["pid"] == int(spare[0].name.split("_")[1])
    assert pod.proc.wait(timeout=60) == ExitCode.SUCCESS
