"""Ascend device faults as MindCluster's Ascend Device Plugin reports them: pure functions over raw
ConfigMap bodies and pod bodies, no I/O.

The device plugin keeps one ConfigMap per node, `mindx-dl-deviceinfo-<node>` in kube-system. Its
data key `DeviceInfoCfg` holds `{"DeviceInfo": {"DeviceList": {...}, "UpdateTime": <unix s>}, ...}`;
`DeviceList` maps `huawei.com/Ascend910-Unhealthy`, `-NetworkUnhealthy` and `-Recovering` to
comma-separated chip names and `huawei.com/Ascend910-Fault` to a JSON list (as a string) of
`{fault_type, npu_name, large_model_fault_level, fault_level, fault_handling, fault_code,
fault_time_and_level_map}`. Releases before 6.0.0 write no fault times; development builds of
2024-11 wrote `fault_time_map` (code -> ms) or one `fault_time`. A second data key,
`ManuallySeparateNPU`, lists chips isolated until an operator releases them. Newer products use
`huawei.com/npu` instead of `huawei.com/Ascend910`; both are read.
Sources, in Ascend/mind-cluster: docs/en/scheduling/api/ascend_device_plugin.md (DeviceInfoCfg,
Custom Chip Faults), component/ascend-device-plugin/pkg/common/proto.go (DeviceFault) and
pkg/device/ascendcommon.go (which chips are Unhealthy/Recovering); docs/controller.md sums them up.

Each chip's fault gets an action class (`FaultClass`): IGNORE (NotHandleFault, SubHealthFault:
MindCluster does not interrupt a job for them), RESTART (RestartRequest, RestartBusiness,
RestartNPU, FreeRestartNPU, and chips being reset, `-Recovering`), SEPARATE (PreSeparateNPU,
SeparateNPU, manual separation, a level this module does not know - MindCluster's own default for
an unrecognised fault is SeparateNPU - and a chip the plugin marks Unhealthy with no restart level).
The document is read leniently: wrong types and missing fields are skipped, and a document that
cannot be read at all reports nothing (the node is unknown, not faulty).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CONFIGMAP_PREFIX = "mindx-dl-deviceinfo-"
CONFIGMAP_NAMESPACE = "kube-system"
DOCUMENT_KEY = "DeviceInfoCfg"
MANUAL_KEY = "ManuallySeparateNPU"
RESOURCES = ("huawei.com/Ascend910", "huawei.com/npu")
# Pod annotations: the chips the device plugin actually mounted, then the scheduler's allocation
# (docs/en/scheduling/api/k8s.md, "Pod Annotations").
POD_CHIP_ANNOTATIONS = ("huawei.com/AscendReal", *RESOURCES)


class FaultClass(enum.StrEnum):
    IGNORE = "ignore"
    RESTART = "restart"
    SEPARATE = "separate"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {FaultClass.IGNORE: 0, FaultClass.RESTART: 1, FaultClass.SEPARATE: 2}

LEVELS: Mapping[str, FaultClass] = {
    "NotHandleFault": FaultClass.IGNORE,
    "SubHealthFault": FaultClass.IGNORE,
    "RestartRequest": FaultClass.RESTART,
    "RestartBusiness": FaultClass.RESTART,
    "RestartNPU": FaultClass.RESTART,
    "FreeRestartNPU": FaultClass.RESTART,
    "PreSeparateNPU": FaultClass.SEPARATE,
    "SeparateNPU": FaultClass.SEPARATE,
    "ManuallySeparateNPU": FaultClass.SEPARATE,
}
# Levels that name no fault: the plugin's NormalNPU/NormalNetwork (an unhealthy chip without fault
# codes) and "" (a node fault, or a field left out).
NO_LEVEL = frozenset({"", "NormalNPU", "NormalNetwork"})
NODE_FAULT_TYPE = "NodeUnhealthy"  # a node fault: no npu_name and an empty level


def classify(level: str) -> FaultClass:
    """The action class of one MindCluster fault level. A level without a fault of its own is
    IGNORE; an unknown level is SEPARATE (the safe reading: at most one restart, then the node is
    avoided, where IGNORE could leave a job on a broken chip and RESTART could loop)."""
    if level in LEVELS:
        return LEVELS[level]
    if level in NO_LEVEL or "subhealth" in level.lower() or level.startswith("NotHandle"):
        return FaultClass.IGNORE
    return FaultClass.SEPARATE


@dataclass(frozen=True)
class FaultCode:
    code: str
    time: datetime | None = None
    level: str = ""  # this code's own level, when fault_time_and_level_map gives one


@dataclass(frozen=True)
class Fault:
    """One reason a chip is faulty. `chip` "" is the whole node. `origin` is the DeviceList suffix or
    data key that said it: Fault, Unhealthy, NetworkUnhealthy, Recovering, ManuallySeparateNPU."""

    chip: str
    level: str
    action: FaultClass
    origin: str = "Fault"
    fault_type: str = ""
    codes: tuple[FaultCode, ...] = ()
    time: datetime | None = None  # newest time among the codes of this fault's class

    def describe(self) -> str:
        what = self.level or self.origin
        codes = ",".join(c.code for c in self.codes)
        return f"{self.chip or 'node'} {what}" + (f" ({codes})" if codes else "")


@dataclass(frozen=True)
class NodeReport:
    """What one node's ConfigMap says. `faults` holds every -Fault entry plus one Fault per chip that
    only a chip list or the manual key names; a chip's action is the most severe of its faults."""

    node: str
    faults: tuple[Fault, ...] = ()
    unhealthy: frozenset[str] = frozenset()
    network_unhealthy: frozenset[str] = frozenset()
    recovering: frozenset[str] = frozenset()
    manually_separated: frozenset[str] = frozenset()
    reported_at: datetime | None = None  # the document's UpdateTime

    def chip_action(self, chip: str) -> FaultClass | None:
        found = [f.action for f in self.faults if f.chip == chip]
        return max(found, key=lambda a: a.severity) if found else None

    def chips(self, action: FaultClass | str | None = None) -> frozenset[str]:
        """Chips whose action is `action`; by default those that restart or separate. A node-wide
        fault is the chip ""."""
        names = {f.chip for f in self.faults}
        wanted = {FaultClass(action)} if action is not None else {FaultClass.RESTART, FaultClass.SEPARATE}
        return frozenset(c for c in names if self.chip_action(c) in wanted)

    @property
    def action(self) -> FaultClass | None:
        """The node's most severe action: restart or separate; None when nothing asks for one."""
        worst = max((f.action for f in self.faults), key=lambda a: a.severity, default=None)
        return None if worst in (None, FaultClass.IGNORE) else worst

    def describe(self, limit: int = 512) -> str:
        acting = [f for f in self.faults if f.action is not FaultClass.IGNORE]
        acting.sort(key=lambda f: (-f.action.severity, f.chip, f.origin))
        return "; ".join(f.describe() for f in acting)[:limit]


