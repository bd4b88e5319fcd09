"""Ascend device faults, read from the ConfigMaps the Ascend device plugin writes.

MindCluster's device plugin keeps `mindx-dl-deviceinfo-<node>` in kube-system. Its data key
`DeviceInfoCfg` holds a JSON document whose `DeviceInfo.DeviceList` maps
`huawei.com/Ascend910-Unhealthy`, `-NetworkUnhealthy` and `-Fault` to the affected devices
(ConfigMap keys cannot contain '/', so these never appear as top-level keys). An empty value,
`[]` or `{}` means healthy; an unreadable document reports nothing rather than failing jobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from controller.api.constants import ASCEND_RESOURCE

CONFIGMAP_PREFIX = "mindx-dl-deviceinfo-"
CONFIGMAP_NAMESPACE = "kube-system"
FAULT_KEYS = tuple(f"{ASCEND_RESOURCE}-{suffix}" for suffix in ("Unhealthy", "NetworkUnhealthy", "Fault"))


def _faults_in(entries: Mapping[str, Any]) -> list[str]:
    found = []
    for key in FAULT_KEYS:
        value = entries.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value not in (None, "", "[]", "{}", [], {}):
            found.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return found


def node_faults(configmap: Mapping[str, Any]) -> tuple[str, str] | None:
    """(node, description) if the ConfigMap reports a faulty device, else None."""
    name = (configmap.get("metadata") or {}).get("name", "")
    if not name.startswith(CONFIGMAP_PREFIX):
        return None
    data = configmap.get("data") or {}
    found: list[str] = []
    document = data.get("DeviceInfoCfg")
    if isinstance(document, str):
        try:
            parsed = json.loads(document)
        except json.JSONDecodeError:
            parsed = None
        device_list = (
            ((parsed or {}).get("DeviceInfo") or {}).get("DeviceList") if isinstance(parsed, dict) else None
        )
        if isinstance(device_list, dict):
            found += _faults_in(device_list)
    if not found:
        return None
    return name[len(CONFIGMAP_PREFIX) :], "; ".join(found)[:512]


def faults_by_node(configmaps: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    return dict(f for cm in configmaps if (f := node_faults(cm)) is not None)
