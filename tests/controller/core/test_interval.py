"""The suggested checkpoint interval (core/policy/interval.py) and spec.checkpointInterval: Auto."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest

from controller.api.types import InvalidSpec, parse_job, status_to_dict
from controller.core.observations import Observations
from controller.core.plan import CreatePods
from controller.core.timefmt import format_time
from respawn_protocol import contract
from respawn_protocol.report import annotation_key
from tests.support.core_inputs import NOW, job, pod, run

HOUR = timedelta(hours=1)


def reporting(rank: int, attempt: int, **report: Any) -> dict[str, Any]:
    body = pod(rank, attempt=attempt)
    value = {"attempt": attempt, "step": 500, "at": format_time(NOW), **report}
    body["metadata"]["annotations"] = {annotation_key(rank): json.dumps(value)}
    return body


def running(attempt: int = 2, restarts: int = 1, uncounted: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Running",
        "attempt": attempt,
        "replicas": 2,
        "restarts": restarts,
        "uncountedRestarts": uncounted,
        "startTime": format_time(NOW - 2 * HOUR),
        **extra,
    }


def test_young_daly_from_the_job_s_failures_and_the_reported_save_cost() -> None:
    pods = [reporting(0, 2, stepTime=0.5, saveCost=2.0), pod(1, attempt=2)]
    st = run(job(running()), pods).status
    assert st is not None and st.checkpoint_interval is not None
    advice = st.checkpoint_interval
    assert (advice.basis, advice.failures, advice.mtbf, advice.save_cost) == ("job", 2, 3600.0, 2.0)
    assert advice.seconds == pytest.approx(math.sqrt(2 * 2.0 * 3600)) and advice.steps == 240
    # A noisy step time does not rewrite it; a new failure does.
    body = job(running(checkpointInterval=status_to_dict(st)["checkpointInterval"]))
    noisy = run(body, [reporting(0, 2, stepTime=0.55, saveCost=2.0), pod(1, attempt=2)]).status
    assert noisy is not None and noisy.checkpoint_interval == advice, "within a quarter: kept as it was"
    again = run({**body, "status": {**body["status"], "restarts": 2}}, pods).status
    assert again is not None and again.checkpoint_interval is not None
    assert again.checkpoint_interval.failures == 3


def test_the_namespace_s_failures_while_the_job_has_none_and_nothing_without_either() -> None:
    pods = [reporting(0, 0, stepTime=1.0, saveCost=0.5), pod(1)]
    fresh = job(running(attempt=0, restarts=0, uncounted=0))
    alone = run(fresh, pods).status
    assert alone is not None and alone.checkpoint_interval is None, "no failure anywhere: no MTBF"
    others = Observations(namespace_failures=(10 * 3600.0, 4))
    st = run(fresh, pods, others).status
    assert st is not None and st.checkpoint_interval is not None
    assert (st.checkpoint_interval.basis, st.checkpoint_interval.mtbf) == ("namespace", 2.5 * 3600)
    no_cost = [reporting(0, 0, stepTime=1.0), pod(1)]
    quiet = run(fresh, no_cost, others).status
    assert quiet is not None and quiet.checkpoint_interval is None, "no save cost reported: no suggestion"


def test_auto_hands_the_suggestion_to_the_next_attempt_s_pods() -> None:
    advice = {"seconds": 120.0, "steps": 240, "mtbfSeconds": 3600.0, "saveSeconds": 2.0, "failures": 2}
    restarting = {
        "phase": "Restarting",
        "attempt": 3,
        "restarts": 2,
        "checkpointInterval": {**advice, "basis": "job"},
        "nextAttemptAfter": format_time(NOW - timedelta(seconds=1)),
    }
    for policy, expected in (("Auto", "240"), ("Manual", None)):
        plan = run(job(restarting, checkpointInterval=policy), [])
        [create] = plan.of(CreatePods)
        env = {e["name"]: e.get("value") for e in create.body(0)["spec"]["containers"][0]["env"]}
        assert env.get(contract.SAVE_CHECKPOINT_STEPS) == expected, policy
    with pytest.raises(InvalidSpec, match="checkpointInterval must be Manual or Auto"):
        parse_job(job(None, checkpointInterval="Sometimes"))
