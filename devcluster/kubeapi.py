"""Thin use of the official client: JSON dicts in and out, bounded timeouts, list+watch.

The agent works on plain dicts in the API's own field names (what it reads is what `kubectl
get -o json` shows, what it writes is a strategic-merge patch), so responses are read raw
(`_preload_content=False`) instead of through the generated models. That also sidesteps the
client's known failure to deserialise a Binding response.

List+watch is the client's own `kubernetes.watch.Watch`, asked for plain dicts (`return_type`
"object"); `Reflector` adds what it leaves to its caller: the list, the store, the relist after
410 Gone, backoff, and stopping. (The controller has its own informer in controller/runtime;
devcluster imports nothing of the product, so it cannot share it.)
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
TIMEOUT = (5.0, 30.0)
# Errors that mean "the API server did not answer usefully this time": retry later.
TRANSIENT = (client.ApiException, urllib3.exceptions.HTTPError, OSError)


def now() -> str:
    return rfc3339(datetime.datetime.now(datetime.UTC))


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, client.ApiException) else None


class Kube:
    """Clients for one kubeconfig. `core`/`coordination`/`policy` share a connection pool; each
    watch gets its own ApiClient so a long-lived stream never starves ordinary calls."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig
        self.config = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=self.config)
        self.config.connection_pool_maxsize = 32
        self.api = client.ApiClient(self.config)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    def watch_core(self) -> client.CoreV1Api:
        return client.CoreV1Api(client.ApiClient(self.config))

    def server_host_port(self) -> tuple[str, int]:
        url = urllib.parse.urlsplit(self.config.host)
        return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)

    def ca_pem(self) -> bytes:
        """The CA that signed the API server's certificate (what kube-root-ca.crt would hold)."""
        if self.config.ssl_ca_cert:
            return Path(self.config.ssl_ca_cert).read_bytes()
        return b""

    def close(self) -> None:
        self.api.close()


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    """Call a generated API method and return the decoded JSON body ({} if there is none)."""
    kwargs.setdefault("_request_timeout", TIMEOUT)
    resp = fn(*args, _preload_content=False, **kwargs)
    data = resp.data
    return json.loads(data) if data else {}


class Reflector:
    """List, then watch from the list's resourceVersion; keep a store; report changes.

    `on_change(kind, obj)` gets kind "upsert" or "delete". A relist (start, 410 Gone, error)
    reports the difference against the store, including objects deleted while not watching.
    Errors back off exponentially (capped); nothing spins. `stop` is seen between events (a
    bookmark arrives at least every minute or so) and between watches.
    """

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        on_change: Callable[[str, Obj], None],
        *,
        stop: threading.Event,
        key: Callable[[Obj], str] = lambda o: f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}",
        watch_timeout: int = 240,
    ) -> None:
        self.name = name
        self._list = list_fn
        self._on_change = on_change
        self._stop = stop
        self._key = key
        self._watch_timeout = watch_timeout
        self._store: dict[str, Obj] = {}
        self._store_lock = threading.Lock()
        self._watch_stream = watch.Watch(return_type="object")  # events' objects as plain dicts
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reflector-{name}", daemon=True)

    def snapshot(self) -> dict[str, Obj]:
        """A copy of the store, safe to use from any thread."""
        with self._store_lock:
            return dict(self._store)

    def start(self) -> Reflector:
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._relist()
                backoff = 0.5
                while not self._stop.is_set():
                    rv = self._watch(rv)
            except _Expired:
                log.info("%s watch expired; relisting", self.name)
            except Exception as exc:
                log.warning("%s list/watch failed: %s; retrying in %.1fs", self.name, _brief(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _relist(self) -> str:
        listing = call(self._list)
        fresh = {self._key(o): o for o in listing.get("items", [])}
        with self._store_lock:
            gone = [self._store.pop(key) for key in set(self._store) - set(fresh)]
            previous, self._store = self._store, dict(fresh)
        for obj in gone:
            self._emit("delete", obj)
        for key, obj in fresh.items():
            old = previous.get(key)
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self._emit("upsert", obj)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> str:
        """Watch from `rv` until the server ends the watch (or `stop`); returns the last resourceVersion
        seen, bookmarks included. 410 Gone, on opening or as an ERROR event, raises `_Expired`."""
        events = self._watch_stream.stream(
            self._list,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,  # also: one request, the client does not retry it
            _request_timeout=(5.0, self._watch_timeout + 30.0),
        )
        try:
            for event in events:
                if self._stop.is_set():
                    break
                if event["type"] != "BOOKMARK":
                    self._apply(event["type"], event["raw_object"])
        except client.ApiException as exc:
            if exc.status == 410:
                raise _Expired() from exc
            raise
        finally:
            events.close()
        return str(self._watch_stream.resource_version or rv)

    def _apply(self, kind: str, obj: Obj) -> None:
        key = self._key(obj)
        with self._store_lock:
            if kind == "DELETED":
                self._store.pop(key, None)
            else:
                self._store[key] = obj
        self._emit("delete" if kind == "DELETED" else "upsert", obj)

    def _emit(self, kind: str, obj: Obj) -> None:
        try:
            self._on_change(kind, obj)
        except Exception:
            log.exception("%s handler failed on %s", self.name, self._key(obj))


class _Expired(Exception):
    pass


def _brief(exc: BaseException) -> str:
    if isinstance(exc, client.ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)
