"""devcluster's Reflector (list, then the client's own Watch) against a scripted list function: the
resourceVersion it resumes from, a relist after 410 Gone (as an ERROR event or on opening), and stop."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from devcluster.kubeapi import Reflector
from tests.support.poll import FAST, wait_for


class Response:
    """What a generated API method returns with `_preload_content=False`: a body, or streamed lines."""

    def __init__(self, body: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.status = 200
        self.data = json.dumps(body).encode() if body is not None else b""
        self._lines = lines or []

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for line in self._lines:
            yield (json.dumps(line) + "\n").encode()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}}


class FakeList:
    """LIST answers with `items`; each WATCH takes the next script entry (a list of events, an
    exception to raise, or a function of the fake returning either); with the script used up, a
    watch ends at once with no event."""

    def __init__(self, items: list[dict[str, Any]], rv: int) -> None:
        self.items, self.rv = items, rv
        self.script: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Response:
        with self.lock:
            self.calls.append(kwargs)
            if not kwargs.get("watch"):
                return Response({"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.items)})
            step = self.script.pop(0) if self.script else []
            if callable(step):
                step = step(self)
        if isinstance(step, Exception):
            raise step
        return Response(lines=step)

    def watches(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c.get("watch")]

    def lists(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if not c.get("watch")]


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_watch_resumes_from_the_last_resource_version_bookmarks_included(stop: threading.Event) -> None:
    fake = FakeList([obj("a", 10)], rv=10)
    fake.script = [
        [
            {"type": "ADDED", "object": obj("b", 11)},
            {"type": "MODIFIED", "object": obj("a", 12)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
        ],
        [{"type": "DELETED", "object": obj("b", 16)}],
    ]
    changes: list[tuple[str, str, str]] = []
    reflector = Reflector(
        "fake",
        fake,
        lambda kind, o: changes.append((kind, o["metadata"]["name"], o["metadata"]["resourceVersion"])),
        stop=stop,
    ).start()
    wait_for("three watches", lambda: len(fake.watches()) >= 3, interval=FAST)
    assert reflector.synced.is_set()
    assert changes == [
        ("upsert", "a", "10"),
        ("upsert", "b", "11"),
        ("upsert", "a", "12"),
        ("delete", "b", "16"),
    ]
    assert [w["resource_version"] for w in fake.watches()[:3]] == ["10", "15", "16"]
    assert all(w["allow_watch_bookmarks"] and w["timeout_seconds"] == 240 for w in fake.watches())
    assert len(fake.lists()) == 1, "a watch the server ended resumes without a relist"
    assert reflector.snapshot() == {"ns/a": obj("a", 12)}


@pytest.mark.parametrize("gone", ["error-event", "on-open"])
def test_410_gone_relists_and_reports_what_was_missed(stop: threading.Event, gone: str) -> None:
    fake = FakeList([obj("a", 10), obj("b", 10)], rv=10)
    expired = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired"}

    def expire(fake: FakeList) -> Any:
        # Meanwhile, unseen by the watch: b deleted, a changed, c created.
        fake.items, fake.rv = [obj("a", 21), obj("c", 22)], 22
        if gone == "on-open":
            return ApiException(status=410, reason="Gone")
        return [{"type": "ERROR", "object": {**expired, "message": "too old resource version: 10 (20)"}}]

    fake.script = [expire]
    changes: list[tuple[str, str]] = []
    Reflector("fake", fake, lambda kind, o: changes.append((kind, o["metadata"]["name"])), stop=stop).start()
    wait_for("the relist", lambda: len(fake.lists()) == 2, interval=FAST)
    wait_for("the watch after it", lambda: len(fake.watches()) >= 2, interval=FAST)
    assert changes == [
        ("upsert", "a"),
        ("upsert", "b"),
        ("delete", "b"),
        ("upsert", "a"),
        ("upsert", "c"),
    ]
    assert fake.watches()[1]["resource_version"] == "22"


def test_other_watch_errors_back_off_then_relist(stop: threading.Event) -> None:
    fake = FakeList([obj("a", 10)], rv=10)
    fake.script = [ApiException(status=500, reason="boom")]
    Reflector("fake", fake, lambda kind, o: None, stop=stop).start()
    wait_for("the relist after the backoff", lambda: len(fake.lists()) == 2, interval=FAST)


def test_stop_ends_the_reflector(stop: threading.Event) -> None:
    fake = FakeList([obj("a", 10)], rv=10)
    reflector = Reflector("fake", fake, lambda kind, o: None, stop=stop).start()
    wait_for("a few watches", lambda: len(fake.watches()) >= 3, interval=FAST)
    stop.set()
    reflector._thread.join(5)
    assert not reflector._thread.is_alive()
