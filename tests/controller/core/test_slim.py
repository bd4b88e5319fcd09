"""The pod cache keeps only what the controller reads (core/pods.py `slim`): every decision made
from slimmed pods equals the one made from whole pods."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from controller.api.types import parse_job
from controller.core import podspec
from controller.core.observations import NodeState, Observations
from controller.core.pods import slim
from controller.core.timefmt import format_time
from respawn_protocol.report import annotation_key
from tests.support.core_inputs import NOW, RUNNING, job, pod, run


def whole(body: dict[str, Any]) -> dict[str, Any]:
    """A core_inputs pod as the API server returns it: the spec the controller built, managedFields."""
    built = podspec.worker_pod(parse_job(job(RUNNING)), attempt=0, rank=0, replicas=2)
    body["spec"] = {**built["spec"], **body["spec"]}
    body["metadata"]["managedFields"] = [{"manager": "respawn", "fieldsV1": {"f:spec": {}}}]
    return body


def reported(rank: int, **report: Any) -> dict[str, Any]:
    body = pod(rank)
    body["metadata"]["annotations"] = {annotation_key(rank): json.dumps({"attempt": 0, **report})}
    return body


CASES = {
    "running": ([pod(0), pod(1)], None),
    "an exit": ([pod(0), pod(1, phase="Failed", exit_code=1)], None),
    "a NotReady node": (
        [pod(0), pod(1, node="node-1")],
        Observations(nodes={"node-1": NodeState(False, NOW - timedelta(seconds=99))}),
    ),
    "reports": (
        [
            reported(0, step=7, stepTime=0.5, at=format_time(NOW), commit={"step": 5}),
            reported(1, commit={"step": 5}),
        ],
        None,
    ),
    "chips": (
        [pod(0, chips="Ascend910-0"), pod(1, phase="Failed", exit_code=137, chips="Ascend910-1")],
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_decisions_from_slim_pods_equal_those_from_whole_pods(case: str) -> None:
    pods, obs = CASES[case]
    full = [whole(p) for p in pods]
    slimmed = [slim(p) for p in full]
    assert all("containers" not in p["spec"] and "managedFields" not in p["metadata"] for p in slimmed)
    assert len(json.dumps(slimmed)) < len(json.dumps(full)) / 2
    assert run(job(RUNNING), slimmed, obs) == run(job(RUNNING), full, obs)
