"""`respawn status`: a TrainingJob's phase, attempts and their failures, restarts, checkpoint and
resume, from its status and its Events; with the job's output dir, also what is on disk."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from respawn_cli import history
from respawn_protocol import safefs
from respawn_protocol.crd import GROUP, PLURAL, RECOVERY_PHASES, VERSION
from respawn_protocol.meta import MetaError, read_meta
from respawn_protocol.report import STARTUP_PHASES
from respawn_protocol.resolve import last_complete

# Event messages written by controller/core/policy/restart.py (Restarting, JobFailed) and
# controller/core/policy/startup.py (AttemptCreated).
_RESTARTING = re.compile(
    r"^(?P<reason>\S+) on (?P<pod>\S+): (?P<message>.*); restart (?P<kind>counted|not counted)"
    r"(?P<in_place>, in place)?, attempt (?P<next>\d+) in "
)
_ATTEMPT_CREATED = re.compile(r"^attempt (?P<attempt>\d+):")
_EXIT_CODE = re.compile(r"exited (?:with code )?(?P<code>-?\d+)")
_POD_ATTEMPT = re.compile(r"-a(?P<attempt>\d+)-\d+$")
# (connect, read) seconds per API call: a server that never answers is "unreachable", not a hang.
REQUEST_TIMEOUT = (10, 30)


@dataclass
class Failure:
    reason: str
    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None
    counted: bool | None = None
    action: str | None = None
    message: str = ""
    time: str | None = None


@dataclass
class Attempt:
    number: int
    started: str | None = None
    result: str = ""
    failure: Failure | None = None


@dataclass
class RankFiles:
    rank: int
    checkpoints: list[int] = field(default_factory=list)  # global steps retained, per meta.json
    committed: int | None = None  # meta.json's last_global_step
    steps_logged: int = 0
    last_step: int | None = None
    resumes: list[history.Resume] = field(default_factory=list)
    problem: str | None = None


@dataclass
class OnDisk:
    path: str
    complete_step: int | None
    complete_files: dict[int, str]
    ranks: list[RankFiles]
    warnings: list[str]


@dataclass
class Report:
    namespace: str
    name: str
    phase: str
    attempt: int
    restarts: int
    uncounted_restarts: int
    budget_used: int
    max_restarts: int
    checkpoint: dict[str, Any] | None
    resumed_from_step: int | None
    last_failure: Failure | None
    attempts: list[Attempt]
    conditions: list[dict[str, Any]]
    output: OnDisk | None = None
    progress: dict[str, Any] | None = None  # status.lastProgress: rank 0's reported step
    startup: dict[str, Any] | None = None  # status.startup: seconds per start-up phase
    recovery: dict[str, Any] | None = None  # status.lastRecovery: the last restart, timed
    interval: dict[str, Any] | None = None  # status.checkpointInterval: the suggested interval
    store: dict[str, Any] | None = None  # status.checkpointStore: the uploads to the object store

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather(api: client.ApiClient, namespace: str, name: str, output_dir: Path | None = None) -> Report:
    job = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
    )
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.kind=TrainingJob,involvedObject.name={name}",
        _request_timeout=REQUEST_TIMEOUT,
    )
    uid = job["metadata"].get("uid")
    mine = [e for e in events.items if not uid or not e.involved_object.uid or e.involved_object.uid == uid]
    report = build(job, mine)
    if output_dir is not None:
        report.output = inspect_output(output_dir)
    return report


def build(job: dict[str, Any], events: list[Any]) -> Report:
    """The report from a TrainingJob body and its core/v1 Events (client models)."""
    meta = job["metadata"]
    status = job.get("status") or {}
    policy = (job.get("spec") or {}).get("failurePolicy") or {}
    phase = status.get("phase", "Pending")
    current = int(status.get("attempt", 0))
    attempts = {n: Attempt(n) for n in range(current + 1)}
    for event in sorted(events, key=_event_time):
        _apply_event(attempts, event, current)
    last = _failure(status.get("lastFailure"))
    if last is not None:
        _apply_last_failure(attempts, last, current, phase, status.get("podAttempt"))
    _set_results(attempts, current, phase)
    checkpoint = status.get("lastCompleteCheckpoint")
    return Report(
        namespace=meta["namespace"],
        name=meta["name"],
        phase=phase,
        attempt=current,
        restarts=int(status.get("restarts", 0)),
        uncounted_restarts=int(status.get("uncountedRestarts", 0)),
        budget_used=int(status.get("budgetUsed", 0)),
        max_restarts=int(policy.get("maxRestarts", 3)),
        checkpoint=checkpoint if isinstance(checkpoint, dict) else None,
        resumed_from_step=status.get("resumedFromStep"),
        last_failure=last,
        attempts=[attempts[n] for n in sorted(attempts)],
        conditions=list(status.get("conditions") or []),
        progress=status.get("lastProgress") if isinstance(status.get("lastProgress"), dict) else None,
        startup=status.get("startup") if isinstance(status.get("startup"), dict) else None,
        recovery=status.get("lastRecovery") if isinstance(status.get("lastRecovery"), dict) else None,
        interval=status.get("checkpointInterval")
        if isinstance(status.get("checkpointInterval"), dict)
        else None,
        store=status.get("checkpointStore") if isinstance(status.get("checkpointStore"), dict) else None,
    )


def _attempt(attempts: dict[int, Attempt], n: int) -> Attempt:
    return attempts.setdefault(n, Attempt(n))


def _apply_event(attempts: dict[int, Attempt], event: Any, current: int) -> None:
    """What one of the job's Events says about an attempt: when it started, how it failed."""
    message = event.message or ""
    when = _event_time(event)
    if event.reason == "AttemptCreated" and (m := _ATTEMPT_CREATED.match(message)):
        _attempt(attempts, int(m["attempt"])).started = when or None
    elif event.reason == "Restarting" and (m := _RESTARTING.match(message)):
        # A pod kept by restarts in place is named after the attempt that created it, not the one
        # that failed in it.
        n = None if m["in_place"] else _attempt_of_pod(m["pod"])
        n = int(m["next"]) - 1 if n is None else n
        _attempt(attempts, n).failure = Failure(
            reason=m["reason"],
            pod=m["pod"] if m["pod"] != "job" else None,
            exit_code=_exit_code(m["message"]),
            counted=m["kind"] == "counted",
            action="RestartJob" if m["kind"] == "counted" else "RestartJobIgnoreBudget",
            message=m["message"],
            time=when or None,
        )
    elif event.reason == "JobFailed":
        a = _attempt(attempts, current)
        if a.failure is None:
            a.failure = Failure(reason="", message=message, exit_code=_exit_code(message), time=when)
        a.failure.action = "FailJob"


