"""The pod's supervisor when the job restarts in place (respawn_protocol/inplace.py says the protocol).

`python -m trainer_image ARGS` with `RESPAWN_RESTART_IN_PLACE` set runs the pod's ranks as children
(trainer_image/supervisor.py, one per rank, also for a pod of one rank) and outlives them: when a
rank fails, the pod's other ranks are stopped, the failure is said on the pod, and the supervisor
waits for the controller's word instead of exiting. The controller first tells every pod of the
gang to stop (the survivors leave as on SIGTERM), then, once all have stopped, to start attempt N:
the ranks start again with `RESPAWN_ATTEMPT` = N in the same pod, on the same node, with the
node's page cache and the compile cache warm.

The pod ends as before: 0 when every rank finished, and on SIGTERM (the pod deleted: an eviction,
a node drain, the gang recreated) the ranks get it and the supervisor exits with their code.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Protocol

from respawn_protocol import contract, report
from respawn_protocol import inplace as protocol
from respawn_protocol.contract import ExitCode
from respawn_protocol.inplace import Command, State
from trainer_image.supervisor import Child, Supervisor, child_env
from trainer_image.training.parallel import _die_with_parent
from trainer_image.training.report import now_text, pod_patcher
from trainer_image.training.stop import PEER_GONE

log = logging.getLogger("trainer_image.inplace")
WATCH_SECONDS = 300  # one watch request's length; the channel reconnects after it
RETRY = 1.0  # seconds between attempts at an API call that failed
WARM_ENV = "RESPAWN_WARM_START"  # "off": the next attempt's processes start only when it does
_IDLE_POLL = 0.05


class Channel(Protocol):
    """The pod's two annotations: the controller's command in, the supervisor's state out."""

    def command(self) -> Command | None: ...

    def trained(self, attempt: int) -> bool:
        """Every rank of the pod has reported its first steps of `attempt` (its start-up is over)."""
        ...

    def say(self, state: State) -> None: ...

    def close(self, timeout: float) -> None: ...


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(protocol.ENV, "").strip().lower() in ("1", "true", "yes")


