"""Reading Ascend device faults from the device plugin's ConfigMaps."""

from __future__ import annotations

import json

import pytest

from controller.core.devicefaults import faults_by_node, node_faults


def configmap(name: str, data: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "namespace": "kube-system"}, "data": data}


def device_info(**device_list: str) -> dict[str, str]:
    return {"DeviceInfoCfg": json.dumps({"DeviceInfo": {"DeviceList": device_list}, "CheckCode": "x"})}


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (device_info(**{"huawei.com/Ascend910-Unhealthy": "Ascend910-3"}), "Ascend910-Unhealthy=Ascend910-3"),
        (
            device_info(**{"huawei.com/Ascend910-NetworkUnhealthy": "Ascend910-0"}),
            "NetworkUnhealthy=Ascend910-0",
        ),
        (device_info(**{"huawei.com/Ascend910-Fault": '[{"fault_type":"CardUnhealthy"}]'}), "Fault=[{"),
    ],
)
def test_faults_are_found(data: dict[str, str], fault: str) -> None:
    found = node_faults(configmap("mindx-dl-deviceinfo-node-7", data))
    assert found is not None and found[0] == "node-7" and fault in found[1]


@pytest.mark.parametrize(
    "data",
    [
        device_info(**{"huawei.com/Ascend910-Unhealthy": "", "huawei.com/Ascend910-Fault": "[]"}),
        device_info(**{"huawei.com/Ascend910": "Ascend910-0"}),
        {"DeviceInfoCfg": "not json"},
        {"DeviceInfoCfg": "[1, 2]"},
        {},
    ],
)
def test_healthy_or_unreadable_maps_report_nothing(data: dict[str, str]) -> None:
    assert node_faults(configmap("mindx-dl-deviceinfo-node-1", data)) is None


def test_other_configmaps_are_ignored() -> None:
    maps = [
        configmap("mindx-dl-nodeinfo-node-1", device_info(**{"huawei.com/Ascend910-Unhealthy": "x"})),
        configmap(
            "mindx-dl-deviceinfo-node-2", device_info(**{"huawei.com/Ascend910-Unhealthy": "Ascend910-5"})
        ),
    ]
    assert list(faults_by_node(maps)) == ["node-2"]