def _apply_last_failure(
    attempts: dict[int, Attempt], last: Failure, current: int, phase: str, kept: Any = None
) -> None:
    """The status's lastFailure replaces its attempt's failure from the events, which may be lost.
    `kept`: status.podAttempt, whose pods later attempts ran in (their names say nothing then)."""
    n = _attempt_of_pod(last.pod) if last.pod else None
    if n is not None and n == kept:
        n = None
    if n is None:
        n = current if phase == "Failed" else current - 1
    if n >= 0:
        known = _attempt(attempts, n).failure
        if known is not None and not last.reason:
            last.reason = known.reason
        attempts[n].failure = last  # the status record is complete; events may have been lost


def _set_results(attempts: dict[int, Attempt], current: int, phase: str) -> None:
    for n, a in attempts.items():
        if a.failure is not None and (n < current or phase == "Failed"):
            a.result = "Failed"
        elif n == current:
            a.result = phase
        elif n < current:
            a.result = "Failed"  # restarted, though its failure's event is gone


def inspect_output(output_dir: Path) -> OnDisk:
    """What is on disk, read as the trainer's resolver reads it (respawn_protocol.safefs: no link
    below `output_dir` followed, no file read whole but meta.json, within its cap)."""
    complete_step: int | None = None
    files: dict[int, str] = {}
    warnings: list[str] = []
    checkpoint = output_dir / "checkpoint"
    try:
        safefs.ensure_dir(output_dir, checkpoint, create=False)
        resolution = last_complete(checkpoint)
        complete_step = resolution.global_step
        files = {rank: path.name for rank, path in resolution.files.items()}
        warnings.extend(resolution.warnings)
    except (OSError, ValueError) as exc:
        warnings.append(f"checkpoint directory: {exc}")
    try:
        ranks = [_rank_files(output_dir, rank) for rank in history.ranks(output_dir)]
    except (OSError, ValueError) as exc:
        ranks = []
        warnings.append(f"rank folders: {exc}")
    return OnDisk(str(output_dir), complete_step, files, ranks, warnings)


