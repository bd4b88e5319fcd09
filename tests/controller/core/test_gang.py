"""Gang scheduling (core/gang.py): the job's PodGroup before its pods, and each pod in it."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.types import InvalidSpec, parse_job
from controller.core.plan import CreatePods, EnsurePodGroup
from tests.support.core_inputs import job, run

TEMPLATE: dict[str, Any] = {"spec": {"containers": [{"name": "trainer", "command": ["python"]}]}}


def volcano(queue: str | None = None) -> dict[str, Any]:
    meta = {"annotations": {"scheduling.volcano.sh/queue-name": queue}} if queue else {}
    return {"metadata": meta, "spec": {**TEMPLATE["spec"], "schedulerName": "volcano"}}


def first_attempt(**spec: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    plan = run(job(None, **spec), [])
    groups = [s.body for s in plan.steps if isinstance(s, EnsurePodGroup)]
    [create] = plan.of(CreatePods)
    order = [type(s).__name__ for s in plan.steps]
    if groups:
        assert order.index("EnsurePodGroup") < order.index("CreatePods"), "the group exists before its pods"
    return (groups[0] if groups else None), create.body(1)


def test_volcano_scheduled_pods_get_a_volcano_pod_group_with_the_gang_as_min_member() -> None:
    group, pod = first_attempt(replicas=3, template=volcano(queue="research"))
    assert group is not None
    assert (group["apiVersion"], group["kind"], group["metadata"]["name"]) == (
        "scheduling.volcano.sh/v1beta1",
        "PodGroup",
        "llm",
    )
    assert group["spec"] == {"minMember": 3, "queue": "research"}
    assert group["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "llm"
    assert pod["spec"]["schedulerName"] == "volcano"


def test_coscheduling_is_asked_for_and_none_turns_it_off() -> None:
    group, pod = first_attempt(podGroup="Coscheduling", template=TEMPLATE)
    assert group is not None and group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {"minMember": 2}
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "llm"
    off, pod = first_attempt(podGroup="None", template=volcano())
    assert off is None and "scheduling.k8s.io/group-name" not in pod["metadata"]["annotations"]
    plain, _ = first_attempt(template=TEMPLATE)
    assert plain is None, "no batch scheduler named: no PodGroup"
    with pytest.raises(InvalidSpec, match=r"spec\.podGroup must be Volcano, Coscheduling or None"):
        parse_job(job(None, podGroup="Yunikorn"))
