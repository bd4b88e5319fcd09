"""Several ranks in one pod: one trainer process per rank, supervised as one unit.

With `RESPAWN_RANKS_PER_POD` = n > 1 (the TrainingJob's `spec.ranksPerPod`, msrun's
`local_worker_num`), `python -m trainer_image ARGS` is this supervisor. It starts n children
`python -m trainer_image ARGS`, local rank l with `RESPAWN_RANK` = the pod's first rank + l,
`RESPAWN_RANKS_PER_POD=1` (each child trains exactly one rank and writes `rank_<RANK>/`),
`MS_NODE_ID` and `RANK_ID` = its rank and `DEVICE_ID` = l, as msrun does; everything else is
inherited (`ASCEND_RT_VISIBLE_DEVICES` too). Their output goes to the pod's log unchanged.

The pod lives and dies as one: when a child exits non-zero (or is killed) before the pod was asked
to stop, the others get SIGTERM and, `KILL_AFTER` seconds later, SIGKILL (a data-parallel peer of a
dead rank is stuck in a collective), and the supervisor exits with that first failing rank's code
(128 + N for a child killed by signal N) after writing one line naming the rank to the container's
termination message file, which the controller quotes in the job's `lastFailure`. SIGTERM and
SIGINT are passed to every child; the pod then exits 0 if every child did, 75 (STOPPED) if every
child exited 0 or 75, else the first other code. Children get `PR_SET_PDEATHSIG`: a supervisor
killed outright takes them with it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from respawn_protocol import contract
from respawn_protocol.contract import ExitCode
from trainer_image.config import ConfigError
from trainer_image.training.parallel import _die_with_parent

log = logging.getLogger("trainer_image.supervisor")

# Kubernetes' default terminationMessagePath; written only if the runtime mounted it.
TERMINATION_LOG = Path("/dev/termination-log")
KILL_AFTER = 3.0  # seconds from SIGTERM to SIGKILL for the ranks of a pod whose rank failed
STOP_GRACE = 30.0  # ... for ranks the controller stops (in place): they may be committing a save
_POLL = 0.05
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def ranks_per_pod(environ: Mapping[str, str]) -> int:
    """`RESPAWN_RANKS_PER_POD`, 1 when unset."""
    value = environ.get(contract.RANKS_PER_POD, "").strip() or "1"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{contract.RANKS_PER_POD}={value!r}: expected an integer >= 1")
    return n


def child_env(environ: Mapping[str, str], local: int) -> dict[str, str]:
    """The environment of local rank `local`: the pod's, with the rank made its own."""
    rank = int(environ.get(contract.RANK, "0")) + local
    return {
        **environ,
        contract.RANK: str(rank),
        contract.RANKS_PER_POD: "1",
        contract.MS_NODE_ID: str(rank),
        "RANK_ID": str(rank),
        "DEVICE_ID": str(local),
    }


def check_ranks(environ: Mapping[str, str], n: int) -> None:
    """The pod's ranks must lie inside the gang, or the children would all fail the same way."""
    try:
        first = int(environ.get(contract.RANK, "0"))
        world = int(environ.get(contract.WORLD_SIZE, str(n)))
    except ValueError as e:
        raise ConfigError(f"{contract.RANK}/{contract.WORLD_SIZE}: {e}") from e
    if first < 0 or first + n > world:
        raise ConfigError(
            f"{contract.RANK}={first} with {contract.RANKS_PER_POD}={n} does not fit "
            f"{contract.WORLD_SIZE}={world}"
        )


@dataclass
class Child:
    rank: int
    local: int
    proc: subprocess.Popen[bytes]
    code: int | None = None  # the exit code as a shell reports it (128 + N after signal N)
    signal: int | None = None

    def describe(self, n: int) -> str:
        how = (
            f"was killed by {signal.Signals(self.signal).name}"
            if self.signal is not None
            else f"exited with code {self.code}"
        )
        return f"rank {self.rank} (local rank {self.local} of {n}, pid {self.proc.pid}) {how}"