def _rank_files(output_dir: Path, rank: int) -> RankFiles:
    info = RankFiles(rank)
    try:
        meta = read_meta(output_dir / "checkpoint" / f"rank_{rank}", root=output_dir)
    except (OSError, MetaError) as exc:
        meta = None
        info.problem = f"meta.json: {exc}"
    if meta is not None:
        info.checkpoints = [r.global_step for r in meta.checkpoints]
        info.committed = meta.last_global_step
    try:
        starts = history.load(output_dir, rank)
    except (OSError, ValueError) as exc:
        info.problem = f"steps.jsonl: {exc}"
        return info
    info.steps_logged = sum(s.count for s in starts)
    info.last_step = starts[-1].last_step if starts else None
    info.resumes = history.resumes(starts)
    return info


# ------------------------------------------------------------------------------------------ rendering


def render(report: Report) -> str:
    lines = [f"TrainingJob {report.namespace}/{report.name}"]
    add = lines.append
    add(f"  Phase:        {report.phase} (attempt {report.attempt})")
    add(
        f"  Restarts:     {report.restarts} counted, {report.uncounted_restarts} uncounted "
        f"(budget {report.budget_used}/{report.max_restarts} used)"
    )
    ckpt = report.checkpoint
    if ckpt:
        extra = ", ".join(
            str(x) for x in (ckpt.get("file"), f"epoch {ckpt['epoch']}" if "epoch" in ckpt else None) if x
        )
        add(f"  Checkpoint:   step {ckpt.get('step')}" + (f" ({extra})" if extra else ""))
    else:
        add("  Checkpoint:   none complete on every rank")
    add(
        "  Resumed from: "
        + (f"step {report.resumed_from_step}" if report.resumed_from_step is not None else "-")
    )
    if report.progress:
        add(f"  Progress:     step {report.progress.get('step')} at {report.progress.get('time')} (reported)")
    if report.startup and isinstance(report.startup.get("seconds"), dict):
        seconds = report.startup["seconds"]
        phases = ", ".join(
            f"{k} {seconds[k]:.1f}s" for k in STARTUP_PHASES if isinstance(seconds.get(k), int | float)
        )
        add(f"  Start-up:     attempt {report.startup.get('attempt')}: {phases}")
    if report.recovery:
        add(f"  Recovery:     {_recovery(report.recovery)}")
    if report.interval:
        add(f"  Interval:     {_interval(report.interval)}")
    if report.store:
        add(f"  Store:        {_store(report.store)}")
    if report.last_failure:
        add(f"  Last failure: {_describe(report.last_failure)}")
    for cond in report.conditions:
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "Restarting"):
            add(f"  {cond['type']}: {cond.get('reason', '')} {cond.get('message', '')}".rstrip())
    add("")
    rows = [["ATTEMPT", "STARTED", "RESULT", "REASON", "POD", "NODE", "EXIT", "RESTART"]]
    for a in report.attempts:
        f = a.failure
        rows.append(
            [
                str(a.number),
                a.started or "-",
                a.result,
                (f.reason or "-") if f else "",
                (f.pod or "-") if f else "",
                (f.node or "-") if f else "",
                (str(f.exit_code) if f.exit_code is not None else "-") if f else "",
                _restart_kind(f) if f else "",
            ]
        )
    lines.extend(_table(rows))
    if report.output is not None:
        lines.append("")
        lines.extend(_render_output(report.output))
    return "\n".join(lines) + "\n"


def _render_output(out: OnDisk) -> list[str]:
    lines = [f"Output dir {out.path}"]
    if out.complete_step is not None:
        names = sorted(set(out.complete_files.values()))
        lines.append(f"  Complete on every rank: step {out.complete_step} ({', '.join(names)})")
    else:
        lines.append("  Complete on every rank: none (a restart would start from random init)")
    lines.extend(f"  warning: {w}" for w in out.warnings)
    if not out.ranks:
        lines.append("  no rank_N directories under log/ or checkpoint/")
        return lines
    rows = [["RANK", "CHECKPOINTS", "COMMITTED", "STEPS LOGGED", "LAST STEP", "STARTS"]]
    for r in out.ranks:
        rows.append(
            [
                str(r.rank),
                ", ".join(map(str, r.checkpoints)) or "-",
                str(r.committed) if r.committed is not None else "-",
                str(r.steps_logged),
                str(r.last_step) if r.last_step is not None else "-",
                str(len(r.resumes) + (1 if r.steps_logged else 0)),
            ]
        )
    lines.extend("  " + row for row in _table(rows))
    for r in out.ranks:
        if r.problem:
            lines.append(f"  rank {r.rank}: {r.problem}")
        for res in r.resumes:
            source = f"step {res.from_step}" if res.from_step is not None else "random init"
            if res.from_file:
                source += f" ({res.from_file})"
            lines.append(
                f"  rank {r.rank} start {res.start}: resumed from {source} after step {res.failed_at}, "
                f"{res.steps_redone} step{'s' if res.steps_redone != 1 else ''} redone"
            )
    return lines