def chips_of_pod(pod: Mapping[str, Any]) -> frozenset[str] | None:
    """The chips the device plugin allocated to a pod, from its annotations; None when it has none."""
    metadata = pod.get("metadata") if isinstance(pod, Mapping) else None
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(annotations, Mapping):
        return None
    for key in POD_CHIP_ANNOTATIONS:
        if names := _names(annotations.get(key)):
            return names
    return None


def node_report(configmap: Mapping[str, Any]) -> NodeReport | None:
    """The report of one `mindx-dl-deviceinfo-<node>` ConfigMap; None for another ConfigMap or an
    unreadable document."""
    metadata = configmap.get("metadata") if isinstance(configmap, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name.startswith(CONFIGMAP_PREFIX) or name == CONFIGMAP_PREFIX:
        return None
    data = configmap.get("data")
    data = data if isinstance(data, Mapping) else {}
    info = _load(data.get(DOCUMENT_KEY))
    if info is None:
        return None
    device_list = info.get("DeviceList")
    return _report(
        name[len(CONFIGMAP_PREFIX) :],
        device_list if isinstance(device_list, Mapping) else {},
        _names(data.get(MANUAL_KEY)),
        _time(info.get("UpdateTime")),
    )


def node_reports(configmaps: Iterable[Mapping[str, Any]]) -> dict[str, NodeReport]:
    """node -> report for every readable device-info ConfigMap, healthy nodes included."""
    return {r.node: r for cm in configmaps if (r := node_report(cm)) is not None}


# -- reading the document --------------------------------------------------------------------------


def _load(document: Any) -> Mapping[str, Any] | None:
    """`DeviceInfo` of a DeviceInfoCfg document, or None if it cannot be read."""
    if isinstance(document, bytes | bytearray):
        document = document.decode("utf-8", "replace")
    if not isinstance(document, str):
        return None
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError):
        return None
    info = parsed.get("DeviceInfo") if isinstance(parsed, dict) else None
    return info if isinstance(info, dict) else None


