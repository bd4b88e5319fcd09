"""Informer behaviour against a scripted list function: exact 410, ERROR-event and failure paths.

`FakeApi` stands in for a generated list function so each test controls precisely what LIST and
WATCH return (410 on open, an ERROR event mid-stream, a reset connection) without a server.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from controller.runtime.informer import ADDED, DELETED, MODIFIED, Informer
from controller.runtime.store import index_by_field, index_by_label, object_key
from tests.support.informer import Recorder
from tests.support.poll import FAST, wait_for

Event = tuple[str, str, str | None]
WatchStep = Callable[[dict[str, Any]], "FakeResponse"]


class FakeSocket:
    def __init__(self, closed: threading.Event) -> None:
        self._closed = closed

    def shutdown(self, how: int) -> None:
        self._closed.set()


class FakeResponse:
    """Like urllib3's HTTPResponse: `.data` for a list body, `.stream()` for watch lines.

    With `hold=True` the stream stays open after its lines, as a real watch does, until
    the informer shuts its socket down (or 30 s pass).
    """

    def __init__(self, *, data: bytes = b"", events: tuple[dict, ...] = (), hold: bool = False) -> None:
        self.data = data
        self._events = events
        self._hold = hold
        self._socket_closed = threading.Event()
        self.connection = SimpleNamespace(sock=FakeSocket(self._socket_closed))
        self.closed = False

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        for event in self._events:
            yield json.dumps(event).encode() + b"\n"
        if self._hold:
            self._socket_closed.wait(30)

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


def cm(name: str, rv: int, namespace: str = "ns", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv)},
        "data": data,
    }


class FakeApi:
    """A ConfigMap collection. Watches run `script` steps in order, then hold open quietly."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.script: list[WatchStep] = []
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def put(self, name: str, **data: str) -> dict[str, Any]:
        self.rv += 1
        self.items[name] = cm(name, self.rv, **data)
        return self.items[name]

    def delete(self, name: str) -> dict[str, Any]:
        self.rv += 1
        return self.items.pop(name)

    def watches(self) -> list[dict[str, Any]]:
        with self.lock:
            return [kw for _, kw in self.requests if kw.get("watch")]

    def lists(self) -> list[dict[str, Any]]:
        with self.lock:
            return [kw for _, kw in self.requests if not kw.get("watch")]

    def __call__(self, **kwargs: Any) -> FakeResponse:
        with self.lock:
            self.requests.append((time.monotonic(), kwargs))
            step = self.script.pop(0) if kwargs.get("watch") and self.script else None
        if kwargs.get("watch"):
            return step(kwargs) if step else FakeResponse(hold=True)
        return self._list(kwargs)

    def _list(self, kwargs: dict[str, Any]) -> FakeResponse:
        names = sorted(self.items)
        start = int(kwargs.get("_continue") or 0)
        limit = kwargs.get("limit") or len(names)
        page = names[start : start + limit]
        more = start + limit < len(names)
        # Built-in list items carry no apiVersion/kind, as the real API server sends them.
        items = [{k: v for k, v in self.items[n].items() if k not in ("apiVersion", "kind")} for n in page]
        metadata = {"resourceVersion": str(self.rv), **({"continue": str(start + limit)} if more else {})}
        body = {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": metadata, "items": items}
        return FakeResponse(data=json.dumps(body).encode())


@pytest.fixture
def api() -> FakeApi:
    fake = FakeApi()
    fake.put("a", v="1")
    fake.put("b", v="1")
    return fake


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_informer(api: FakeApi, recorder: Recorder) -> Iterator[Callable[..., Informer]]:
    started: list[Informer] = []

    def make(**options: Any) -> Informer:
        options.setdefault("backoff_base", 0.01)
        informer = Informer(api, list_kwargs={"namespace": "ns"}, name="cms", **options)
        informer.on_event(recorder)
        informer.start()
        started.append(informer)
        assert informer.wait_for_sync(5)
        return informer

    yield make
    for informer in started:
        informer.stop(timeout=5)
        assert not informer.is_alive()


def test_initial_list_fills_the_cache_in_the_servers_json_shape(
    make_informer: Callable[..., Informer], api: FakeApi, recorder: Recorder
) -> None:
    informer = make_informer()
    assert informer.has_synced()
    assert sorted(informer.keys()) == ["ns/a", "ns/b"]
    assert informer.get("ns/a") == cm("a", 101, v="1"), "list items get apiVersion/kind like watch objects"
    assert recorder.events == [(ADDED, "ns/a", None), (ADDED, "ns/b", None)]
    (listed,) = api.lists()
    assert listed["namespace"] == "ns" and listed["limit"] == 500 and listed["_preload_content"] is False


def test_watch_starts_from_the_list_and_applies_events(
    make_informer: Callable[..., Informer], api: FakeApi, recorder: Recorder
) -> None:
    events = (
        {"type": "ADDED", "object": cm("c", 103)},
        {"type": "MODIFIED", "object": cm("a", 104, v="2")},
        {"type": "DELETED", "object": cm("b", 105)},
        {"type": "BOOKMARK", "object": {"kind": "ConfigMap", "metadata": {"resourceVersion": "150"}}},
    )
    api.script.append(lambda kwargs: FakeResponse(events=events, hold=True))
    informer = make_informer(watch_timeout_seconds=77)
    wait_for("bookmark applied", lambda: informer.resource_version == "150", interval=FAST)
    assert recorder.events[2:] == [(ADDED, "ns/c", None), (MODIFIED, "ns/a", "101"), (DELETED, "ns/b", "102")]
    assert sorted(informer.keys()) == ["ns/a", "ns/c"]
    cached = informer.get("ns/a")
    assert cached is not None and cached["data"] == {"v": "2"}
    watch = api.watches()[0]
    assert watch["resource_version"] == "102" and watch["allow_watch_bookmarks"] is True
    assert watch["timeout_seconds"] == 77
    assert watch["_request_timeout"][1] > 77, "client read timeout must outlast the server's"
    assert informer.stats.events == 3 and informer.stats.lists == 1


def test_transform_shapes_what_is_cached_from_lists_and_watches(
    make_informer: Callable[..., Informer], api: FakeApi, recorder: Recorder
) -> None:
    events = ({"type": "MODIFIED", "object": cm("a", 104, v="2")}, {"type": "ADDED", "object": cm("c", 105)})
    api.script.append(lambda kwargs: FakeResponse(events=events, hold=True))

    def keep_metadata(obj: dict[str, Any]) -> dict[str, Any]:
        return {"kind": obj["kind"], "metadata": obj["metadata"]}  # drops "data"

    informer = make_informer(transform=keep_metadata)
    wait_for("the watch applied", lambda: informer.get("ns/c") is not None, interval=FAST)
    assert all("data" not in (informer.get(k) or {"data": 1}) for k in ("ns/a", "ns/b", "ns/c"))
    assert informer.get("ns/a") == {"kind": "ConfigMap", "metadata": cm("a", 104)["metadata"]}


def test_watch_ending_normally_resumes_from_the_last_version_without_listing(
    make_informer: Callable[..., Informer], api: FakeApi
) -> None:
    api.script.append(lambda kwargs: FakeResponse(events=({"type": "ADDED", "object": cm("c", 110)},)))
    informer = make_informer()
    wait_for("a second watch", lambda: len(api.watches()) >= 2, interval=FAST)
    assert api.watches()[1]["resource_version"] == "110"
    assert informer.stats.lists == 1 and informer.stats.relists == 0


def gone_on_open(api: FakeApi) -> Callable[[dict], FakeResponse]:
    def step(kwargs: dict) -> FakeResponse:
        raise ApiException(status=410, reason="Gone")

    return step


def gone_mid_stream(api: FakeApi) -> Callable[[dict], FakeResponse]:
    def step(kwargs: dict) -> FakeResponse:
        status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
        return FakeResponse(events=({"type": "ERROR", "object": status},), hold=True)

    return step


@pytest.mark.parametrize("gone", [gone_on_open, gone_mid_stream])
def test_410_relists_and_reports_what_changed_in_the_gap(
    make_informer: Callable[..., Informer],
    api: FakeApi,
    recorder: Recorder,
    gone: Callable[[FakeApi], Callable[[dict], FakeResponse]],
) -> None:
    # While no watch delivers: a is deleted, b modified, c created. Only a relist can tell.
    def gap_then_gone(kwargs: dict) -> FakeResponse:
        api.delete("a")
        api.put("b", v="2")
        api.put("c", v="1")
        return gone(api)(kwargs)

    api.script.append(gap_then_gone)
    informer = make_informer()
    wait_for(
        "relist delivered", lambda: informer.stats.lists == 2 and len(recorder.events) == 5, interval=FAST
    )
    assert sorted(recorder.events[2:]) == [
        (ADDED, "ns/c", None),
        (DELETED, "ns/a", "101"),
        (MODIFIED, "ns/b", "102"),
    ]
    assert sorted(informer.keys()) == ["ns/b", "ns/c"]
    assert informer.stats.relists == 1
    wait_for("the second watch", lambda: len(api.watches()) == 2, interval=FAST)
    assert api.watches()[1]["resource_version"] == str(api.rv), "watch resumes from the relist's version"


def test_before_delete_sees_the_object_while_the_cache_still_holds_it(
    api: FakeApi, recorder: Recorder
) -> None:
    """A reader on another thread must never find an object gone before the callback knew of it:
    the callback runs first, for a watched delete and for one only a relist discovers."""
    seen: list[tuple[str, bool]] = []
    informer = Informer(api, list_kwargs={"namespace": "ns"}, name="cms", backoff_base=0.01)
    informer.before_delete(
        lambda obj: seen.append((object_key(obj), informer.get(object_key(obj)) is not None))
    )
    informer.on_event(recorder)

    def deleted_then_gone(kwargs: dict) -> FakeResponse:
        api.delete("a")
        api.delete("b")  # not delivered: only the relist after the 410 tells
        expired = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
        events = ({"type": "DELETED", "object": cm("a", 150)}, {"type": "ERROR", "object": expired})
        return FakeResponse(events=events, hold=True)

    api.script.append(deleted_then_gone)
    informer.start()
    try:
        wait_for("both deletes", lambda: len(seen) == 2, interval=FAST)
    finally:
        informer.stop(timeout=5)
    assert seen == [("ns/a", True), ("ns/b", True)]
    assert informer.keys() == []


def test_connection_errors_back_off_and_resume_the_watch(
    make_informer: Callable[..., Informer], api: FakeApi
) -> None:
    def refused(kwargs: dict) -> FakeResponse:
        raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))

    api.script.extend([refused] * 4)
    informer = make_informer(backoff_base=0.05, backoff_cap=0.15)
    wait_for("fifth watch after four failures", lambda: len(api.watches()) == 5, interval=FAST)
    times = [t for t, kw in api.requests if kw.get("watch")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.15 and gaps[3] >= 0.15, gaps
    assert gaps[3] < 1.0, "backoff is capped"
    assert informer.stats.errors == 4 and informer.stats.lists == 1, (
        "a broken connection resumes, not relists"
    )
    assert api.watches()[-1]["resource_version"] == "102"


def test_watch_that_ends_at_once_is_retried_with_backoff_not_spun(
    make_informer: Callable[..., Informer], api: FakeApi
) -> None:
    api.script.extend([lambda kwargs: FakeResponse()] * 3)
    make_informer(backoff_base=0.1, backoff_cap=1.0)
    wait_for("the fourth watch", lambda: len(api.watches()) == 4, interval=FAST)
    times = [t for t, kw in api.requests if kw.get("watch")]
    assert times[-1] - times[0] >= 0.1 + 0.2 + 0.4


def test_repeated_410_after_relist_backs_off(make_informer: Callable[..., Informer], api: FakeApi) -> None:
    api.script.extend([gone_on_open(api)] * 3)
    informer = make_informer(backoff_base=0.1)
    wait_for(
        "three relists and four watches",
        lambda: informer.stats.relists == 3 and len(api.watches()) == 4,
        interval=FAST,
    )
    lists = [t for t, kw in api.requests if not kw.get("watch")]
    assert lists[1] - lists[0] < 0.1, "the first 410 relists at once"
    assert lists[3] - lists[1] >= 0.1 + 0.2, "repeated 410s wait"


def test_indexes_follow_updates_and_deletes(make_informer: Callable[..., Informer], api: FakeApi) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "120", "labels": {"job": "j1"}},
        "spec": {"nodeName": "n1"},
    }
    moved = {**pod, "metadata": {**pod["metadata"], "resourceVersion": "121", "labels": {"job": "j2"}}}
    moved["spec"] = {"nodeName": "n2"}
    api.script.append(lambda kwargs: FakeResponse(events=({"type": "ADDED", "object": pod},)))
    api.script.append(lambda kwargs: FakeResponse(events=({"type": "MODIFIED", "object": moved},)))
    informer = Informer(api, name="pods", backoff_base=0.01)
    informer.add_index("job", index_by_label("job"))
    informer.start()
    try:
        wait_for("pod moved to job j2", lambda: informer.by_index("job", "ns/j2"), interval=FAST)
        informer.add_index("node", index_by_field("spec", "nodeName"))  # added late: built from the cache
        assert informer.by_index("job", "ns/j1") == []
        assert [p["metadata"]["name"] for p in informer.by_index("node", "n2")] == ["p"]
        assert informer.by_index("node", "n1") == []
        with pytest.raises(ValueError):
            informer.add_index("job", index_by_label("job"))
    finally:
        informer.stop()


