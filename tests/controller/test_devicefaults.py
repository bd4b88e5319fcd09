"""Reading Ascend device faults from the device plugin's ConfigMaps."""

from __future__ import annotations

import json

import pytest

from controller.devicefaults import faults_by_node, node_faults


def configmap(name: str, data: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "namespace": "kube-system"}, "data": data}


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        ({"huawei.com/Ascend910-Unhealthy": "Ascend910-3"}, "huawei.com/Ascend910-Unhealthy=Ascend910-3"),
        (
            {"huawei.com/Ascend910-NetworkUnhealthy": "Ascend910-0,Ascend910-1"},
            "NetworkUnhealthy=Ascend910-0",
        ),
        ({"huawei.com/Ascend910-Fault": '[{"fault_type":"CardUnhealthy"}]'}, "Ascend910-Fault=[{"),
        (
            {
                "DeviceInfoCfg": json.dumps(
                    {
                        "DeviceInfo": {
                            "DeviceList": {
                                "huawei.com/Ascend910": "Ascend910-0,Ascend910-1",
                                "huawei.com/Ascend910-Unhealthy": "Ascend910-1",
                            }
                        }
                    }
                )
            },
            "Unhealthy=Ascend910-1",
        ),
    ],
)
def test_faults_are_found_in_either_layout(data: dict[str, str], fault: str) -> None:
    found = node_faults(configmap("mindx-dl-deviceinfo-node-7", data))
    assert found is not None and found[0] == "node-7" and fault in found[1]


@pytest.mark.parametrize(
    "data",
    [
        {"huawei.com/Ascend910-Unhealthy": "", "huawei.com/Ascend910-Fault": "[]"},
        {"DeviceInfoCfg": "not json"},
        {
            "DeviceInfoCfg": json.dumps(
                {"DeviceInfo": {"DeviceList": {"huawei.com/Ascend910": "Ascend910-0"}}}
            )
        },
    ],
)
def test_healthy_or_unreadable_maps_report_nothing(data: dict[str, str]) -> None:
    assert node_faults(configmap("mindx-dl-deviceinfo-node-1", data)) is None


def test_other_configmaps_are_ignored() -> None:
    maps = [
        configmap("mindx-dl-nodeinfo-node-1", {"huawei.com/Ascend910-Unhealthy": "x"}),
        configmap("mindx-dl-deviceinfo-node-2", {"huawei.com/Ascend910-Unhealthy": "Ascend910-5"}),
    ]
    assert list(faults_by_node(maps)) == ["node-2"]
