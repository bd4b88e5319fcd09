"""Data-parallel training across processes: join MindSpore's dynamic cluster, agree on the resume step.

The controller starts one pod per rank, all with `MS_ROLE=MS_WORKER`, and points `MS_SCHED_HOST:PORT`
at rank 0's pod. MindSpore's dynamic cluster also needs one process with `MS_ROLE=MS_SCHED`, so rank 0
starts it as a child process before `mindspore.communication.init()`. The child dies with its parent
(`PR_SET_PDEATHSIG`, and explicitly on close), so a killed rank 0 leaves no scheduler behind.

A lost peer makes the survivors' next collective fail or hang; the controller restarts the whole gang,
which is the only recovery MindSpore supports.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from respawn_protocol import contract
from respawn_protocol.layout import StepKey
from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.training import rendezvous

log = logging.getLogger("trainer_image.training.parallel")

# The scheduler ignores SIGTERM: a pod's whole process group may get it (the local node agent sends
# it to the group), and the gang still needs the scheduler until the ranks have agreed to stop. It
# ends with rank 0 (PR_SET_PDEATHSIG, `close`).
_SCHEDULER = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "from mindspore.communication import init; init()"
)
_NO_STEP = (-1, -1)
SCHEDULER_LOOKUP_TIMEOUT = 300.0  # rank 0's pod gets its DNS record when it starts; wait for it
# MindSpore 2.10 waits a random whole number of seconds, 3 to 5 by default, between a worker's
# heartbeats to the scheduler, and a worker learns from a heartbeat's answer that every rank has
# registered: up to 5 s after the last rank joined. The CPU collectives poll the scheduler for the
# peers' host names and the group id at the same interval. One second costs the scheduler a few
# small messages a second per rank; the number of polls is fixed (from MS_NODE_TIMEOUT), so a group
# that never forms is given up after a third of the time, still minutes. The pod's values win.
RENDEZVOUS_DEFAULTS = {"MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "1"}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Cluster:
    """This process's membership in the gang; `close()` stops the scheduler child (rank 0)."""

    def __init__(self, rank: int, world_size: int, scheduler: subprocess.Popen[bytes] | None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.scheduler = scheduler
        self._all_gather: Any = None

    @classmethod
    def prepare(cls, *, rank: int, world_size: int, environ: MutableMapping[str, str]) -> Cluster:
        """Set the dynamic-cluster variables (the controller's win) and start the scheduler on rank 0.
        Needs no MindSpore import: called before it, the scheduler's own import (~2 s) overlaps
        this process's."""
        for name in (contract.MS_SCHED_HOST, contract.MS_SCHED_PORT):
            if not environ.get(name):
                raise ConfigError(f"use_parallel with {world_size} ranks needs {name} in the environment")
        environ.setdefault(contract.MS_WORKER_NUM, str(world_size))
        environ.setdefault(contract.MS_LOCAL_WORKER, "1")
        environ.setdefault(contract.MS_NODE_ID, str(rank))
        environ.setdefault(contract.MS_NODE_RANK, str(rank))
        for name, value in RENDEZVOUS_DEFAULTS.items():
            environ.setdefault(name, value)
        environ[contract.MS_ROLE] = "MS_WORKER"
        # MindSpore only parses an IP here; the controller gives rank 0's DNS name.
        environ[contract.MS_SCHED_HOST] = scheduler_ip(environ[contract.MS_SCHED_HOST])
        if environ[contract.MS_WORKER_NUM] != str(world_size):
            raise ConfigError(
                f"{contract.MS_WORKER_NUM}={environ[contract.MS_WORKER_NUM]} but "
                f"{contract.WORLD_SIZE}={world_size}"
            )
        log.info("joining the cluster as rank %d of %d", rank, world_size)
        return cls(rank, world_size, _start_scheduler(environ) if rank == 0 else None)

    @classmethod
    def join(
        cls,
        config: TrainerConfig,
        *,
        rank: int,
        world_size: int,
        environ: MutableMapping[str, str],
        phase: Callable[[str, float], None] = lambda name, seconds: None,
        started: float | None = None,
    ) -> Cluster:
        """`prepare`, import MindSpore, `connect`; tells `phase` the import (since `started`, a
        perf_counter) and the rendezvous, which includes `prepare`."""
        t0 = time.perf_counter()
        cluster = cls.prepare(rank=rank, world_size=world_size, environ=environ)
        preparing = time.perf_counter() - t0
        try:
            import mindspore  # noqa: F401  (timed apart from the rendezvous)
        except BaseException:
            cluster.close()
            raise
        joining = time.perf_counter()
        phase("import", joining - (t0 if started is None else started) - preparing)
        cluster.connect(config)
        phase("rendezvous", time.perf_counter() - joining + preparing)
        return cluster

    def connect(self, config: TrainerConfig) -> None:
        """`init()`, and switch MindSpore to data parallel with averaged gradients; on failure the
        scheduler child is stopped."""
        rank, world_size = self.rank, self.world_size
        try:
            import mindspore as ms
            from mindspore.communication import get_group_size, get_rank, init

            ms.set_context(mode=config.context.mode, device_target=config.context.device_target)
            with rendezvous.shortened(os.environ):
                init()
            if (get_rank(), get_group_size()) != (rank, world_size):
                raise RuntimeError(
                    f"MindSpore assigned rank {get_rank()} of {get_group_size()}, "
                    f"the controller said {rank} of {world_size}"
                )
            ms.set_auto_parallel_context(
                parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world_size
            )
        except BaseException:
            self.close()
            raise
        log.info("joined the cluster as rank %d of %d", rank, world_size)

    def gather(self, values: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Every rank's `values` (same length everywhere), in rank order."""
        import numpy as np
        from mindspore import Tensor, ops

        if self._all_gather is None:
            self._all_gather = ops.AllGather()
        out = self._all_gather(Tensor(np.array(values, dtype=np.int64)))
        flat = [int(v) for v in out.asnumpy().reshape(-1)]
        n = len(values)
        return [tuple(flat[i * n : (i + 1) * n]) for i in range(self.world_size)]

    def agree(self, key: StepKey | None) -> tuple[StepKey | None, bool]:
        """The oldest of the ranks' resume steps (None = random init, older than any step), and
        whether every rank gave that answer. Every rank calls it the same number of times."""
        answers = self.gather(_NO_STEP if key is None else (key.epoch, key.step))
        oldest = min(answers)
        return (None if oldest == _NO_STEP else StepKey(oldest[0], oldest[1])), len(set(answers)) == 1

    def any_of(self, flag: bool) -> bool:
        """Whether any rank passed True: the stop agreement after each step (stop.py)."""
        return any(v == (1,) for v in self.gather((int(flag),)))

    def barrier(self, ok: bool) -> bool:
        """Wait for every rank; True if every rank reported `ok`."""
        return all(v == (1,) for v in self.gather((int(ok),)))

    def close(self) -> None:
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.kill()
            self.scheduler.wait()
        self.scheduler = None


def scheduler_ip(
    host: str,
    *,
    timeout: float = SCHEDULER_LOOKUP_TIMEOUT,
    lookup: Callable[[str], str] = socket.gethostbyname,
) -> str:
    """`host` as an IPv4 address, retrying while the name does not resolve yet."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            return lookup(host)
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{contract.MS_SCHED_HOST}={host} did not resolve in {timeout:.0f}s: {e}"
                ) from e
            time.sleep(0.5)


# A scheduler started ahead (trainer_image/warm.py): MindSpore imported, `init()` once it is given
# the environment `prepare` made. It dies with the process that started it, as the scheduler does.
_WARM_SCHEDULER = (
    "import json, os, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "from mindspore.communication import init\n"
    "line = sys.stdin.readline()\n"
    "if not line: sys.exit(0)\n"
    "os.environ.clear(); os.environ.update(json.loads(line)); init()\n"
)
_warm: list[subprocess.Popen[bytes]] = []


def warm_scheduler(environ: Mapping[str, str]) -> None:
    """Start rank 0's scheduler process now, to be handed its environment by `prepare` later."""
    env = {**environ, contract.MS_ROLE: "MS_SCHED"}
    _warm.append(
        subprocess.Popen(
            [sys.executable, "-c", _WARM_SCHEDULER],
            env=env,
            stdin=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    )


def _start_scheduler(environ: MutableMapping[str, str]) -> subprocess.Popen[bytes]:
    env: dict[str, Any] = dict(environ)
    env[contract.MS_ROLE] = "MS_SCHED"
    log.info(
        "starting the MindSpore scheduler on %s:%s",
        environ[contract.MS_SCHED_HOST],
        environ[contract.MS_SCHED_PORT],
    )
    while _warm:
        proc = _warm.pop()
        if proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.write(json.dumps(env).encode() + b"\n")
                proc.stdin.close()
                return proc
            except OSError:
                proc.kill()
    return subprocess.Popen(
        [sys.executable, "-c", _SCHEDULER],
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def split_owners(sizes: dict[str, int], world_size: int) -> dict[str, int]:
    """remove_redundancy: parameter name -> the one rank that saves it, balancing bytes greedily
    (largest first, ties by name), so it is the same on every rank and every run."""
    load = [0] * world_size
    owners = {}
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[name] = rank
        load[rank] += size
    return owners
