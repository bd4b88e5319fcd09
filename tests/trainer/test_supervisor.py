"""Several ranks per pod (trainer_image/supervisor.py), with fake ranks: small scripts that record
their environment and then exit, die or wait for a signal as each test plans. The supervisor runs in
its own process, as in a pod, so the tests can signal and kill it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode, PreflightCheck, preflight_check, preflight_message
from tests.support import REPO
from tests.support.poll import poll, wait_for
from trainer_image.config import ConfigError
from trainer_image.supervisor import check_ranks, child_env, ranks_per_pod

# A rank: writes its environment to OUT/rank_<RANK>.json, then follows PLAN[rank]: "exit" with a code,
# or die by "signal", after "after" seconds; otherwise wait. SIGTERM and SIGINT exit "on_term"
# (default 75), or are ignored with "ignore".
FAKE_RANK = """
import json, os, signal, sys, time
rank = os.environ["RESPAWN_RANK"]
plan = json.loads(os.environ["PLAN"]).get(rank, {})
on_term = plan.get("on_term", 75)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN if on_term == "ignore" else lambda *_: os._exit(on_term))
keys = ("RESPAWN_RANK", "RESPAWN_RANKS_PER_POD", "RESPAWN_WORLD_SIZE", "MS_NODE_ID", "MS_NODE_RANK",
        "MS_LOCAL_WORKER", "DEVICE_ID", "RANK_ID", "KEEP")
out = os.path.join(os.environ["OUT"], f"rank_{rank}.json")
with open(out + ".tmp", "w") as f:
    json.dump({k: os.environ.get(k) for k in keys} | {"pid": os.getpid()}, f)
os.rename(out + ".tmp", out)
time.sleep(plan.get("after", 0))
if "say" in plan:  # as a rank's pre-flight failure writes the termination log
    with open(os.environ["SAY"], "w") as f:
        f.write(plan["say"])
if "exit" in plan:
    sys.exit(plan["exit"])
if "signal" in plan:
    os.kill(os.getpid(), plan["signal"])
while True:
    time.sleep(0.05)
"""

RUN_SUPERVISOR = """
import logging, os, sys
from pathlib import Path
from trainer_image.supervisor import Supervisor
logging.basicConfig(level=logging.INFO)
n, child, log, kill_after = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
sys.exit(Supervisor([sys.executable, child], os.environ, n, termination_log=log, kill_after=kill_after).run())
"""


class Pod:
    """A supervisor process over `n` fake ranks, the pod's first rank being `first`."""

    def __init__(self, tmp: Path, n: int, plan: dict[int, Any], *, first: int = 2, kill_after: float = 2.0):
        self.out = tmp / "out"
        self.out.mkdir(parents=True)
        self.n, self.first = n, first
        self.termination_log = tmp / "termination-log"
        self.termination_log.write_text("")
        child = tmp / "rank.py"
        child.write_text(FAKE_RANK)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OUT": str(self.out),
            "PLAN": json.dumps({str(first + local): p for local, p in plan.items()}),
            "KEEP": "kept",
            "SAY": str(self.termination_log),
            "RESPAWN_RANK": str(first),
            "RESPAWN_RANKS_PER_POD": str(n),
            "RESPAWN_WORLD_SIZE": str(first + n),
            "MS_NODE_ID": str(first),
            "MS_NODE_RANK": "1",
            "MS_LOCAL_WORKER": str(n),
        }
        argv = [sys.executable, "-c", RUN_SUPERVISOR, str(n), str(child), str(self.termination_log)]
        self.proc = subprocess.Popen([*argv, str(kill_after)], env=env, stderr=subprocess.PIPE)

    def envs(self) -> dict[int, dict[str, Any]]:
        found = {}
        for path in self.out.glob("rank_*.json"):
            found[int(path.stem.split("_")[1])] = json.loads(path.read_text())
        return found

    def started(self) -> dict[int, dict[str, Any]]:
        return wait_for("every rank to start", lambda: len(self.envs()) == self.n and self.envs())

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        assert self.proc.stderr is not None
        self.log = self.proc.stderr.read().decode()
        return code

    def said(self) -> str:
        return self.termination_log.read_text()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Any]:
    made: list[Pod] = []

    def make(n: int, plan: dict[int, Any], **kw: Any) -> Pod:
        pod = Pod(tmp_path / f"pod{len(made)}", n, plan, **kw)
        made.append(pod)
        return pod

    yield make
    for pod in made:
        if pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait()
        for env in pod.envs().values():
            _kill(env["pid"])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent may not have reaped it yet).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_each_process_gets_its_own_rank_and_the_pod_succeeds_when_all_do(pods: Any) -> None:
    pod = pods(3, {local: {"exit": 0} for local in range(3)})
    assert pod.wait() == ExitCode.SUCCESS
    envs = pod.envs()
    assert sorted(envs) == [2, 3, 4]
    for local, rank in enumerate((2, 3, 4)):
        env = envs[rank]
        assert env["RESPAWN_RANK"] == env["MS_NODE_ID"] == env["RANK_ID"] == str(rank)
        assert (env["RESPAWN_RANKS_PER_POD"], env["DEVICE_ID"]) == ("1", str(local))
        # The rest is the pod's: the gang's size, the pod's index, its number of local workers.
        assert (env["RESPAWN_WORLD_SIZE"], env["MS_NODE_RANK"], env["MS_LOCAL_WORKER"]) == ("5", "1", "3")
        assert env["KEEP"] == "kept"
    assert pod.said() == "", "nothing to say about a success"


