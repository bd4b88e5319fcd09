"""Reports to the controller: this rank's progress, commits and start-up timings, as an annotation on
its own pod (respawn_protocol/report.py says why and what).

A background thread does the sending, so a slow or unreachable API server never holds up a step:
the loop only updates the state under a lock. Commits and start-up timings go out at once; rank 0's
progress goes out at most every `interval` seconds and only when the step moved. A failed write is
retried with the next change or interval; `close` gives the last commit (the one a stop makes) a
bounded time to get out. Outside Kubernetes (no pod name in the environment, no in-cluster
credentials) reporting is off and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from respawn_protocol import report as protocol
from respawn_protocol.report import Commit, Report, Upload

log = logging.getLogger("trainer_image.report")
Send = Callable[[str, str], None]  # (annotation key, value)
REQUEST_TIMEOUT = 5.0
DEFAULT_INTERVAL = 30.0


def now_text(at: float | None = None) -> str:
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def process_started() -> float:
    """Wall-clock time this process started: its start in ticks since boot (/proc/self/stat, field
    22) against CLOCK_BOOTTIME now, so the interpreter's own start-up is counted too. Now where
    /proc is not readable."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
    return time.time() - max(0.0, age)


def pod_patcher(namespace: str, pod: str) -> Send:
    """A JSON merge patch of one annotation on this pod, with the pod's ServiceAccount token."""
    state: dict[str, object] = {}

    def send(key: str, value: str) -> None:
        if "api" not in state:
            from kubernetes import client, config  # here: off the trainer's start-up path

            config.load_incluster_config()
            state["api"] = client.CoreV1Api()
        api = state["api"]
        body = {"metadata": {"annotations": {key: value}}}
        api.patch_namespaced_pod(pod, namespace, body, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[attr-defined]

    return send


class Reporter:
    def __init__(
        self,
        *,
        rank: int,
        attempt: int | None,
        send: Send | None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = protocol.annotation_key(rank)
        self._send = send
        self._heartbeat = rank == 0 and interval > 0
        self._interval = interval
        self._clock = clock
        self._state = Report(rank=rank, attempt=attempt)
        self._sent: Report | None = self._state  # nothing to say until the first step or commit
        self._urgent = False
        self._last_send = float("-inf")
        self._closing = False
        self._failures = 0
        self._timings: dict[str, float] = {}  # start-up phases, sent after the second step
        self._started_at = now_text(process_started())
        self._ready_at: str | None = None
        self._save_cost: float | None = None
        self._resumed_from: int | None = None
        self._steps = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if send is not None:
            self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
            self._thread.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, rank: int, attempt: int | None) -> Reporter:
        pod, namespace = environ.get(protocol.POD_NAME), environ.get(protocol.POD_NAMESPACE)
        try:
            interval = float(environ.get(protocol.REPORT_INTERVAL) or DEFAULT_INTERVAL)
        except ValueError:
            interval = DEFAULT_INTERVAL
        if not pod or not namespace:
            return cls(rank=rank, attempt=attempt, send=None)
        return cls(rank=rank, attempt=attempt, send=pod_patcher(namespace, pod), interval=interval)

    @property
    def enabled(self) -> bool:
        return self._send is not None

    # -- what the loop and the checkpointer call ------------------------------------------------

    def phase(self, name: str, seconds: float) -> None:
        """A start-up phase's duration (import, rendezvous, load); kept until the steps tell compile."""
        self._timings.setdefault(name, seconds)

    def resumed(self, global_step: int | None) -> None:
        """The job's own checkpoint this start resumed (its global step as saved); None: it did not."""
        self._resumed_from = global_step

    def stepped(self, global_step: int, step_time: float) -> None:
        """A finished step. After the second, the start-up timings go out: the first step's excess
        over the second is the graph compile."""
        self._steps += 1
        if self._steps == 1:
            self._timings["firstStep"] = step_time
            self._ready_at = now_text()
        elif self._steps == 2:
            self._timings["compile"] = max(0.0, self._timings["firstStep"] - step_time)
            self.started(self._timings)
        if self._send is None or not self._heartbeat:
            return
        with self._cond:
            self._state = replace(self._state, step=global_step, step_time=round(step_time, 4), at=now_text())
            self._cond.notify()

    def saved(self, blocked: float) -> None:
        """Seconds a save held training up (the save call, and waiting for an async snapshot's
        copy): a moving average, sent with rank 0's next heartbeat."""
        cost = blocked if self._save_cost is None else 0.7 * self._save_cost + 0.3 * blocked
        self._save_cost = cost
        if self._send is not None and self._heartbeat:
            with self._cond:
                self._state = replace(self._state, save_cost=round(cost, 4))

    def committed(self, *, step: int, epoch: int | None, file: str, attempt: int | None) -> None:
        self._update(commit=Commit(step=step, epoch=epoch, file=file, attempt=attempt, at=now_text()))

    def uploaded(self, upload: Upload) -> None:
        """The checkpoint store's state (trainer_image/checkpoint/store/upload.py), sent as it changes."""
        self._update(upload=upload)

    def started(self, timings: Mapping[str, float]) -> None:
        self._update(
            startup={k: v for k, v in timings.items() if k in protocol.STARTUP_PHASES},
            started_at=self._started_at,
            ready_at=self._ready_at,
            resumed_from=self._resumed_from,
        )

    def close(self, timeout: float = 3.0) -> None:
        """Send what is pending (within `timeout`), then stop the thread."""
        if self._thread is None:
            return
        if self._steps == 1:
            self.started(self._timings)  # a start of one step: no second step to tell compile by
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the sender thread -------------------------------------------------------------------------

    def _update(self, **changes: object) -> None:
        if self._send is None:
            return
        with self._cond:
            self._state = replace(self._state, **changes)  # type: ignore[arg-type]
            self._urgent = True
            self._cond.notify()

    def _due(self) -> tuple[Report | None, float | None]:
        """(the report to send now, or None; else seconds to wait, None: until notified)."""
        if self._state == self._sent:
            return None, None
        if self._urgent or self._closing:
            return self._state, None
        period = self._interval if self._interval > 0 else DEFAULT_INTERVAL  # also the retry delay
        wait = self._last_send + period - self._clock()
        return (self._state, None) if wait <= 0 else (None, wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                report, wait = self._due()
                while report is None and not (self._closing and self._state == self._sent):
                    self._cond.wait(wait)
                    report, wait = self._due()
                if report is None:
                    return
                self._urgent = False
                self._last_send = self._clock()
            if not self._deliver(report) and self._closing:
                return  # the API is not answering: do not hold up the exit

    def _deliver(self, report: Report) -> bool:
        assert self._send is not None
        try:
            self._send(self._key, report.encode())
        except Exception as e:  # the API server, RBAC, the network: training goes on regardless
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "could not report to the controller (%s); will retry", e)
            return False  # retried with the next change or after an interval, never in a tight loop
        with self._cond:
            self._sent = report
        return True
