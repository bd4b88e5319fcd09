"""What a trainer tells the controller through the API: one annotation per rank on its own pod.

The controller already watches its pods, so a report costs it no volume mount, no extra watch and
no filesystem access, and works for any namespace and any storage. Each rank writes only its own
key (`training.respawn.dev/report-rank-<N>`) with a JSON merge patch, so ranks that share a pod
never overwrite each other and no read-modify-write is needed. The value is small and bounded:

    {"attempt": 3, "step": 1200, "stepTime": 0.41, "saveCost": 0.35, "at": "2026-12-06T05:01:02.345Z",
     "commit": {"step": 1000, "epoch": 2, "file": "llama_rank_0-2_500.ckpt", "attempt": 3,
                "at": "..."},
     "startup": {"import": 4.1, "rendezvous": 1.2, "load": 0.3, "compile": 2.5, "firstStep": 2.9,
                 "startedAt": "...", "readyAt": "...", "resumedFrom": 1000},
     "upload": {"step": 1000, "pending": 1, "lagSeconds": 3.2, "failures": 0, "error": null}}

`step` and `at` are the last optimizer step this rank finished and when (its wall clock), `saveCost`
the seconds training stood still per checkpoint save, lately (the δ of Young/Daly); only rank
0 sends them on a timer (data-parallel ranks step together, so one heartbeat per job keeps the API
load flat), every rank sends each commit as it happens and its start-up timings once. `startedAt`
(the process started) and `readyAt` (its first step finished) place the start-up on the wall clock,
so the controller can time a restart from the failure to the next trained step; `resumedFrom` is
the global step of the job's own checkpoint the start resumed, as saved (before any rescale).
`upload` is present only with a checkpoint store: the newest step of this rank whose meta.json is in
the store, the local commits not uploaded yet, how long the oldest of them has waited, the failed
upload tries since the last success and the last one's message; every rank sends it as it changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from respawn_protocol.crd import GROUP

ANNOTATION_PREFIX = f"{GROUP}/report-rank-"
MAX_VALUE_BYTES = 2048  # a report larger than this is not ours: ignored
STARTUP_PHASES = ("import", "rendezvous", "load", "compile", "firstStep")

# Environment the controller sets so a trainer can report (contract.py names the others).
POD_NAME = "RESPAWN_POD_NAME"
POD_NAMESPACE = "RESPAWN_POD_NAMESPACE"
REPORT_INTERVAL = "RESPAWN_REPORT_INTERVAL"  # seconds between rank 0's progress reports; 0: none


def annotation_key(rank: int) -> str:
    return f"{ANNOTATION_PREFIX}{rank}"


@dataclass(frozen=True)
class Commit:
    step: int  # global step
    epoch: int | None = None
    file: str | None = None
    attempt: int | None = None
    at: str | None = None


@dataclass(frozen=True)
class Upload:
    step: int | None = None  # newest step of the rank committed in the store
    pending: int = 0  # local commits not in the store yet
    lag_seconds: float = 0.0  # how long the oldest of them has waited
    failures: int = 0  # failed tries since the last upload that succeeded
    error: str | None = None  # the last failure's message, while failures > 0


@dataclass(frozen=True)
class Report:
    rank: int
    attempt: int | None = None
    step: int | None = None
    step_time: float | None = None
    save_cost: float | None = None
    at: str | None = None
    commit: Commit | None = None
    startup: Mapping[str, float] = field(default_factory=dict)
    started_at: str | None = None  # wall clock: the process started
    ready_at: str | None = None  # wall clock: its first step finished
    resumed_from: int | None = None  # global step of the job's checkpoint this start resumed (as saved)
    upload: Upload | None = None  # with a checkpoint store only

    def encode(self) -> str:
        body: dict[str, Any] = {"attempt": self.attempt}
        if self.step is not None:
            body.update(step=self.step, stepTime=self.step_time, at=self.at)
            if self.save_cost is not None:
                body["saveCost"] = round(self.save_cost, 4)
        if self.commit is not None:
            c = self.commit
            body["commit"] = {
                "step": c.step,
                "epoch": c.epoch,
                "file": c.file,
                "attempt": c.attempt,
                "at": c.at,
            }
        if self.startup:
            startup: dict[str, Any] = {k: round(v, 3) for k, v in self.startup.items()}
            startup |= {k: v for k, v in (("startedAt", self.started_at), ("readyAt", self.ready_at)) if v}
            if self.resumed_from is not None:
                startup["resumedFrom"] = self.resumed_from
            body["startup"] = startup
        if self.upload is not None:
            u = self.upload
            body["upload"] = {
                "step": u.step,
                "pending": u.pending,
                "lagSeconds": round(u.lag_seconds, 3),
                "failures": u.failures,
                "error": u.error[:200] if u.error else None,
            }
        return json.dumps(body, separators=(",", ":"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if value >= 0 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 512 else None


def _commit(raw: Any) -> Commit | None:
    if not isinstance(raw, dict) or (step := _int(raw.get("step"))) is None:
        return None
    return Commit(
        step, _int(raw.get("epoch")), _str(raw.get("file")), _int(raw.get("attempt")), _str(raw.get("at"))
    )


def _upload(raw: Any) -> Upload | None:
    if not isinstance(raw, dict):
        return None
    return Upload(
        step=_int(raw.get("step")),
        pending=_int(raw.get("pending")) or 0,
        lag_seconds=_float(raw.get("lagSeconds")) or 0.0,
        failures=_int(raw.get("failures")) or 0,
        error=_str(raw.get("error")),
    )


def decode(rank: int, value: str) -> Report | None:
    """A report from an annotation value; None for anything malformed (a pod's annotations are
    writable by whoever may patch the pod, so nothing here is trusted beyond its shape)."""
    if len(value) > MAX_VALUE_BYTES:
        return None
    try:
        raw = json.loads(value)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    startup = raw.get("startup")
    if not isinstance(startup, dict):
        startup = {}
    phases = {k: v for k in STARTUP_PHASES if (v := _float(startup.get(k))) is not None}
    return Report(
        rank=rank,
        attempt=_int(raw.get("attempt")),
        step=_int(raw.get("step")),
        step_time=_float(raw.get("stepTime")),
        save_cost=_float(raw.get("saveCost")),
        at=_str(raw.get("at")),
        commit=_commit(raw.get("commit")),
        startup=phases,
        started_at=_str(startup.get("startedAt")) if phases else None,
        ready_at=_str(startup.get("readyAt")) if phases else None,
        resumed_from=_int(startup.get("resumedFrom")) if phases else None,
        upload=_upload(raw.get("upload")),
    )


def reports_of(annotations: Mapping[str, str] | None) -> list[Report]:
    """Every well-formed report among a pod's annotations, by rank."""
    out = []
    for key, value in (annotations or {}).items():
        if not key.startswith(ANNOTATION_PREFIX) or not isinstance(value, str):
            continue
        suffix = key[len(ANNOTATION_PREFIX) :]
        if not suffix.isdigit() or len(suffix) > 6:
            continue
        if (report := decode(int(suffix), value)) is not None:
            out.append(report)
    return sorted(out, key=lambda r: r.rank)