def _report(
    node: str, device_list: Mapping[str, Any], manual: frozenset[str], reported_at: datetime | None
) -> NodeReport:
    lists = {suffix: frozenset[str]() for suffix in ("Unhealthy", "NetworkUnhealthy", "Recovering")}
    entries: list[Fault] = []
    for key, value in device_list.items():
        resource, _, suffix = str(key).rpartition("-")
        if resource not in RESOURCES:
            continue
        if suffix == "Fault":
            entries += [f for raw in _entries(value) if (f := _entry(raw)) is not None]
        elif suffix in lists:
            lists[suffix] |= _names(value)
    faults = entries + [Fault(c, MANUAL_KEY, FaultClass.SEPARATE, MANUAL_KEY) for c in sorted(manual)]
    faults += [Fault(c, "", FaultClass.RESTART, "Recovering") for c in sorted(lists["Recovering"])]
    faults += _unhealthy(faults, lists["Unhealthy"], lists["NetworkUnhealthy"])
    return NodeReport(
        node,
        tuple(faults),
        lists["Unhealthy"],
        lists["NetworkUnhealthy"],
        lists["Recovering"],
        manual,
        reported_at,
    )


def _unhealthy(faults: list[Fault], unhealthy: frozenset[str], network: frozenset[str]) -> list[Fault]:
    """SEPARATE faults for listed chips that nothing else explains. The plugin marks a chip Unhealthy
    at every level above SubHealthFault (restart levels too), so a chip whose fault asks for a restart
    or separation keeps that; one with no such fault is separated. A sub-health network fault marks a
    chip NetworkUnhealthy, so there only a chip without any -Fault entry (older plugins) is separated."""
    acting = {f.chip for f in faults if f.action is not FaultClass.IGNORE}
    entered = {f.chip for f in faults if f.origin == "Fault"}
    found = [Fault(c, "", FaultClass.SEPARATE, "Unhealthy") for c in sorted(unhealthy - acting)]
    lone = network - acting - entered - unhealthy
    return found + [Fault(c, "", FaultClass.SEPARATE, "NetworkUnhealthy") for c in sorted(lone)]


def _entries(value: Any) -> list[Any]:
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except (ValueError, RecursionError):
            return []
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _entry(raw: Any) -> Fault | None:
    """One -Fault object. The level is fault_handling, else fault_level, else
    large_model_fault_level (the docs: same meaning, fault_handling recommended); an entry without
    one takes its codes' most severe level, and a node fault (NodeUnhealthy) without one separates."""
    if not isinstance(raw, Mapping):
        return None
    codes = _codes(raw)
    level = next(
        (t for k in ("fault_handling", "fault_level", "large_model_fault_level") if (t := _text(raw.get(k)))),
        "",
    )
    fault_type = _text(raw.get("fault_type"))
    if level:
        action = classify(level)
    elif fault_type == NODE_FAULT_TYPE:
        action = FaultClass.SEPARATE
    else:
        action = max((classify(c.level) for c in codes), key=lambda a: a.severity, default=FaultClass.IGNORE)
    time = _newest(c.time for c in codes if classify(c.level or level) is action)
    time = time or _newest(c.time for c in codes) or _time(raw.get("fault_time"))
    return Fault(_text(raw.get("npu_name")), level, action, "Fault", fault_type, codes, time)


def _codes(raw: Mapping[str, Any]) -> tuple[FaultCode, ...]:
    """The entry's fault codes with their times and levels, in fault_code order, then any code only
    the time maps name."""
    times: dict[str, tuple[datetime | None, str]] = {}
    old = raw.get("fault_time_map")
    if isinstance(old, Mapping):
        times.update({str(k).strip(): (_time(v), "") for k, v in old.items()})
    new = raw.get("fault_time_and_level_map")
    if isinstance(new, Mapping):
        for k, v in new.items():
            v = v if isinstance(v, Mapping) else {}
            times[str(k).strip()] = (_time(v.get("fault_time")), _text(v.get("fault_level")))
    fault_code = raw.get("fault_code")
    listed = [c.strip() for c in fault_code.split(",")] if isinstance(fault_code, str) else []
    order = list(dict.fromkeys([c for c in listed if c] + [c for c in times if c]))
    return tuple(FaultCode(c, *times.get(c, (None, ""))) for c in order)


def _names(value: Any) -> frozenset[str]:
    """Chip names from a comma-separated string (or a list of names); anything else is none."""
    if isinstance(value, str):
        parts: Iterable[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        parts = value
    else:
        return frozenset()
    return frozenset(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _time(value: Any) -> datetime | None:
    """A Unix time in milliseconds (fault times) or seconds (UpdateTime, some public faults): values
    from 1e11 on are milliseconds. Zero, negative, non-numeric or out-of-range values are None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
        if not math.isfinite(number) or number <= 0:
            return None
        return datetime.fromtimestamp(number / 1000 if number >= 1e11 else number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _newest(times: Iterable[datetime | None]) -> datetime | None:
    return max((t for t in times if t is not None), default=None)