@pytest.mark.parametrize(
    ("plan", "code", "said"),
    [
        ({1: {"exit": 3, "after": 0.3}}, 3, "rank 3 (local rank 1 of 2, pid {pid}) exited with code 3"),
        (
            {0: {"signal": 9, "after": 0.3}},
            137,
            "rank 2 (local rank 0 of 2, pid {pid}) was killed by SIGKILL",
        ),
        ({0: {"exit": 78, "after": 0.3}}, 78, "rank 2 (local rank 0 of 2, pid {pid}) exited with code 78"),
    ],
)
def test_one_rank_failing_stops_the_others_and_the_pod_fails_with_its_code(
    pods: Any, plan: dict[int, Any], code: int, said: str
) -> None:
    pod = pods(2, plan)
    envs = pod.started()
    assert pod.wait() == code
    (failed,) = plan
    assert pod.said() == said.format(pid=envs[2 + failed]["pid"]) + "\n"
    assert not any(alive(e["pid"]) for e in envs.values())
    assert said.format(pid=envs[2 + failed]["pid"]) in pod.log


def test_ranks_that_ignore_sigterm_are_killed_after_the_bound(pods: Any) -> None:
    pod = pods(
        3, {0: {"exit": 1, "after": 0.3}, 1: {"on_term": "ignore"}, 2: {"on_term": "ignore"}}, kill_after=1.0
    )
    envs = pod.started()
    start = time.monotonic()
    assert pod.wait() == 1, "the first failure's code, not the SIGKILLed ranks' 137"
    assert time.monotonic() - start < 10
    assert pod.said().startswith("rank 2 (local rank 0 of 3")
    assert not any(alive(e["pid"]) for e in envs.values())


@pytest.mark.parametrize(
    ("on_term", "code", "culprit"),
    [
        ((75, 75), ExitCode.STOPPED, None),
        ((0, 75), ExitCode.STOPPED, None),
        ((0, 0), ExitCode.SUCCESS, None),
        ((75, 143), ExitCode.TERMINATED, 3),
    ],
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_is_passed_to_every_rank_and_their_codes_make_the_pods(
    pods: Any, on_term: tuple[int, int], code: int, culprit: int | None, sig: int
) -> None:
    pod = pods(2, {local: {"on_term": c} for local, c in enumerate(on_term)})
    pod.started()
    pod.proc.send_signal(sig)
    assert pod.wait() == code
    if culprit is None:
        assert pod.said() == ""
    else:
        assert pod.said().startswith(f"rank {culprit} (local rank 1 of 2")


def test_ranks_die_with_a_killed_supervisor(pods: Any) -> None:
    pod = pods(2, {})
    envs = pod.started()
    pod.proc.kill()
    pod.wait()
    assert poll(lambda: not any(alive(e["pid"]) for e in envs.values()), 10)


def test_no_termination_message_file_is_created_where_there_is_none(pods: Any) -> None:
    pod = pods(2, {1: {"exit": 5, "after": 0.3}})
    pod.termination_log.unlink()
    pod.started()
    assert pod.wait() == 5
    assert not pod.termination_log.exists()


@pytest.mark.parametrize(("value", "n"), [(None, 1), ("", 1), ("1", 1), ("8", 8)])
def test_ranks_per_pod_defaults_to_one(value: str | None, n: int) -> None:
    assert ranks_per_pod({} if value is None else {"RESPAWN_RANKS_PER_POD": value}) == n


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_ranks_per_pod_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="RESPAWN_RANKS_PER_POD"):
        ranks_per_pod({"RESPAWN_RANKS_PER_POD": value})


def test_the_pods_ranks_must_fit_the_gang() -> None:
    check_ranks({"RESPAWN_RANK": "6", "RESPAWN_WORLD_SIZE": "8"}, 2)
    with pytest.raises(ConfigError, match="does not fit"):
        check_ranks({"RESPAWN_RANK": "7", "RESPAWN_WORLD_SIZE": "8"}, 2)
    assert child_env({"RESPAWN_RANK": "6"}, 1)["RESPAWN_RANK"] == "7"


def test_the_entry_point_refuses_a_bad_ranks_per_pod_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESPAWN_RANKS_PER_POD": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(tmp_path / "none.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == ExitCode.CONFIG_ERROR, run.stderr
    assert "RESPAWN_RANKS_PER_POD" in run.stderr
    env |= {"RESPAWN_RANKS_PER_POD": "2", "RESPAWN_RANK": "1", "RESPAWN_WORLD_SIZE": "2"}
    run = subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(tmp_path / "none.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == ExitCode.CONFIG_ERROR and "does not fit" in run.stderr, run.stderr


def test_a_rank_s_preflight_failure_keeps_its_check_first_in_the_message(pods: Any) -> None:
    """The controller avoids the node for a check of the node's: it must still read the check."""
    said = preflight_message(PreflightCheck.FREE_SPACE, "/out has 1.0 MiB free")
    pod = pods(2, {1: {"say": said, "exit": ExitCode.PREFLIGHT_FAILED}})
    assert pod.wait() == ExitCode.PREFLIGHT_FAILED
    first = pod.said().splitlines()[0]
    assert preflight_check(first) is PreflightCheck.FREE_SPACE
    assert first.startswith(said) and "rank 3 (local rank 1 of 2" in first
    other = pods(2, {1: {"say": said, "exit": 1}})  # only a 74 carries the rank's line
    assert other.wait() == 1 and other.said().startswith("rank 3 ")
