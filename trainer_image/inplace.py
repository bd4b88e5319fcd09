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

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Protocol

from respawn_protocol import contract, report
from respawn_protocol import inplace as protocol
from respawn_protocol.contract import ExitCode
from respawn_protocol.inplace import Command, State
from trainer_image.supervisor import Child, Supervisor
from trainer_image.training.report import now_text, pod_patcher

log = logging.getLogger("trainer_image.inplace")
WATCH_SECONDS = 300  # one watch request's length; the channel reconnects after it
RETRY = 1.0  # seconds between attempts at an API call that failed
_IDLE_POLL = 0.05


class Channel(Protocol):
    """The pod's two annotations: the controller's command in, the supervisor's state out."""

    def command(self) -> Command | None: ...

    def say(self, state: State) -> None: ...

    def close(self, timeout: float) -> None: ...


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(protocol.ENV, "").strip().lower() in ("1", "true", "yes")


class PodChannel:
    """Watches this pod (by name: RBAC lets the worker see only its own pods) for the command, and
    writes the state from a thread of its own, the newest only, retried until it gets through."""

    def __init__(self, namespace: str, pod: str) -> None:
        self._namespace, self._pod = namespace, pod
        self._patch = pod_patcher(namespace, pod)
        self._lock = threading.Condition()
        self._command: Command | None = None
        self._pending: State | None = None
        self._closing = False
        threading.Thread(target=self._watch, name="inplace-watch", daemon=True).start()
        self._writer = threading.Thread(target=self._write, name="inplace-state", daemon=True)
        self._writer.start()

    def command(self) -> Command | None:
        with self._lock:
            return self._command

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
                    if command is not None:
                        with self._lock:
                            self._command = command
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
        make: Callable[..., Supervisor] = Supervisor,
    ) -> None:
        self.command, self.environ, self.n = list(command), dict(environ), n
        self.channel = channel
        self.make = make
        self.attempt = int(self.environ.get(contract.ATTEMPT, "0") or 0)
        self.terminated: int | None = None  # a signal while no rank runs

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
        supervisor = self.make(
            self.command,
            environ,
            self.n,
            should_stop=lambda: self._told_to_stop(attempt),
            on_failure=lambda child: self.channel.say(self._state(protocol.FAILING, child)),
        )
        self.channel.say(State(attempt, protocol.RUNNING, now_text()))
        return supervisor.run(), supervisor

    def _told_to_stop(self, attempt: int) -> bool:
        command = self.channel.command()
        return command is not None and command.attempt > attempt

    def _state(self, state: str, cause: Child | None) -> State:
        if cause is None:
            return State(self.attempt, state, now_text())
        return State(self.attempt, state, now_text(), cause.code, cause.describe(self.n))

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
    return InPlace(command, child_environ, n, PodChannel(namespace, pod)).run()
