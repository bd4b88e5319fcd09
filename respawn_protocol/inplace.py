"""Restart in place: the controller and each pod's supervisor talk through two annotations on the pod.

With `spec.failurePolicy.restartInPlace`, a worker pod's entry point is a supervisor that outlives
its trainer processes (trainer_image/inplace.py). When a trainer fails on a healthy node, the pod
stays; the controller restarts the gang's processes instead of recreating its pods, in two steps so
that two attempts never overlap:

1. it writes `command` = {"attempt": N, "run": false} on every pod: each supervisor stops its
   trainers (SIGTERM, then SIGKILL after its grace) and says `stopped`;
2. once every pod has said so and the backoff has passed, {"attempt": N, "run": true}: each
   supervisor starts its trainers with `RESPAWN_ATTEMPT` = N and says `running`.

The supervisor says what it does in `supervisor` = {"attempt": X, "state": ..., "at": ...}, with the
first failing rank's exit when its trainers failed on their own:

    {"attempt": 3, "state": "failing", "exitCode": 137, "message": "rank 1 ... SIGKILL", "at": "..."}

`running`: the trainers of attempt X run (since `at`); `failing`: one failed and the pod's other
ranks are being stopped; `stopped`: none runs. Both values are small JSON, checked for shape only:
whoever may patch the pod may write them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from respawn_protocol.crd import GROUP

COMMAND = f"{GROUP}/command"
STATE = f"{GROUP}/supervisor"
# Set by the controller on the trainer container: the entry point runs as the in-place supervisor.
ENV = "RESPAWN_RESTART_IN_PLACE"
MAX_VALUE_BYTES = 1024

RUNNING, FAILING, STOPPED = "running", "failing", "stopped"
_STATES = frozenset({RUNNING, FAILING, STOPPED})


@dataclass(frozen=True)
class Command:
    attempt: int
    run: bool
    save_steps: int | None = None  # spec.checkpointInterval: Auto, for the attempt it starts

    def encode(self) -> str:
        body: dict[str, Any] = {"attempt": self.attempt, "run": self.run}
        if self.save_steps is not None:
            body["saveSteps"] = self.save_steps
        return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class State:
    attempt: int
    state: str  # RUNNING | FAILING | STOPPED
    at: str | None = None
    exit_code: int | None = None  # the first rank that failed on its own (128 + N after signal N)
    message: str | None = None

    @property
    def failed(self) -> bool:
        return self.exit_code is not None and self.exit_code != 0

    def encode(self) -> str:
        body: dict[str, Any] = {"attempt": self.attempt, "state": self.state, "at": self.at}
        if self.exit_code is not None:
            body["exitCode"] = self.exit_code
        if self.message:
            body["message"] = self.message[:512]
        return json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":"))


def _load(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, str) or len(value) > MAX_VALUE_BYTES:
        return None
    try:
        raw = json.loads(value)
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def decode_command(value: Any) -> Command | None:
    raw = _load(value)
    if raw is None or (attempt := _count(raw.get("attempt"))) is None or not isinstance(raw.get("run"), bool):
        return None
    steps = _count(raw.get("saveSteps"))
    return Command(attempt, raw["run"], steps if steps else None)


def decode_state(value: Any) -> State | None:
    raw = _load(value)
    if raw is None or (attempt := _count(raw.get("attempt"))) is None or raw.get("state") not in _STATES:
        return None
    code = raw.get("exitCode")
    ok_code = isinstance(code, int) and not isinstance(code, bool) and math.isfinite(code) and 0 <= code < 512
    at, message = raw.get("at"), raw.get("message")
    return State(
        attempt,
        raw["state"],
        at if isinstance(at, str) and len(at) <= 64 else None,
        code if ok_code else None,
        message if isinstance(message, str) else None,
    )