def test_failing_handler_does_not_stop_the_informer(api: FakeApi) -> None:
    seen: list[str] = []

    def handler(event_type: str, obj: dict, old: dict | None) -> None:
        seen.append(object_key(obj))
        raise RuntimeError("handler bug")

    api.script.append(
        lambda kwargs: FakeResponse(events=({"type": "ADDED", "object": cm("c", 103)},), hold=True)
    )
    informer = Informer(api, name="cms")
    informer.on_event(handler)
    informer.start()
    try:
        wait_for("c cached", lambda: informer.get("ns/c") is not None, interval=FAST)
        assert seen == ["ns/a", "ns/b", "ns/c"] and informer.is_alive()
    finally:
        informer.stop()


def test_list_is_paged(api: FakeApi, recorder: Recorder) -> None:
    for name in "cdefg":
        api.put(name)
    informer = Informer(api, name="cms", page_size=3)
    informer.start()
    try:
        assert informer.wait_for_sync(5)
        assert len(informer.list()) == 7 and informer.stats.lists == 3
        assert [kw.get("_continue") for kw in api.lists()] == [None, "3", "6"]
    finally:
        informer.stop()


def test_stop_interrupts_a_blocked_watch(make_informer: Callable[..., Informer], api: FakeApi) -> None:
    informer = make_informer()
    wait_for("a watch", api.watches, interval=FAST)
    started = time.monotonic()
    informer.stop(timeout=5)
    assert not informer.is_alive() and time.monotonic() - started < 1.0


def test_start_twice_is_an_error(make_informer: Callable[..., Informer]) -> None:
    informer = make_informer()
    with pytest.raises(RuntimeError):
        informer.start()