class Supervisor:
    """Start, watch and stop the pod's ranks; `run()` returns the pod's exit code."""

    def __init__(
        self,
        command: Sequence[str],
        environ: Mapping[str, str],
        n: int,
        *,
        termination_log: Path = TERMINATION_LOG,
        kill_after: float = KILL_AFTER,
        should_stop: Callable[[], bool] | None = None,
        stop_grace: float = STOP_GRACE,
        on_failure: Callable[[Child], None] | None = None,
        spawn: Callable[[int, dict[str, str]], subprocess.Popen[bytes]] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.command = list(command)
        self.environ = dict(environ)
        self.n = n
        self.termination_log = termination_log
        self.kill_after = kill_after
        self.children: list[Child] = []
        self.exited: list[Child] = []  # in the order they exited
        self.cause: Child | None = None  # the first rank that failed on its own
        self.stopping = False  # asked to stop, by a signal or by `should_stop`
        self.signalled = False  # by a signal: the pod is going
        self.kill_at: float | None = None
        # In place (trainer_image/inplace.py): the controller's word to stop the ranks, and who to
        # tell at once when one fails on its own.
        self.should_stop = should_stop
        self.stop_grace = stop_grace
        self.on_failure = on_failure
        self.spawn = spawn or self._popen  # (local rank, its environment) -> its process
        self.stop_signal = stop_signal  # what `should_stop` sends the ranks

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _FORWARDED}
        try:
            try:
                self._start()
            except OSError as e:
                log.error("cannot start the pod's ranks: %s", e)
                self._terminate(time.monotonic(), self.kill_after)
                self._wait()
                return ExitCode.FAILED
            self._wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish()

    def _popen(self, _local: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _start(self) -> None:
        for local in range(self.n):
            proc = self.spawn(local, child_env(self.environ, local))
            child = Child(int(self.environ.get(contract.RANK, "0")) + local, local, proc)
            self.children.append(child)
            log.info("started rank %d (local rank %d of %d) as pid %d", child.rank, local, self.n, proc.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = self.signalled = True
        for child in self._live():
            _send(child, signum)

    def _live(self) -> list[Child]:
        return [c for c in self.children if c.code is None]

    def _wait(self) -> None:
        while self._live():
            for child in self._live():
                returncode = child.proc.poll()
                if returncode is not None:
                    self._exited(child, returncode)
            if not self.stopping and self.should_stop is not None and self.should_stop():
                # SIGTERM: a rank in a step commits it and stops, one blocked in a collective with a
                # dead peer leaves within its own deadline (training/stop.py); SIGKILL after the grace.
                self.stopping = True
                if self.kill_at is None:
                    self._terminate(time.monotonic(), self.stop_grace, self.stop_signal)
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                for child in self._live():
                    _send(child, signal.SIGKILL)
                self.kill_at = None
            time.sleep(_POLL)

    def _exited(self, child: Child, returncode: int) -> None:
        child.signal = -returncode if returncode < 0 else None
        child.code = 128 - returncode if returncode < 0 else returncode
        self.exited.append(child)
        log.info("%s", child.describe(self.n))
        if child.code != 0 and self.cause is None and not self.stopping and self.kill_at is None:
            self.cause = child
            log.error("%s: stopping the pod's other ranks", child.describe(self.n))
            if self.on_failure is not None:
                self.on_failure(child)
            self._terminate(time.monotonic(), self.kill_after)

    def _terminate(self, now: float, grace: float, sig: int = signal.SIGTERM) -> None:
        for child in self._live():
            _send(child, sig)
        self.kill_at = now + grace

    def _finish(self) -> int:
        """The pod's exit code; a failure is also written to the termination message file."""
        failed = self.cause or next(
            (c for c in self.exited if c.code not in (ExitCode.SUCCESS, ExitCode.STOPPED)), None
        )
        if failed is not None:
            assert failed.code is not None
            self._say(self.failure_message(failed))
            return failed.code
        if any(c.code == ExitCode.STOPPED for c in self.exited):
            return ExitCode.STOPPED
        return ExitCode.SUCCESS

    def failure_message(self, failed: Child) -> str:
        """What the pod says of its failing rank: which rank and how it ended; a pre-flight
        failure's check first, as the rank wrote it."""
        message = failed.describe(self.n)
        if failed.code == ExitCode.PREFLIGHT_FAILED:
            message = _after_preflight(self.termination_log, message)
        return message

    def _say(self, message: str) -> None:
        if not self.termination_log.exists():
            return  # not in a container that has one: never create it
        try:
            self.termination_log.write_text(message + "\n")
        except OSError as e:
            log.warning("cannot write %s: %s", self.termination_log, e)


def _after_preflight(path: Path, message: str) -> str:
    """A rank that failed its pre-flight check wrote the check to the same file (training/preflight.py):
    keep that line first, where the controller reads which check failed (the ranks share a node)."""
    with contextlib.suppress(OSError):
        said = path.read_text(errors="replace").strip().split("\n", 1)[0]
        if contract.preflight_check(said) is not None:
            return f"{said} ({message})"
    return message


def _send(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.proc.send_signal(sig)


def supervise(args: Sequence[str], environ: Mapping[str, str], n: int) -> int:
    """`python -m trainer_image ARGS` once per rank of the pod; the pod's exit code."""
    try:
        check_ranks(environ, n)
    except ConfigError as e:
        log.error("permanent error: %s", e)
        return ExitCode.CONFIG_ERROR
    return Supervisor([sys.executable, "-m", "trainer_image", *args], environ, n).run()