def _recovery(r: dict[str, Any]) -> str:
    """status.lastRecovery in a line: the total to the first trained step, then each phase."""
    seconds = r.get("seconds")
    seconds = seconds if isinstance(seconds, dict) else {}
    phases = ", ".join(
        f"{k} {seconds[k]:.1f}s" for k in RECOVERY_PHASES if isinstance(seconds.get(k), int | float)
    )
    total = r.get("totalSeconds")
    head = (
        f"{total:.1f}s from the failure to the first step of attempt {r.get('attempt')}"
        if isinstance(total, int | float)
        else f"attempt {r.get('attempt')} running, its first step not yet reported"
    )
    return f"{head} ({r.get('reason') or '?'}): {phases}" if phases else head


def _interval(a: dict[str, Any]) -> str:
    """status.checkpointInterval in a line: the suggestion and what it is computed from."""
    try:
        seconds, mtbf, save = float(a["seconds"]), float(a["mtbfSeconds"]), float(a["saveSeconds"])
        steps, failures = int(a["steps"]), int(a["failures"])
    except (KeyError, TypeError, ValueError):
        return "unreadable"
    whose = "this job" if a.get("basis") == "job" else "the namespace's jobs"
    return (
        f"checkpoint every {steps} steps (~{seconds:.0f}s) suggested: MTBF {mtbf:.0f}s over "
        f"{failures} failure(s) of {whose}, {save:.2f}s per save"
    )


def _store(s: dict[str, Any]) -> str:
    """status.checkpointStore in a line: what every rank has in the store, the backlog, failures."""
    step, pending, lag = s.get("step"), s.get("pendingCommits"), s.get("lagSeconds")
    line = f"step {step} on every rank" if isinstance(step, int) else "no step on every rank yet"
    if isinstance(pending, int) and pending:
        line += f", {pending} commit(s) waiting"
        line += f" (oldest {lag:.0f}s)" if isinstance(lag, int | float) else ""
    if isinstance(failures := s.get("failures"), int) and failures:
        line += f"; {failures} failed tries in a row: {s.get('lastError') or '?'}"
    return line


def _describe(f: Failure) -> str:
    parts = [f.reason or "unknown"]
    if f.pod:
        parts.append(f"on {f.pod}" + (f" (node {f.node})" if f.node else ""))
    if f.exit_code is not None:
        parts.append(f"exit code {f.exit_code}")
    text = " ".join(parts)
    if f.action:
        text += f", {f.action}"
    if f.message:
        text += f": {f.message}"
    return text


def _restart_kind(f: Failure) -> str:
    if f.action == "FailJob":
        return "none (job failed)"
    if f.counted is None:
        return "-"
    return "counted" if f.counted else "uncounted"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _failure(raw: Any) -> Failure | None:
    if not isinstance(raw, dict):
        return None
    code = raw.get("exitCode")
    return Failure(
        reason=str(raw.get("reason", "")),
        pod=raw.get("pod"),
        node=raw.get("node"),
        exit_code=code if isinstance(code, int) else None,
        counted=raw.get("counted") if isinstance(raw.get("counted"), bool) else None,
        action=raw.get("action"),
        message=str(raw.get("message", "")),
        time=raw.get("time"),
    )


def _attempt_of_pod(pod: str | None) -> int | None:
    m = _POD_ATTEMPT.search(pod or "")
    return int(m["attempt"]) if m else None


def _exit_code(message: str) -> int | None:
    m = _EXIT_CODE.search(message)
    return int(m["code"]) if m else None


def _event_time(event: Any) -> str:
    """RFC 3339 text of an event's time (datetime fields from the client, or strings)."""
    for value in (
        event.last_timestamp,
        event.event_time,
        event.first_timestamp,
        event.metadata.creation_timestamp if event.metadata else None,
    ):
        if value:
            return value.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(value, "strftime") else str(value)
    return ""
