"""An informer: one resource kind mirrored into a local cache by LIST then WATCH, so reconciles read memory.

The loop (one daemon thread per informer, started by `start()`):

1. LIST (paged) and replace the cache; every difference from the previous cache is delivered to
   handlers as an event, so a delete that happened while no watch was open still reaches them.
2. WATCH from the list's resourceVersion, with bookmarks (the resourceVersion keeps moving even when
   this kind is quiet), a server-side `timeout_seconds` and a client read timeout a little longer,
   so a silently dead connection cannot hang the thread.
3. When the server ends the watch, watch again from the last resourceVersion seen: no LIST.
4. HTTP 410 Gone, whether the watch is refused with it or it arrives as an ERROR event mid-stream,
   means that resourceVersion is no longer served: go back to 1 (a deliberate relist).
5. Any other failure (connection refused, TLS reset, 5xx) waits with capped exponential backoff,
   then resumes the watch from the last resourceVersion; a 410 there leads to 1.

Objects are kept as plain dicts in the API server's JSON shape (camelCase keys, `apiVersion` and
`kind` set), for built-in kinds and custom resources alike: the list function is called with
`_preload_content=False` and the body is parsed here, never turned into client model objects.
Treat returned dicts as read-only: they are the cache's own objects.

Handlers run on the informer thread after the cache has been updated; a level-based controller's
handler only enqueues a key. `stats` counts the requests made, so tests can assert that
reconciles are served from the cache.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.runtime.store import IndexFunc, Obj, Store, object_key

EventHandler = Callable[[str, Obj, Obj | None], None]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
_GONE = 410
# Extra client-side read time beyond the server's watch timeout before the connection is presumed dead.
_READ_SLACK_SECONDS = 30.0
# A watch that ends this fast having delivered nothing counts as a failure, so it is retried with backoff.
_MIN_HEALTHY_WATCH_SECONDS = 1.0


@dataclass
class InformerStats:
    """Requests made and events applied; written only by the informer thread."""

    lists: int = 0  # LIST requests sent (one per page)
    watches: int = 0  # WATCH requests sent
    relists: int = 0  # relists forced by 410 Gone
    errors: int = 0  # failed requests or broken streams, other than 410
    events: int = 0  # watch events applied to the cache (bookmarks excluded)


class _Expired(Exception):
    """The server no longer serves the resourceVersion we asked for (HTTP 410 Gone)."""


class WatchError(Exception):
    """The watch stream carried an ERROR event other than 410."""


class Informer:
    """Cache of one resource kind kept current by list+watch; see the module docstring.

    `list_func` is a generated client list method (e.g. `CoreV1Api(api).list_pod_for_all_namespaces`
    or `CustomObjectsApi(api).list_namespaced_custom_object`), `list_kwargs` its arguments
    (selectors, namespace, group/version/plural). The informer adds paging, watch and timeout
    arguments itself.
    """

    def __init__(
        self,
        list_func: Callable[..., Any],
        *,
        list_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        watch_timeout_seconds: int = 240,
        connect_timeout: float = 10.0,
        list_timeout: float = 60.0,
        page_size: int = 500,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        logger: logging.Logger | None = None,
        transform: Callable[[Obj], Obj] | None = None,
    ) -> None:
        self.name: str = name or str(getattr(list_func, "__name__", "informer"))
        self._list_func = list_func
        self._list_kwargs = dict(list_kwargs or {})
        self._watch_timeout = int(watch_timeout_seconds)
        self._connect_timeout = connect_timeout
        self._list_timeout = list_timeout
        self._page_size = page_size
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._log = logger or logging.getLogger(__name__)
        # Applied to every object before it is cached (and handed to handlers): keep what is read.
        self._transform = transform or (lambda obj: obj)
        self._store = Store()
        self._handlers: list[EventHandler] = []
        self._before_delete: list[Callable[[Obj], None]] = []
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._response_lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self.resource_version = ""
        self.stats = InformerStats()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"informer {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        """End the thread: interrupt a blocked watch read by shutting its socket down, then join.

        A LIST or a watch connect already in flight is not interrupted; `list_timeout` and
        `connect_timeout` bound them. The thread is a daemon, so a join that times out never
        keeps the process alive.
        """
        self._stopping.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            _shutdown_socket(response)
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """The watch thread is running (a liveness signal; it stays alive through API outages)."""
        return self._thread is not None and self._thread.is_alive()

    def has_synced(self) -> bool:
        """The first LIST has been applied and its ADDED events delivered."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    # -- reading the cache -------------------------------------------------------------------

    def before_delete(self, callback: Callable[[Obj], None]) -> None:
        """Call `callback(obj)` with an object's final state just before it leaves the cache.

        Event handlers run after the cache changed, so a reader on another thread can find the
        object gone before any handler knew it went; what must be known by then (the controller's
        record of departed pods) is recorded here. Register before `start()`; keep it short.
        """
        self._before_delete.append(callback)

    def on_event(self, handler: EventHandler) -> None:
        """Call `handler(event_type, obj, old_obj)` for every change; register before `start()`.

        `event_type` is ADDED, MODIFIED or DELETED as seen by the cache (a replayed ADDED for a cached
        object is reported as MODIFIED). `old_obj` is the previously cached object, or None for ADDED.
        For DELETED, `obj` is the server's final state, or the last cached state when the delete was
        only discovered by a relist. Handlers run on the informer thread: keep them short.
        """
        self._handlers.append(handler)

    def get(self, key: str) -> Obj | None:
        with self._store.lock:
            return self._store.objects.get(key)

    def list(self) -> list[Obj]:
        with self._store.lock:
            return list(self._store.objects.values())

    def keys(self) -> builtins.list[str]:
        with self._store.lock:
            return list(self._store.objects)

    def add_index(self, name: str, func: IndexFunc) -> None:
        """Maintain `func(obj) -> index values` for every object, for `by_index(name, value)`."""
        self._store.add_index(name, func)

    def by_index(self, name: str, value: str) -> builtins.list[Obj]:
        with self._store.lock:
            keys = self._store.indexes[name].get(value, ())
            return [self._store.objects[key] for key in sorted(keys)]

    # -- the list/watch loop -----------------------------------------------------------------

    def _run(self) -> None:
        errors_in_a_row = expired_in_a_row = 0
        needs_list = True
        while not self._stopping.is_set():
            delay = 0.0
            try:
                if needs_list:
                    self._list_and_replace()
                    needs_list = False
                if self._watch():
                    errors_in_a_row = expired_in_a_row = 0
                else:
                    errors_in_a_row += 1
                    delay = self._backoff(errors_in_a_row)
            except _Expired:
                # The server answered, so it is reachable; the first 410 relists at once, repeats wait.
                self.stats.relists += 1
                errors_in_a_row, expired_in_a_row, needs_list = 0, expired_in_a_row + 1, True
                delay = self._backoff(expired_in_a_row - 1)
                self._log.info("resourceVersion expired; relisting", extra={"informer": self.name})
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self.stats.errors += 1
                errors_in_a_row += 1
                delay = self._backoff(errors_in_a_row)
                self._log.warning(
                    "list/watch failed, retrying in %.1fs: %s",
                    delay,
                    _describe(exc),
                    extra={"informer": self.name, "attempt": errors_in_a_row},
                )
            if delay:
                self._stopping.wait(delay)

    def _backoff(self, attempt: int) -> float:
        """0 for attempt 0, then base, 2*base, ... capped."""
        return 0.0 if attempt <= 0 else min(self._backoff_cap, self._backoff_base * 2 ** min(attempt - 1, 30))

    def _list_and_replace(self) -> None:
        objects: dict[str, Obj] = {}
        continue_token = None
        while True:
            kwargs = {**self._list_kwargs, "limit": self._page_size}
            if continue_token:
                kwargs["_continue"] = continue_token
            self.stats.lists += 1
            body = self._call(kwargs, timeout=self._list_timeout)
            kind = str(body.get("kind", "")).removesuffix("List")
            for item in body.get("items") or []:
                # Items of built-in lists omit apiVersion/kind; watch events carry them. Make both alike.
                item.setdefault("apiVersion", body.get("apiVersion"))
                item.setdefault("kind", kind)
                objects[object_key(item)] = self._transform(item)
            meta = body.get("metadata") or {}
            continue_token = meta.get("continue")
            if not continue_token:
                break
        with self._store.lock:
            leaving = [obj for key, obj in self._store.objects.items() if key not in objects]
        for gone in leaving:
            self._call_before_delete(gone)
        old = self._store.replace(objects)
        self.resource_version = str(meta.get("resourceVersion", ""))
        for key, obj in objects.items():
            previous = old.get(key)
            if previous is None:
                self._dispatch(ADDED, obj, None)
            elif _rv(previous) != _rv(obj):
                self._dispatch(MODIFIED, obj, previous)
        for key, previous in old.items():
            if key not in objects:
                self._dispatch(DELETED, previous, previous)
        self._synced.set()

    def _watch(self) -> bool:
        """Run one watch until the server ends it; True if it was healthy (lasted or delivered)."""
        started, delivered = time.monotonic(), False
        kwargs = {
            **self._list_kwargs,
            "watch": True,
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self._watch_timeout,
        }
        self.stats.watches += 1
        read_timeout = self._watch_timeout + _READ_SLACK_SECONDS
        response = self._open(kwargs, timeout=(self._connect_timeout, read_timeout))
        with self._response_lock:
            self._response = response
            # stop() sets the flag, then reads _response under this lock: one of the two sees the other.
            stopping = self._stopping.is_set()
        if stopping:
            _close(response)
            return True
        try:
            for line in _lines(response):
                if self._stopping.is_set():
                    break
                self._apply(json.loads(line))
                delivered = True
        finally:
            with self._response_lock:
                self._response = None
            _close(response)
        return delivered or time.monotonic() - started >= _MIN_HEALTHY_WATCH_SECONDS

    def _apply(self, event: Mapping[str, Any]) -> None:
        event_type, obj = event.get("type"), event.get("object") or {}
        if event_type == "ERROR":
            if obj.get("code") == _GONE:
                raise _Expired(obj.get("message", ""))
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        if event_type == "BOOKMARK":
            self.resource_version = _rv(obj) or self.resource_version
            return
        if event_type not in (ADDED, MODIFIED, DELETED):
            self._log.warning("ignoring watch event of type %r", event_type, extra={"informer": self.name})
            return
        deleted = event_type == DELETED
        obj = self._transform(obj)
        if deleted:
            self._call_before_delete(obj)
        old = self._store.put(object_key(obj), None if deleted else obj)
        self.resource_version = _rv(obj) or self.resource_version
        self.stats.events += 1
        # A re-opened watch may replay an ADDED for a cached object: report what changed in the cache.
        self._dispatch(DELETED if deleted else MODIFIED if old is not None else ADDED, obj, old)

    def _call_before_delete(self, obj: Obj) -> None:
        for callback in self._before_delete:
            try:
                callback(obj)
            except Exception:
                self._log.exception("before-delete callback failed", extra={"informer": self.name})

    def _dispatch(self, kind: str, obj: Obj, old: Obj | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, obj, old)
            except Exception:
                self._log.exception("event handler failed", extra={"informer": self.name, "event": kind})

    # -- HTTP --------------------------------------------------------------------------------

    def _open(self, kwargs: dict[str, Any], *, timeout: float | tuple[float, float]) -> Any:
        try:
            return self._list_func(**kwargs, _preload_content=False, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == _GONE:
                raise _Expired(str(exc.reason)) from exc
            raise

    def _call(self, kwargs: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        response = self._open(kwargs, timeout=timeout)
        try:
            body = json.loads(response.data)
        finally:
            _close(response)
        if not isinstance(body, dict):
            raise WatchError(f"unexpected list response: {str(body)[:200]}")
        return body


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events from a chunked watch response, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk.encode() if isinstance(chunk, str) else chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


def _shutdown_socket(response: Any) -> None:
    """Unblock a thread reading `response`; `close()` from another thread can deadlock on TLS."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _close(response: Any) -> None:
    for method in ("close", "release_conn"):
        with contextlib.suppress(Exception):
            getattr(response, method, lambda: None)()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
