"""Several namespaces' informers read as one cache (controller --namespace a,b)."""

from __future__ import annotations

from typing import Any

from controller.app import watched_namespaces
from controller.runtime.informer import Informer
from controller.runtime.informer_group import InformerGroup
from controller.runtime.store import index_by_label


def member(namespace: str, *names: str) -> Informer:
    informer = Informer(lambda **_: None, name=f"pods-{namespace}")
    informer.add_index("job", index_by_label("job"))
    informer.add_index("all", lambda _obj: ["x"])
    for name in names:
        obj: dict[str, Any] = {"metadata": {"namespace": namespace, "name": name, "labels": {"job": "j"}}}
        informer._store.put(f"{namespace}/{name}", obj)
    return informer


def test_a_group_reads_every_member_as_one_cache() -> None:
    group = InformerGroup([member("b", "p2"), member("a", "p1")])
    assert sorted(group.keys()) == ["a/p1", "b/p2"]
    assert group.get("b/p2") is not None and group.get("c/p3") is None
    assert [o["metadata"]["name"] for o in group.by_index("all", "x")] == ["p1", "p2"]  # sorted by key
    assert [o["metadata"]["name"] for o in group.by_index("job", "b/j")] == ["p2"]
    assert len(group.list()) == 2


def test_the_namespace_flag_is_a_list() -> None:
    assert watched_namespaces(None) == () == watched_namespaces("")
    assert watched_namespaces("a") == ("a",)
    assert watched_namespaces("a, b,a,") == ("a", "b")
