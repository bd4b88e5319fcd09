"""Reading Ascend device faults from the device plugin's ConfigMaps: table tests over documents shaped
as MindCluster writes them (docs/en/scheduling/api/ascend_device_plugin.md in Ascend/mind-cluster),
older formats, and malformed input that must never raise."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.core.devicefaults import (
    FaultClass,
    NodeReport,
    chips_of_pod,
    classify,
    node_report,
    node_reports,
)
from controller.core.policy.devices import on_chips

R, S = FaultClass.RESTART, FaultClass.SEPARATE
FAULT_MS = 1744167455784  # fault times are Unix milliseconds
FAULT_AT = datetime.fromtimestamp(FAULT_MS / 1000, UTC)
UPDATED = 1744182144  # UpdateTime is Unix seconds
KEY = "huawei.com/Ascend910"


def acting(found: NodeReport, chips: Iterable[str] | None) -> FaultClass | None:
    """The worst action among the faults the device policy counts on `chips` (None: the node)."""
    return max((f.action for f in on_chips(found, chips)), key=lambda a: a.severity, default=None)


def entry(
    chip: str = "Ascend910-4",
    level: str = "SeparateNPU",
    codes: str = "80E18402",
    *,
    at: Any = FAULT_MS,
    fault_type: str = "CardUnhealthy",
    **fields: Any,
) -> dict[str, Any]:
    """One `huawei.com/Ascend910-Fault` object as the device plugin writes it today."""
    return {
        "fault_type": fault_type,
        "npu_name": chip,
        "large_model_fault_level": level,
        "fault_level": level,
        "fault_handling": level,
        "fault_code": codes,
        "fault_time_and_level_map": {c: {"fault_time": at, "fault_level": level} for c in codes.split(",")},
        **fields,
    }


def document(
    *entries: Any,
    unhealthy: str = "",
    network: str = "",
    recovering: str = "",
    resource: str = KEY,
    update: Any = UPDATED,
) -> str:
    device_list = {
        resource: "Ascend910-0,Ascend910-1,Ascend910-2,Ascend910-3",
        f"{resource}-Fault": json.dumps(list(entries)),
        f"{resource}-NetworkUnhealthy": network,
        f"{resource}-Recovering": recovering,
        f"{resource}-Unhealthy": unhealthy,
    }
    body = {
        "DeviceInfo": {"DeviceList": device_list, "UpdateTime": update},
        "SuperPodID": -2,
        "ServerIndex": -2,
    }
    return json.dumps({**body, "CheckCode": "0" * 64})


def configmap(cfg: Any, manual: Any = "", node: str = "node-7") -> dict[str, Any]:
    return {
        "metadata": {"name": f"mindx-dl-deviceinfo-{node}", "namespace": "kube-system"},
        "data": {"DeviceInfoCfg": cfg, "ManuallySeparateNPU": manual},
    }


def report(cfg: Any, manual: Any = "") -> NodeReport:
    found = node_report(configmap(cfg, manual))
    assert found is not None
    return found


# -- one fault level per row --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "unhealthy", "action"),
    [
        ("NotHandleFault", "", None),
        ("SubHealthFault", "", None),
        ("RestartRequest", "Ascend910-4", R),
        ("RestartBusiness", "Ascend910-4", R),
        ("RestartNPU", "Ascend910-4", R),
        ("FreeRestartNPU", "Ascend910-4", R),
        ("FreeRestartNPU", "", R),  # in use under graceful tolerance: the plugin keeps it Healthy
        ("PreSeparateNPU", "", S),  # in use: the plugin keeps it Healthy, the level still says so
        ("PreSeparateNPU", "Ascend910-4", S),
        ("SeparateNPU", "Ascend910-4", S),
        ("ManuallySeparateNPU", "Ascend910-4", S),  # the plugin's most severe level
        ("SomeFutureLevel", "", S),  # unknown: the safe reading
        ("SubHealthyFaultV2", "", None),  # anything sub-health
        ("NormalNPU", "", None),  # an entry without a fault of its own
    ],
)
def test_each_level_has_its_action(level: str, unhealthy: str, action: FaultClass | None) -> None:
    found = report(document(entry(level=level), unhealthy=unhealthy))
    assert found.action == action
    assert found.chip_action("Ascend910-4") == (action or FaultClass.IGNORE)
    assert found.chips() == ({"Ascend910-4"} if action else set())
    read = node_reports([configmap(document(entry(level=level), unhealthy=unhealthy))])
    assert (read["node-7"].action is not None) == bool(action)


@pytest.mark.parametrize(
    ("level", "action"),
    [
        ("NotHandleFault", FaultClass.IGNORE),
        ("SubHealthFault", FaultClass.IGNORE),
        ("RestartRequest", R),
        ("RestartBusiness", R),
        ("RestartNPU", R),
        ("FreeRestartNPU", R),
        ("PreSeparateNPU", S),
        ("SeparateNPU", S),
        ("ManuallySeparateNPU", S),
        ("", FaultClass.IGNORE),
        ("NormalNetwork", FaultClass.IGNORE),
        ("NotHandle", FaultClass.IGNORE),  # the UnifiedBus spelling
        ("SeparateFault", S),  # a node/UnifiedBus level in a chip list: unknown here
        ("RestartRequestFault", S),
    ],
)
def test_classify(level: str, action: FaultClass) -> None:
    assert classify(level) is action


# -- the chip lists, the manual key, and how they combine with the -Fault entries -------------


@pytest.mark.parametrize(
    ("cfg", "manual", "chips"),
    [
        # Older plugins: chip lists only, no -Fault list. An Unhealthy chip is separated.
        (
            json.dumps({"DeviceInfo": {"DeviceList": {f"{KEY}-Unhealthy": "Ascend910-3"}}}),
            "",
            {"Ascend910-3": S},
        ),
        (
            json.dumps({"DeviceInfo": {"DeviceList": {f"{KEY}-NetworkUnhealthy": "Ascend910-0"}}}),
            "",
            {"Ascend910-0": S},
        ),
        # The plugin marks restart levels Unhealthy too: the entry's level decides.
        (document(entry(level="RestartBusiness"), unhealthy="Ascend910-4"), "", {"Ascend910-4": R}),
        # Unhealthy with an entry that has no fault of its own (no codes): separated.
        (document(entry(level="NormalNPU", codes=""), unhealthy="Ascend910-4"), "", {"Ascend910-4": S}),
        # Unhealthy against a NotHandleFault entry: the plugin's withdrawal of the chip wins.
        (document(entry(level="NotHandleFault"), unhealthy="Ascend910-4"), "", {"Ascend910-4": S}),
        # A sub-health network fault marks the chip NetworkUnhealthy: still ignored.
        (
            document(
                entry("Ascend910-0", "SubHealthFault", "81078603", fault_type="CardNetworkUnhealthy"),
                network="Ascend910-0",
            ),
            "",
            {},
        ),
        (
            document(
                entry("Ascend910-0", "PreSeparateNPU", "81078603", fault_type="CardNetworkUnhealthy"),
                network="Ascend910-0",
            ),
            "",
            {"Ascend910-0": S},
        ),
        # A hot reset: the reset group is Recovering (and Unhealthy) until the chips come back.
        (
            document(unhealthy="Ascend910-0,Ascend910-1", recovering="Ascend910-0,Ascend910-1"),
            "",
            {"Ascend910-0": R, "Ascend910-1": R},
        ),
        (document(entry("Ascend910-0", "RestartNPU"), recovering="Ascend910-0"), "", {"Ascend910-0": R}),
        # Manual separation (frequency escalation), healed fault or not.
        (document(), "Ascend910-5", {"Ascend910-5": S}),
        (document(), "Ascend910-5, Ascend910-6,", {"Ascend910-5": S, "Ascend910-6": S}),
        (document(entry(level="RestartNPU")), "Ascend910-4", {"Ascend910-4": S}),
        (document(), "", {}),
        # A node fault: no chip, no level. It is the whole node.
        (document(entry("", "", "heartbeatTimeOut", fault_type="NodeUnhealthy")), "", {"": S}),
        (document(entry("", "NotHandleFault", "80E21007", fault_type="NodeUnhealthy")), "", {}),
        # Two chips, two classes: each keeps its own.
        (
            document(
                entry("Ascend910-1", "RestartRequest"),
                entry("Ascend910-2", "NotHandleFault"),
                entry("Ascend910-3"),
            ),
            "",
            {"Ascend910-1": R, "Ascend910-3": S},
        ),
        # Newer products: huawei.com/npu.
        (document(entry("npu-3", "SeparateNPU"), resource="huawei.com/npu"), "", {"npu-3": S}),
        # Another resource's keys (an inference card) are not this controller's.
        (document(entry(level="SeparateNPU"), resource="huawei.com/Ascend310P"), "", {}),
    ],
)
def test_chip_actions(cfg: str, manual: str, chips: dict[str, FaultClass]) -> None:
    found = report(cfg, manual)
    assert {c: found.chip_action(c) for c in found.chips()} == chips
    worst = max(chips.values(), key=lambda a: a.severity, default=None)
    assert found.action == worst


def test_the_report_keeps_the_lists_and_the_time() -> None:
    cfg = document(
        entry(),
        entry("Ascend910-2", "NotHandleFault"),
        unhealthy="Ascend910-4",
        network="Ascend910-0",
        recovering="Ascend910-1",
    )
    found = report(cfg, "Ascend910-6")
    assert found.node == "node-7"
    assert found.unhealthy == {"Ascend910-4"} and found.network_unhealthy == {"Ascend910-0"}
    assert found.recovering == {"Ascend910-1"} and found.manually_separated == {"Ascend910-6"}
    assert found.reported_at == datetime.fromtimestamp(UPDATED, UTC)
    assert found.chips(S) == {"Ascend910-0", "Ascend910-4", "Ascend910-6"}
    assert found.chips("restart") == {"Ascend910-1"} and found.chips("ignore") == {"Ascend910-2"}
    # Chip 0 is NetworkUnhealthy without a -Fault entry of its own: separated.
    origins = ["Fault", "Fault", "ManuallySeparateNPU", "Recovering", "NetworkUnhealthy"]
    assert [f.origin for f in found.faults] == origins


def test_the_documented_example() -> None:
    """The A3 example of Ascend/mind-cluster docs/en/scheduling/references/common_operations.md, in
    shape: a pre-separated network fault on chip 0, a chip fault on 4 whose codes carry own levels."""
    codes = {
        "80E18401": {"fault_time": FAULT_MS, "fault_level": "NotHandleFault"},
        "80E18402": {"fault_time": FAULT_MS + 1, "fault_level": "SeparateNPU"},
        "A4028801": {"fault_time": FAULT_MS, "fault_level": "NotHandleFault"},
        "A8028801": {"fault_time": FAULT_MS + 1, "fault_level": "SeparateNPU"},
    }
    chip4 = entry(codes="A8028801,A4028801,80E18402,80E18401") | {"fault_time_and_level_map": codes}
    chip0 = entry(
        "Ascend910-0", "PreSeparateNPU", "81078603", at=FAULT_MS + 5000, fault_type="CardNetworkUnhealthy"
    )
    found = report(document(chip0, chip4, unhealthy="Ascend910-4", network="Ascend910-0"))
    assert found.action is S and found.chips(S) == {"Ascend910-0", "Ascend910-4"}
    fault = next(f for f in found.faults if f.chip == "Ascend910-4")
    assert [c.code for c in fault.codes] == ["A8028801", "A4028801", "80E18402", "80E18401"]
    assert [c.level for c in fault.codes] == [
        "SeparateNPU",
        "NotHandleFault",
        "SeparateNPU",
        "NotHandleFault",
    ]
    assert fault.time == datetime.fromtimestamp((FAULT_MS + 1) / 1000, UTC)  # newest SeparateNPU code
    assert fault.fault_type == "CardUnhealthy" and fault.level == "SeparateNPU"
    described = (
        "Ascend910-0 PreSeparateNPU (81078603); Ascend910-4 SeparateNPU (A8028801,A4028801,80E18402,80E18401)"
    )
    assert node_reports([configmap(document(chip0, chip4))])["node-7"].describe() == described


# -- fault times across versions ----------------------------------------------------------------


def _old(**fields: Any) -> dict[str, Any]:
    raw = entry()
    del raw["fault_time_and_level_map"]
    return raw | fields


@pytest.mark.parametrize(
    ("raw", "time", "codes"),
    [
        (entry(), FAULT_AT, [("80E18402", FAULT_AT, "SeparateNPU")]),
        (
            _old(fault_time_map={"80E18402": FAULT_MS}),
            FAULT_AT,
            [("80E18402", FAULT_AT, "")],
        ),  # 2024-11 to 2025
        (_old(fault_time=FAULT_MS), FAULT_AT, [("80E18402", None, "")]),  # before 2024-11
        (_old(), None, [("80E18402", None, "")]),
        (entry(at=1736926605), datetime.fromtimestamp(1736926605, UTC), None),  # public faults: seconds
        (entry(at=str(FAULT_MS)), FAULT_AT, None),
        (entry(at=0), None, None),
        (entry(at=-5), None, None),
        (entry(at=10**400), None, None),
        (entry(at=1e300), None, None),
        (entry(at="soon"), None, None),
        (entry(at=True), None, None),
        (entry(at=None), None, None),
        (
            _old(fault_time_map={"80E18402": "x", "80E18403": FAULT_MS}),
            FAULT_AT,
            [("80E18402", None, ""), ("80E18403", FAULT_AT, "")],
        ),
        (_old(fault_time_map=[FAULT_MS]), None, [("80E18402", None, "")]),
        (entry() | {"fault_time_and_level_map": {"80E18402": FAULT_MS}}, None, [("80E18402", None, "")]),
    ],
)
def test_fault_times(raw: dict[str, Any], time: datetime | None, codes: list[tuple[Any, ...]] | None) -> None:
    (fault,) = report(document(raw)).faults
    assert fault.time == time
    if codes is not None:
        assert [(c.code, c.time, c.level) for c in fault.codes] == codes


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (UPDATED, datetime.fromtimestamp(UPDATED, UTC)),
        (UPDATED * 1000, datetime.fromtimestamp(UPDATED, UTC)),
        ("later", None),
        (None, None),
    ],
)
def test_update_time(update: Any, expected: datetime | None) -> None:
    assert report(document(update=update)).reported_at == expected


# -- malformed input: never raises; an unreadable document reports nothing ----------------------


@pytest.mark.parametrize(
    "cm",
    [
        configmap("not json"),
        configmap("[1, 2]"),
        configmap('"DeviceInfo"'),
        configmap(json.dumps({"DeviceInfo": "x"})),
        configmap(json.dumps({"Other": {}})),
        configmap("[" * 100_000 + "]" * 100_000),
        configmap(None),
        configmap(7),
        configmap(""),
        {"metadata": {"name": "mindx-dl-deviceinfo-node-7"}, "data": None},
        {"metadata": {"name": "mindx-dl-deviceinfo-node-7"}},
        {"metadata": {"name": "mindx-dl-deviceinfo-"}, "data": {"DeviceInfoCfg": document(entry())}},
        {"metadata": {"name": "mindx-dl-nodeinfo-node-7"}, "data": {"DeviceInfoCfg": document(entry())}},
        {"metadata": {"name": 7}, "data": {"DeviceInfoCfg": document(entry())}},
        {"metadata": None},
        {},
        # A broken document hides the manual key too: an unreadable ConfigMap says nothing.
        configmap("{", manual="Ascend910-1"),
    ],
)
def test_unreadable_configmaps_report_nothing(cm: dict[str, Any]) -> None:
    assert node_report(cm) is None
    assert node_reports([cm]) == {}


@pytest.mark.parametrize(
    ("device_list", "chips"),
    [
        ({}, {}),
        ("a string", {}),
        ({f"{KEY}-Fault": "not json"}, {}),
        ({f"{KEY}-Fault": "[]"}, {}),
        ({f"{KEY}-Fault": ""}, {}),
        ({f"{KEY}-Fault": "{}"}, {}),
        ({f"{KEY}-Fault": json.dumps(entry())}, {"Ascend910-4": S}),  # one object, not a list
        ({f"{KEY}-Fault": [entry()]}, {"Ascend910-4": S}),  # a list, not a string
        ({f"{KEY}-Fault": json.dumps([1, "x", None, [entry()]])}, {}),
        ({f"{KEY}-Fault": json.dumps([{"npu_name": 4, "fault_handling": ["SeparateNPU"]}])}, {}),
        ({f"{KEY}-Fault": json.dumps([{"npu_name": "Ascend910-4", "fault_code": 80}])}, {}),
        (
            {f"{KEY}-Fault": json.dumps([{"npu_name": "Ascend910-4", "fault_level": "RestartNPU"}])},
            {"Ascend910-4": R},
        ),
        (
            {f"{KEY}-Fault": json.dumps([{"npu_name": " Ascend910-4 ", "fault_handling": " SeparateNPU "}])},
            {"Ascend910-4": S},
        ),
        # No level on the entry: its codes' most severe level.
        (
            {
                f"{KEY}-Fault": json.dumps(
                    [entry() | {"fault_handling": "", "fault_level": None, "large_model_fault_level": 3}]
                )
            },
            {"Ascend910-4": S},
        ),
        (
            {
                f"{KEY}-Fault": json.dumps(
                    [entry(level="NotHandleFault") | {"fault_handling": 1, "fault_level": 2}]
                )
            },
            {},
        ),
        ({f"{KEY}-Unhealthy": 3, f"{KEY}-NetworkUnhealthy": None, f"{KEY}-Recovering": {"a": 1}}, {}),
        ({f"{KEY}-Unhealthy": ["Ascend910-1", 2, ""]}, {"Ascend910-1": S}),
        ({f"{KEY}-Unhealthy": " , ,"}, {}),
        ({7: "x", None: "y", f"{KEY}-Unknown": "Ascend910-1"}, {}),
    ],
)
def test_malformed_fields_are_skipped(device_list: Any, chips: dict[str, FaultClass]) -> None:
    found = report(json.dumps({"DeviceInfo": {"DeviceList": device_list}}))
    assert {c: found.chip_action(c) for c in found.chips()} == chips


@pytest.mark.parametrize("manual", [None, 5, ["Ascend910-1", None], {"x": 1}, ""])
def test_a_malformed_manual_key_is_skipped_or_read(manual: Any) -> None:
    expected = {"Ascend910-1"} if isinstance(manual, list) else set()
    assert report(document(), manual).manually_separated == expected


def test_bytes_are_read_as_text() -> None:
    assert report(document(entry()).encode()).action is S


def test_fuzzed_documents_never_raise() -> None:
    rng = random.Random(12)
    junk: list[Any] = [
        None,
        True,
        0,
        -1,
        1e308,
        float("nan"),
        "",
        "x",
        "[",
        [],
        {},
        [None],
        {"a": None},
        10**30,
    ]
    base = entry()
    for _ in range(3000):
        raw = {k: rng.choice([v, rng.choice(junk)]) for k, v in base.items()}
        device_list = {f"{KEY}-Fault": rng.choice([json.dumps([raw]), [raw], raw, rng.choice(junk)])}
        for suffix in ("Unhealthy", "NetworkUnhealthy", "Recovering"):
            device_list[f"{KEY}-{suffix}"] = rng.choice(["Ascend910-1", rng.choice(junk)])
        info = {"DeviceList": rng.choice([device_list, rng.choice(junk)]), "UpdateTime": rng.choice(junk)}
        try:
            cfg = json.dumps({"DeviceInfo": info})
        except ValueError:
            cfg = rng.choice(junk)
        found = node_report(configmap(cfg, rng.choice([*junk, "Ascend910-2"])))
        if found is not None:
            found.describe(), found.chips(), found.action, acting(found, ["Ascend910-1"])


# -- many nodes ---------------------------------------------------------------------------------


def test_reports_cover_every_readable_node_and_faults_only_acting_ones() -> None:
    maps = [
        configmap(document(), node="healthy"),
        configmap(document(entry(level="NotHandleFault")), node="harmless"),
        configmap(document(entry(level="RestartBusiness"), unhealthy="Ascend910-4"), node="restart"),
        configmap(document(entry(), unhealthy="Ascend910-4"), node="broken"),
        configmap("garbage", node="unknown"),
        {"metadata": {"name": "mindx-dl-nodeinfo-other"}, "data": {"DeviceInfoCfg": document(entry())}},
    ]
    reports = node_reports(maps)
    assert sorted(reports) == ["broken", "harmless", "healthy", "restart"]
    assert {n: r.action for n, r in reports.items()} == {
        "healthy": None,
        "harmless": None,
        "restart": R,
        "broken": S,
    }
    assert {n: r.describe() for n, r in reports.items() if r.action is not None} == {
        "restart": "Ascend910-4 RestartBusiness (80E18402)",
        "broken": "Ascend910-4 SeparateNPU (80E18402)",
    }


def test_the_description_is_bounded_and_lists_the_worst_first() -> None:
    many = [
        entry(f"Ascend910-{i}", "RestartNPU", ",".join(f"80E1{j:04d}" for j in range(40))) for i in range(16)
    ]
    found = report(document(*many, entry("Ascend910-9", "SeparateNPU")))
    assert len(found.describe()) == 512 and found.describe().startswith("Ascend910-9 SeparateNPU")
    assert report(document(), "Ascend910-1").describe() == "Ascend910-1 ManuallySeparateNPU"
    assert report(document(unhealthy="Ascend910-3")).describe() == "Ascend910-3 Unhealthy"


# -- the chips of a pod, and whether a fault touches them ---------------------------------------


def pod(annotations: Any) -> dict[str, Any]:
    return {"metadata": {"name": "llm-a0-0", "annotations": annotations}, "spec": {"nodeName": "node-7"}}


@pytest.mark.parametrize(
    ("body", "chips"),
    [
        (
            pod({"huawei.com/AscendReal": "Ascend910-1,Ascend910-0", KEY: "Ascend910-6,Ascend910-7"}),
            {"Ascend910-0", "Ascend910-1"},
        ),
        (pod({KEY: "Ascend910-2,Ascend910-3"}), {"Ascend910-2", "Ascend910-3"}),
        (pod({"huawei.com/npu": "npu-3"}), {"npu-3"}),
        (pod({"huawei.com/AscendReal": "", KEY: "Ascend910-2"}), {"Ascend910-2"}),
        (pod({"huawei.com/kltDev": "Ascend910-2"}), None),  # kubelet's view, remapped by the plugin
        (pod({}), None),
        (pod(None), None),
        (pod("x"), None),
        (pod({"huawei.com/AscendReal": 4}), None),
        ({"metadata": None}, None),
        ({}, None),
    ],
)
def test_chips_of_pod(body: dict[str, Any], chips: set[str] | None) -> None:
    assert chips_of_pod(body) == chips


@pytest.mark.parametrize(
    ("cfg", "manual", "held", "action"),
    [
        (document(entry("Ascend910-4")), "", {"Ascend910-4", "Ascend910-5"}, S),
        (document(entry("Ascend910-4")), "", {"Ascend910-0", "Ascend910-1"}, None),  # not its chip
        (document(entry("Ascend910-4")), "", None, S),  # no annotation: the whole node
        (document(entry("Ascend910-4", "NotHandleFault")), "", {"Ascend910-4"}, None),
        (document(entry("Ascend910-4", "NotHandleFault")), "", None, None),
        (document(entry("Ascend910-0", "RestartBusiness"), entry("Ascend910-4")), "", {"Ascend910-0"}, R),
        (
            document(entry("Ascend910-0", "RestartBusiness"), entry("Ascend910-4")),
            "",
            {"Ascend910-0", "Ascend910-4"},
            S,
        ),
        (document(entry("", "", "heartbeatTimeOut", fault_type="NodeUnhealthy")), "", {"Ascend910-0"}, S),
        (document(recovering="Ascend910-1"), "", {"Ascend910-1"}, R),
        (document(), "Ascend910-1", {"Ascend910-1"}, S),
        (document(), "Ascend910-1", set(), None),
        (document(), "", None, None),
    ],
)
def test_faults_on_the_chips_a_worker_holds(
    cfg: str, manual: str, held: set[str] | None, action: FaultClass | None
) -> None:
    assert acting(report(cfg, manual), held) == action


def test_chips_of_a_pod_meet_the_report() -> None:
    found = report(document(entry("Ascend910-4")))
    assert acting(found, chips_of_pod(pod({"huawei.com/AscendReal": "Ascend910-4"}))) is S
    assert acting(found, chips_of_pod(pod({"huawei.com/AscendReal": "Ascend910-3"}))) is None
    assert acting(found, chips_of_pod(pod({}))) is S


def test_a_report_wakes_jobs_that_failed_on_or_avoid_its_node() -> None:
    """A late report must reach a job whose pods have left the node (no pod indexes it there)."""
    from kubernetes import client

    from controller.app import Controller, Settings
    from controller.runtime.informer import Informer

    controller = Controller(client.ApiClient(), Settings(namespace="team", leader_election=False))
    jobs: list[dict[str, Any]] = [
        {
            "metadata": {"namespace": "team", "name": "failed-there"},
            "status": {"lastFailure": {"node": "n1"}},
        },
        {"metadata": {"namespace": "team", "name": "avoids-it"}, "status": {"faultyNodes": ["n0", "n1"]}},
        {"metadata": {"namespace": "team", "name": "elsewhere"}, "status": {"lastFailure": {"node": "n2"}}},
        {"metadata": {"namespace": "team", "name": "new"}},
    ]
    informer = controller.caches.jobs
    assert isinstance(informer, Informer)  # one namespace: one informer
    for job in jobs:  # as the informer's watch would deliver them
        informer._store.put(f"team/{job['metadata']['name']}", job)
    controller._on_configmap("MODIFIED", {"metadata": {"name": "mindx-dl-deviceinfo-n1"}}, None)
    woken = {controller.queue.get(timeout=1) for _ in range(2)}
    assert woken == {"team/avoids-it", "team/failed-there"}
    assert controller.queue.get(timeout=0.1) is None