class PodChannel:
    """Watches this pod (by name: RBAC lets the worker see only its own pods) for the command, and
    writes the state from a thread of its own, the newest only, retried until it gets through."""

    def __init__(self, namespace: str, pod: str, ranks: range) -> None:
        self._namespace, self._pod, self._ranks = namespace, pod, ranks
        self._patch = pod_patcher(namespace, pod)
        self._lock = threading.Condition()
        self._command: Command | None = None
        self._started: dict[int, int | None] = {}  # rank -> attempt of its last start-up report
        self._pending: State | None = None
        self._closing = False
        threading.Thread(target=self._watch, name="inplace-watch", daemon=True).start()
        self._writer = threading.Thread(target=self._write, name="inplace-state", daemon=True)
        self._writer.start()

    def command(self) -> Command | None:
        with self._lock:
            return self._command

    def trained(self, attempt: int) -> bool:
        with self._lock:
            return all(self._started.get(rank) == attempt for rank in self._ranks)

    def say(self, state: State) -> None:
        with self._lock:
            self._pending = state
            self._lock.notify_all()

    def close(self, timeout: float) -> None:
        """Let the last state out (bounded), then stop writing."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._writer.join(timeout)

    def _write(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closing:
                    self._lock.wait()
                state, self._pending = self._pending, None
            if state is None:
                return
            try:
                self._patch(protocol.STATE, state.encode())
            except Exception as e:  # the API server, the network: said again, the newest wins
                log.warning("could not tell the controller %s (%s); retrying", state.state, e)
                with self._lock:
                    self._pending = self._pending or state
                    if self._closing:
                        return
                time.sleep(RETRY)

    def _watch(self) -> None:
        from kubernetes import client, config, watch  # off the start-up path of a pod without it

        config.load_incluster_config()
        core = client.CoreV1Api()
        selector = f"metadata.name={self._pod}"
        while True:
            try:
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    self._namespace,
                    field_selector=selector,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 30,
                )
                for event in stream:
                    annotations = event["object"].metadata.annotations or {}
                    command = protocol.decode_command(annotations.get(protocol.COMMAND))
                    started = {r.rank: r.attempt for r in report.reports_of(annotations) if r.startup}
                    with self._lock:
                        self._command = command or self._command
                        self._started = started
                        self._lock.notify_all()
            except Exception as e:  # reconnect: a new watch lists the pod again first
                log.warning("watching pod %s/%s: %s; reconnecting", self._namespace, self._pod, e)
                time.sleep(RETRY)


class InPlace:
    """Runs attempt after attempt of the pod's ranks, as the controller says."""

    def __init__(
        self,
        command: Sequence[str],
        environ: Mapping[str, str],
        n: int,
        channel: Channel,
        *,
        warm_command: Sequence[str] | None = None,
    ) -> None:
        self.command, self.environ, self.n = list(command), dict(environ), n
        self.channel = channel
        self.attempt = int(self.environ.get(contract.ATTEMPT, "0") or 0)
        self.terminated: int | None = None  # a signal while no rank runs
        # trainer_image/warm.py: the next attempt's processes, importing while this one stops.
        self.warm_command = list(warm_command) if warm_command else None
        self.spares: dict[int, subprocess.Popen[bytes]] = {}
        self.current: Supervisor | None = None  # of the attempt running or last run

    def run(self) -> int:
        environ = self.environ
        while True:
            code, supervisor = self._one_attempt(environ)
            if supervisor.signalled:
                return self._end(code)
            cause = supervisor.cause
            if cause is None and not supervisor.stopping and code == ExitCode.SUCCESS:
                return self._end(code)  # every rank finished: the pod succeeds
            if cause is None and code != ExitCode.SUCCESS and not supervisor.stopping:
                cause = next((c for c in supervisor.exited if c.code not in (0, None)), None)
            self.channel.say(self._state(protocol.STOPPED, cause))
            start = self._wait_for_start()
            if start is None:
                return self._end(ExitCode.STOPPED)
            self.attempt = start.attempt
            environ = {**self.environ, contract.ATTEMPT: str(start.attempt)}
            if start.save_steps is not None:
                environ[contract.SAVE_CHECKPOINT_STEPS] = str(start.save_steps)
            log.info("attempt %d: starting the pod's ranks in place", start.attempt)

    def _one_attempt(self, environ: Mapping[str, str]) -> tuple[int, Supervisor]:
        attempt = self.attempt
        supervisor = self.current = Supervisor(
            self.command,
            environ,
            self.n,
            should_stop=lambda: self._poll(attempt),
            on_failure=self._failed,
            spawn=self._spawn,
            # The controller stops a gang in place only when one of its ranks failed: the others
            # are blocked in a collective with it, or soon will be (training/stop.py, PEER_GONE).
            stop_signal=PEER_GONE,
        )
        self.channel.say(State(attempt, protocol.RUNNING, now_text()))
        return supervisor.run(), supervisor

    def _failed(self, child: Child) -> None:
        self.channel.say(self._state(protocol.FAILING, child))
        self._warm()

    def _poll(self, attempt: int) -> bool:
        """While the ranks run: whether the controller said to stop them. The next attempt's warm
        processes start once the ranks are past their start-up (so they do not slow it down), or
        with the stop at the latest."""
        command = self.channel.command()
        stop = command is not None and command.attempt > attempt
        if stop or self.channel.trained(attempt):
            self._warm()
        return stop

    def _warm(self) -> None:
        """Start the next attempt's processes now, one per local rank, unless they run already."""
        if self.warm_command is None or self.spares:
            return
        for local in range(self.n):
            try:
                self.spares[local] = subprocess.Popen(
                    self.warm_command,
                    env=child_env(self.environ, local),
                    stdin=subprocess.PIPE,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            except OSError as e:
                log.warning("cannot start a warm process for local rank %d: %s", local, e)

    def _spawn(self, local: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """The warm process of this local rank, given its environment; a new one without it."""
        spare = self.spares.pop(local, None)
        if spare is not None and spare.poll() is None and spare.stdin is not None:
            try:
                spare.stdin.write(json.dumps(env).encode() + b"\n")
                spare.stdin.close()
                return spare
            except OSError:
                spare.kill()
        return subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _state(self, state: str, cause: Child | None) -> State:
        if cause is None or self.current is None:
            return State(self.attempt, state, now_text())
        return State(self.attempt, state, now_text(), cause.code, self.current.failure_message(cause))

    def _wait_for_start(self) -> Command | None:
        """The controller's start of a later attempt; None when the pod is being deleted (SIGTERM)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.terminated is None:
                command = self.channel.command()
                if command is not None and command.run and command.attempt > self.attempt:
                    return command
                time.sleep(_IDLE_POLL)
            return None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.terminated = signum

    def _end(self, code: int) -> int:
        for spare in self.spares.values():
            spare.kill()
            spare.wait()
        self.channel.close(timeout=3.0)
        return code


def serve(args: Sequence[str], environ: Mapping[str, str], n: int) -> int:
    """`python -m trainer_image ARGS` per rank, restarted in place; the pod's exit code."""
    pod, namespace = environ.get(report.POD_NAME), environ.get(report.POD_NAMESPACE)
    command = [sys.executable, "-m", "trainer_image", *args]
    child_environ = {**environ, contract.RANKS_PER_POD: str(n), protocol.ENV: ""}
    if not pod or not namespace:  # not in a pod of the controller's: nobody to wait for
        log.warning("%s set outside a respawn pod: ranks are not restarted in place", protocol.ENV)
        return Supervisor(command, child_environ, n).run()
    warm = (
        None
        if environ.get(WARM_ENV, "").lower() in ("0", "false", "off")
        else [*command[:2], "trainer_image.warm", *args]
    )
    first = int(environ.get(contract.RANK, "0"))
    channel = PodChannel(namespace, pod, range(first, first + n))
    return InPlace(command, child_environ, n, channel, warm_command=warm).run()
