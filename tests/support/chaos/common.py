"""What the chaos soak's parts share: fault kinds, records of faults and pod events, the run config,
pod-name parsing, and an API call that rides out an API server restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from tests.support.e2e import long_run

COUNTED = {"kill"}
UNCOUNTED = {"evict", "node-not-ready", "device-fault"}
KINDS = ("kill", "evict", "node-not-ready", "device-fault", "leader-kill", "apiserver-restart")
DEVICE_INFO = {
    "DeviceInfo": {
        "DeviceList": {
            "huawei.com/Ascend910": "Ascend910-0,Ascend910-1,Ascend910-2",
            "huawei.com/Ascend910-Unhealthy": "Ascend910-3",
        }
    }
}


def run_config(seed: int, epochs: int, *, parallel: bool = False) -> dict[str, Any]:
    """The e2e test's run.yaml with another seed and length; a checkpoint every step.

    The shipped corpus makes 49 steps per epoch at 2 ranks; the LR schedule spans the whole run.
    By default the ranks train alone (no `use_parallel`), so on a loaded machine one runs ahead of
    the other by ten steps and more: keeping 20 checkpoints lets them share a complete step early on
    (the trainer never prunes the newest complete one afterwards), so a restart does not go back to
    step 0. `parallel` makes them one data-parallel gang (MindSpore collectives).
    """
    return long_run(
        epochs,
        seed=seed,
        train_dataset={"data_loader": {"type": "TextDataset"}},
        use_parallel=parallel,
    )


def pod_attempt(name: str) -> int:
    return int(name.rsplit("-", 2)[1][1:])


def pod_job(name: str) -> str:
    return name.rsplit("-", 2)[0]


@dataclass
class Fault:
    kind: str
    at: float  # time.monotonic() when injected
    target: str
    landed: bool
    hits: list[tuple[str, int, str]] = field(default_factory=list)  # (job, attempt, pod)
    note: str = ""
    window: tuple[float, float] | None = None  # a node fault: when it was on


@dataclass
class PodEvent:
    at: float
    type: str  # ADDED / MODIFIED / DELETED / RELIST-GONE
    name: str
    uid: str
    rv: int
    phase: str
    node: str | None
    deleting: bool
    exact: bool = True  # False: seen only through a relist, so its position in the order is a bound


@dataclass
class JobSpec:
    name: str
    config: str  # the ConfigMap holding its run.yaml
    reference: bool = False
    avoid_faulty_nodes: bool = True


def retrying(what: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Call `what` until it does not raise a connection-level error (the API server may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return what()
        except client.ApiException as exc:
            if exc.status and exc.status < 500 and exc.status != 429:
                raise
            if time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
