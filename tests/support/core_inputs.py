"""Inputs of the controller's pure core, as raw API bodies: a TrainingJob, its worker pods, and a
fixed clock. The table tests of controller/core build their cases from these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from controller.api.constants import ASCEND_RESOURCE
from controller.api.types import JobStatus, parse_job
from controller.core.context import Context
from controller.core.decide import decide
from controller.core.devicefaults import NodeReport, node_report
from controller.core.observations import Observations
from controller.core.plan import Plan
from controller.core.pods import split_attempts
from controller.core.timefmt import format_time
from respawn_protocol.crd import LABEL_ATTEMPT, LABEL_RANK

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body_spec = {
        "replicas": 2,
        "template": {"spec": {"containers": [{"name": "trainer", "command": ["python"]}]}},
        "sharedVolume": {
            "volume": {"persistentVolumeClaim": {"claimName": "shared"}},
            "mountPath": "/mnt/shared",
        },
        "failurePolicy": {"maxRestarts": 2, "backoff": {"initialSeconds": 10, "maxSeconds": 40}},
        **spec,
    }
    return {
        "metadata": {
            "name": "llm",
            "namespace": "team",
            "uid": "u-1",
            "generation": 1,
            "resourceVersion": "7",
        },
        "spec": body_spec,
        "status": status or {},
    }


def pod(
    rank: int,
    *,
    attempt: int = 0,
    phase: str = "Running",
    exit_code: int | None = None,
    reason: str | None = None,
    node: str = "node-0",
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    finished: datetime = NOW,
    owner: str = "u-1",
    created: datetime | None = None,
    waiting: str | None = None,
    started: datetime | None = None,
    chips: str | None = None,
) -> dict[str, Any]:
    """A worker pod; `created` sets its creationTimestamp, `waiting` the trainer's waiting reason,
    `started` its status.startTime, `chips` the NPUs the device plugin allocated (annotation)."""
    state: dict[str, Any] = {"running": {}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for the test"}}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason or "Error",
                "finishedAt": format_time(finished),
            }
        }
    meta: dict[str, Any] = {
        "name": f"llm-a{attempt}-{rank}",
        "uid": f"pod-a{attempt}-{rank}",
        "labels": {LABEL_ATTEMPT: str(attempt), LABEL_RANK: str(rank)},
        "ownerReferences": [{"kind": "TrainingJob", "name": "llm", "uid": owner, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = format_time(NOW)
    if created is not None:
        meta["creationTimestamp"] = format_time(created)
    if chips is not None:
        meta["annotations"] = {ASCEND_RESOURCE: chips}
    body: dict[str, Any] = {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [{"name": "trainer", "state": state}],
        },
    }
    if started is not None:
        body["status"]["startTime"] = format_time(started)
    return body


RUNNING = {"phase": "Running", "attempt": 0, "replicas": 2}


def run(
    body: dict[str, Any], pods: list[dict[str, Any]], obs: Observations | None = None, now: datetime = NOW
) -> Plan:
    return decide(parse_job(body), pods, obs or Observations(), now)


def context(
    body: dict[str, Any],
    pods: Sequence[dict[str, Any]] = (),
    obs: Observations | None = None,
    now: datetime = NOW,
) -> tuple[Context, JobStatus]:
    """What `decide` hands a policy: the context of the pass and the job's status."""
    parsed = parse_job(body)
    current, older = split_attempts(pods, parsed.status.attempt)
    return Context(parsed, obs or Observations(), now, current, older), parsed.status


def fault_entry(chip: str, level: str, codes: str = "80E18402", at: datetime | None = NOW) -> dict[str, Any]:
    """One `huawei.com/Ascend910-Fault` object as MindCluster's device plugin writes it; `at` is
    the fault time (written in ms), None for a plugin that writes none."""
    entry: dict[str, Any] = {
        "fault_type": "NodeUnhealthy" if not chip else "CardUnhealthy",
        "npu_name": chip,
        "large_model_fault_level": level,
        "fault_level": level,
        "fault_handling": level,
        "fault_code": codes,
    }
    if at is not None:
        ms = int(at.timestamp() * 1000)
        entry["fault_time_and_level_map"] = {
            c: {"fault_time": ms, "fault_level": level} for c in codes.split(",")
        }
    return entry


def device_report(
    node: str,
    *entries: dict[str, Any],
    recovering: str = "",
    manual: str = "",
    updated: datetime = NOW,
) -> NodeReport:
    """What `mindx-dl-deviceinfo-<node>` says, read by the core's parser from the plugin's format;
    `updated` is the document's UpdateTime."""
    device_list = {
        ASCEND_RESOURCE: ",".join(f"Ascend910-{i}" for i in range(8)),
        f"{ASCEND_RESOURCE}-Fault": json.dumps(list(entries)),
        f"{ASCEND_RESOURCE}-NetworkUnhealthy": "",
        f"{ASCEND_RESOURCE}-Recovering": recovering,
        f"{ASCEND_RESOURCE}-Unhealthy": "",
    }
    document = {"DeviceInfo": {"DeviceList": device_list, "UpdateTime": int(updated.timestamp())}}
    configmap = {
        "metadata": {"name": f"mindx-dl-deviceinfo-{node}", "namespace": "kube-system"},
        "data": {"DeviceInfoCfg": json.dumps(document), "ManuallySeparateNPU": manual},
    }
    report = node_report(configmap)
    assert report is not None
    return report
