"""Ascend device faults as the cluster writes them: MindCluster's Ascend Device Plugin publishes each
node's chips in `mindx-dl-deviceinfo-<node>` in kube-system
(Ascend/mind-cluster docs/en/scheduling/api/ascend_device_plugin.md); tests write the same object."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from kubernetes import client

CHIPS = ",".join(f"Ascend910-{i}" for i in range(8))


def fault_entry(chip: str, level: str, codes: str) -> dict[str, Any]:
    """One `huawei.com/Ascend910-Fault` object as the device plugin writes it (fault time in ms)."""
    now_ms = int(time.time() * 1000)
    return {
        "fault_type": "CardUnhealthy",
        "npu_name": chip,
        "large_model_fault_level": level,
        "fault_level": level,
        "fault_handling": level,
        "fault_code": codes,
        "fault_time_and_level_map": {
            c: {"fault_time": now_ms, "fault_level": level} for c in codes.split(",")
        },
    }


@contextlib.contextmanager
def device_info(
    api: client.ApiClient, node: str, *faults: dict[str, Any], unhealthy: str = ""
) -> Iterator[dict[str, Any]]:
    """`mindx-dl-deviceinfo-<node>` in kube-system, in the device plugin's format, for the block."""
    healthy = ",".join(c for c in CHIPS.split(",") if c not in unhealthy.split(","))
    device_list = {
        "huawei.com/Ascend910": healthy,
        "huawei.com/Ascend910-Fault": json.dumps(list(faults)),
        "huawei.com/Ascend910-NetworkUnhealthy": "",
        "huawei.com/Ascend910-Recovering": "",
        "huawei.com/Ascend910-Unhealthy": unhealthy,
    }
    document = {
        "DeviceInfo": {"DeviceList": device_list, "UpdateTime": int(time.time())},
        "CheckCode": "0" * 64,
    }
    name = f"mindx-dl-deviceinfo-{node}"
    body = {
        "metadata": {"name": name},
        "data": {"DeviceInfoCfg": json.dumps(document), "ManuallySeparateNPU": ""},
    }
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map("kube-system", body)
    try:
        yield created.to_dict()
    finally:
        core.delete_namespaced_config_map(name, "kube-system")
