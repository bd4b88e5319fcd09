"""The chaos soak's rules (see tests/e2e/test_chaos.py), checked against what the soak recorded, and
its figures as text."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from kubernetes import client

from tests.support.chaos.common import COUNTED, KINDS, pod_attempt, pod_job, retrying
from tests.support.e2e import losses

if TYPE_CHECKING:
    from tests.support.chaos.soak import ChaosSoak


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def add_late_hits(soak: ChaosSoak, slack: float = 10.0) -> None:
    """A node fault also hit every chaos pod the watch saw on the node, alive, while the fault
    was on (plus `slack` for the controller's caches), however briefly it lived there."""
    for f in soak.faults:
        if f.window is None:
            continue
        since, until = f.window
        seen = {
            e.name
            for e in soak.recorder.events
            if e.node == f.target
            and since <= e.at <= until + slack
            and e.phase not in ("Succeeded", "Failed")
            and not e.deleting
            and not soak.jobs[pod_job(e.name)].reference
        }
        known = {pod for _, _, pod in f.hits}
        f.hits += [(pod_job(n), pod_attempt(n), n) for n in sorted(seen - known)]


def verify(soak: ChaosSoak) -> dict[str, Any]:
    """Check every rule; returns the figures. Raises AssertionError listing every violation."""
    problems: list[str] = []
    add_late_hits(soak)
    statuses = {j: soak.status(j) for j in soak.jobs}
    for j, s in statuses.items():
        if s.get("phase") != "Succeeded":
            problems.append(f"{j}: phase {s.get('phase')} ({s.get('conditions')})")
        if soak.jobs[j].reference and s.get("attempt", 0) != 0:
            problems.append(f"reference {j} was restarted: {s}")

    # Losses: every record of every rank on the reference curve, every step present.
    compared = mismatches = 0
    for j, spec in soak.jobs.items():
        if spec.reference:
            continue
        ref = soak.references[spec.config]
        for rank in (0, 1):
            reference = {
                r["global_step"]: r["loss_bits"] for r in losses(soak.shared, soak.namespace, ref, rank)
            }
            records = losses(soak.shared, soak.namespace, j, rank)
            bad = [r for r in records if r["loss_bits"] != reference.get(r["global_step"])]
            missing = set(reference) - {r["global_step"] for r in records}
            compared += len(records)
            mismatches += len(bad) + len(missing)
            if bad or missing or not reference:
                problems.append(
                    f"{j} rank {rank}: {len(bad)} records off the reference curve {bad[:2]}, "
                    f"{len(missing)} steps missing"
                )

    # Attempts never overlap (from the pod watch, ordered by resourceVersion).
    overlaps, unverified = _overlaps(soak, problems)

    # Restarts against the faults that hit each attempt.
    hit: dict[tuple[str, int], set[str]] = defaultdict(set)
    hit_pods: dict[tuple[str, int], set[str]] = defaultdict(set)
    for f in soak.faults:
        for job, attempt, pod in f.hits if f.landed else []:
            hit[(job, attempt)].add(f.kind)
            hit_pods[(job, attempt)].add(pod)
    last_phase = {e.name: e.phase for e in soak.recorder.events if e.phase}
    expected_counted = [0, 0]
    expected_total = 0
    actual_counted = actual_uncounted = 0
    for j, spec in soak.jobs.items():
        if spec.reference:
            continue
        s = statuses[j]
        final = int(s.get("attempt", 0))
        actual_counted += int(s.get("restarts", 0))
        actual_uncounted += int(s.get("uncountedRestarts", 0))
        if int(s.get("restarts", 0)) + int(s.get("uncountedRestarts", 0)) != final:
            problems.append(f"{j}: restarts + uncountedRestarts != attempt: {s}")
        for a in range(final):
            kinds = hit.get((j, a))
            if not kinds:
                problems.append(f"{j}: attempt {a} restarted without a fault hitting it")
                continue
            expected_total += 1
            expected_counted[0] += kinds <= COUNTED
            expected_counted[1] += bool(kinds & COUNTED)
        if (j, final) in hit:
            survivors = [p for p in hit_pods[(j, final)] if last_phase.get(p) != "Succeeded"]
            if survivors:
                problems.append(f"{j}: fault on final attempt {final} ({survivors}) lost: no restart")
    actual_total = actual_counted + actual_uncounted
    if actual_total != expected_total or not expected_counted[0] <= actual_counted <= expected_counted[1]:
        problems.append(
            f"restarts counted {actual_counted} / uncounted {actual_uncounted}; expected total "
            f"{expected_total}, counted in [{expected_counted[0]}, {expected_counted[1]}]; "
            f"faults per attempt {dict(sorted((k, sorted(v)) for k, v in hit.items()))}; "
            f"the jobs' events {_job_events(soak)}"
        )

    figures = {
        "faults_by_kind": {k: sum(f.kind == k for f in soak.faults) for k in KINDS},
        "landed_by_kind": {k: sum(f.kind == k and f.landed for f in soak.faults) for k in KINDS},
        "restarts_counted": actual_counted,
        "restarts_uncounted": actual_uncounted,
        "expected_restarts": expected_total,
        "expected_counted_range": tuple(expected_counted),
        "recover_seconds": _recovery_times(soak, hit),
        "jobs": len([s for s in soak.jobs.values() if not s.reference]),
        "references": len(soak.references),
        "all_succeeded": all(s.get("phase") == "Succeeded" for s in statuses.values()),
        "jobs_succeeded": sum(
            s.get("phase") == "Succeeded" for j, s in statuses.items() if not soak.jobs[j].reference
        ),
        "loss_records_compared": compared,
        "loss_mismatches": mismatches,
        "overlaps": overlaps,
        "order_unverified_pairs": unverified,
        "watch_relists": soak.recorder.relists,
        "job_events": sum(len(v) for v in _job_events(soak).values()),
        "controller_exits": list(soak.replicas.exits),
    }
    if problems:
        raise AssertionError("chaos soak violations:\n  " + "\n  ".join(problems) + f"\nfigures: {figures}")
    return figures


def _overlaps(soak: ChaosSoak, problems: list[str]) -> tuple[int, int]:
    """Attempt N+1 of a job may create its first pod only after every pod of attempts <= N is deleted.

    Precisely, in etcd revision order (resourceVersion, one total order for all pods): for each
    job and attempts a < b, the revision of the first event of any pod of b (its creation) must be
    greater than the revision of the DELETED event of every pod of a; and every pod of an attempt
    other than the last must have been deleted. That is stronger than "no pod of b Running while a
    pod of a is Running or not deleted". Events seen only through a relist (the watch fell behind
    an API server restart) only bound the order; pairs they leave undecided are counted, not failed.
    """
    created: dict[tuple[str, int], tuple[int, bool]] = {}
    deleted: dict[tuple[str, int], tuple[int, bool]] = {}
    pods_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    gone: set[str] = set()
    for e in soak.recorder.events:
        key = (pod_job(e.name), pod_attempt(e.name))
        pods_of[key].add(e.uid)
        if key not in created or e.rv < created[key][0]:
            created[key] = (e.rv, e.exact)
        if e.type == "DELETED":
            gone.add(e.uid)
            if key not in deleted or e.rv > deleted[key][0]:
                deleted[key] = (e.rv, e.exact)
    overlaps = unverified = 0
    for job in soak.jobs:
        attempts = sorted(a for j, a in pods_of if j == job)
        for a in attempts[:-1]:
            if not pods_of[(job, a)] <= gone:
                overlaps += 1
                problems.append(f"{job}: attempt {a} has pods never deleted")
                continue
            for b in (b for b in attempts if b > a):
                (c_rv, c_exact), (d_rv, d_exact) = created[(job, b)], deleted[(job, a)]
                if c_rv > d_rv:
                    continue
                if c_exact and d_exact:
                    overlaps += 1
                    problems.append(
                        f"{job}: attempt {b} created (rv {c_rv}) before attempt {a} gone (rv {d_rv})"
                    )
                else:
                    unverified += 1
    return overlaps, unverified


def _recovery_times(soak: ChaosSoak, hit: dict[tuple[str, int], set[str]]) -> list[float]:
    """Per restart: the first fault that hit attempt N → every pod of attempt N+1 Running."""
    first_fault: dict[tuple[str, int], float] = {}
    for f in soak.faults:
        for job, attempt, _ in f.hits if f.landed else []:
            first_fault.setdefault((job, attempt), f.at)
    running: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for e in soak.recorder.events:
        if e.phase == "Running" and not e.deleting:
            running[(pod_job(e.name), pod_attempt(e.name))].setdefault(e.name, e.at)
    times = []
    for (job, a), at in first_fault.items():
        nxt = running.get((job, a + 1), {})
        if len(nxt) == 2:
            times.append(max(nxt.values()) - at)
    return sorted(times)


def summary(figures: dict[str, Any]) -> str:
    rec = figures["recover_seconds"]
    lines = [
        f"jobs Succeeded {figures['jobs_succeeded']} of {figures['jobs']} "
        f"(+{figures['references']} uninterrupted references; all Succeeded: {figures['all_succeeded']})",
        "faults injected (landed) by kind: "
        + ", ".join(f"{k} {figures['faults_by_kind'][k]} ({figures['landed_by_kind'][k]})" for k in KINDS),
        f"restarts counted {figures['restarts_counted']}, uncounted {figures['restarts_uncounted']}; "
        f"expected {figures['expected_restarts']} with counted in {list(figures['expected_counted_range'])}",
        f"time to recover (fault → next attempt all Running), n={len(rec)}: "
        f"p50 {percentile(rec, 50):.1f} s, p99 {percentile(rec, 99):.1f} s, "
        f"max {max(rec, default=float('nan')):.1f} s",
        f"loss records compared with the references: {figures['loss_records_compared']}, "
        f"mismatches (bits differ or step missing): {figures['loss_mismatches']}",
        f"attempt overlaps: {figures['overlaps']} "
        f"(pairs undecidable after a relist: {figures['order_unverified_pairs']})",
        f"controller replica exits: {len(figures['controller_exits'])} {figures['controller_exits']}; "
        f"pod watch relists: {figures['watch_relists']}",
    ]
    return "\n".join(lines)


def _job_events(soak: ChaosSoak) -> dict[str, list[str]]:
    """Each chaos job's events, oldest first: which restart was classified how."""
    listed = retrying(lambda: client.CoreV1Api(soak.api).list_namespaced_event(soak.namespace))
    events: dict[str, list[str]] = defaultdict(list)
    for e in sorted(listed.items, key=lambda e: str(e.last_timestamp or e.event_time or "")):
        name = e.involved_object.name
        if e.involved_object.kind == "TrainingJob" and not soak.jobs[name].reference:
            events[name].append(f"{e.reason}: {(e.message or '')[:160]}")
    return dict(events)
