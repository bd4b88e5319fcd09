"""Probe and metrics endpoints on one small HTTP server: `/healthz`, `/readyz`, `/metrics`.

- `/healthz` (liveness) asks "is this process still able to work?": it fails only when something
  is dead that will not come back by itself, e.g. an informer's watch thread. An API-server outage
  does not fail it, because restarting the controller would not help and would only add load.
- `/readyz` (readiness) asks "may this replica be counted as available?": informers have synced.
  It does not depend on leadership: a follower is ready too. Otherwise a rolling update would
  stall, as the new pod could not become ready until the old leader exits, and the old one is not
  removed until the new one is ready. Nothing routes traffic to the controller on readiness.
- `/metrics` is prometheus-client's own exposition of the given registry (content negotiation
  included), so the text format is never hand-written here. With `metrics_auth` (the controller's
  default, `controller/runtime/metrics_auth.py`) it is served only to a bearer token whose identity
  may `get` the non-resource URL `/metrics`: 401 / 403 otherwise. The probes stay open: kubelet
  sends no credentials, and they reveal nothing but check names.

With `tls` (controller/runtime/tls.py) the port speaks HTTPS only, probes included; the handshake
runs in the connection's thread under the same timeout.

Bounded: each connection gets REQUEST_TIMEOUT seconds per read or write (a client that connects
and sends nothing is dropped then), and at most MAX_CONNECTIONS are served at once; one beyond
that is closed at once, so half-open connections cost neither a thread each nor memory, and the
server answers again as soon as they time out.

Each check is a named callable returning True when healthy (an exception counts as a failure).
The body lists every check as `[+]name ok` / `[-]name failed`, as Kubernetes components do.
The server runs in a daemon thread from `start()`; port 0 binds a free port, see `port`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from controller.runtime.metrics_auth import MetricsAuth
from controller.runtime.tls import ReloadingContext

Check = Callable[[], bool]
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 3.0


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; the rest are closed unread."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connections is accepted (and closed), not stalled

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        tls: ReloadingContext | None = None,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._tls = tls

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self._tls is None:
            return connection, address
        # The handshake happens in the connection's own thread, under its timeout (Handler.setup):
        # a client that never finishes one holds a slot, not the accept loop.
        wrapped = self._tls.current().wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or a dropped client: not worth a traceback on stderr."""
        log = logging.getLogger(__name__)
        log.debug("connection from %s ended in an error", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Informer(Protocol):
    @property
    def name(self) -> str: ...

    def is_alive(self) -> bool: ...

    def has_synced(self) -> bool: ...


def informer_checks(informers: Iterable[_Informer]) -> tuple[dict[str, Check], dict[str, Check]]:
    """Liveness checks (watch thread alive) and readiness checks (synced), one per informer."""
    liveness: dict[str, Check] = {}
    readiness: dict[str, Check] = {}
    for informer in informers:
        liveness[f"informer-{informer.name}"] = informer.is_alive
        readiness[f"informer-{informer.name}"] = informer.has_synced
    return liveness, readiness


class HealthServer:
    """Serves the probes and metrics; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 8081,
        registry: CollectorRegistry | None = None,
        logger: logging.Logger | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        metrics_auth: MetricsAuth | None = None,
        tls: ReloadingContext | None = None,
    ) -> None:
        self._address = (host, port)
        self._tls = tls
        self._metrics_auth = metrics_auth
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        # prometheus-client's default registry holds the process and platform collectors.
        self._registry = registry if registry is not None else REGISTRY
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._checks: dict[str, dict[str, Check]] = {"/healthz": {}, "/readyz": {}}
        self._server: _BoundedServer | None = None
        self._thread: threading.Thread | None = None

    def add_liveness_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks["/healthz"][name] = check

    def add_readiness_check(self, name: str, check: Check) -> None:
        with self._lock:
            self._checks["/readyz"][name] = check

    @property
    def metrics_auth(self) -> MetricsAuth | None:
        return self._metrics_auth

    @property
    def port(self) -> int:
        """The bound port (useful after asking for port 0)."""
        if self._server is None:
            raise RuntimeError("health server not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("health server already started")
        self._server = _BoundedServer(self._address, self._handler_class(), self._max_connections, self._tls)
        # A short poll interval keeps `stop()` prompt; the idle wake-ups cost nothing measurable.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="health-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def run_checks(self, path: str) -> tuple[bool, str]:
        """Run the checks behind `path` ("/healthz" or "/readyz"); (all passed, response body)."""
        with self._lock:
            checks = dict(self._checks[path])
        lines, healthy = [], True
        for name, check in sorted(checks.items()):
            try:
                passed = bool(check())
            except Exception as exc:
                self._log.warning("check %s raised %s", name, exc)
                passed = False
            healthy &= passed
            lines.append(f"[{'+' if passed else '-'}]{name} {'ok' if passed else 'failed'}")
        lines.append(f"{path[1:]} {'check passed' if healthy else 'check failed'}")
        return healthy, "\n".join(lines) + "\n"

    def _metrics(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self._registry), content_type

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = server._request_timeout  # socket timeout of each read and write

            def setup(self) -> None:
                super().setup()
                if isinstance(self.connection, ssl.SSLSocket):
                    self.connection.do_handshake()  # bounded by `timeout`, set by super().setup()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/healthz", "/readyz"):
                    healthy, text = server.run_checks(path)
                    self._send(200 if healthy else 503, text.encode(), "text/plain; charset=utf-8")
                elif path == "/metrics":
                    self._serve_metrics(path)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _serve_metrics(self, path: str) -> None:
                if server.metrics_auth is not None:
                    decision = server.metrics_auth.check(self.headers.get("Authorization"), path)
                    if decision.status != 200:
                        text = "text/plain; charset=utf-8"
                        challenge = (
                            {"WWW-Authenticate": 'Bearer realm="respawn"'} if decision.status == 401 else {}
                        )
                        self._send(decision.status, decision.message.encode(), text, challenge)
                        return
                body, content_type = server._metrics(self.headers.get("Accept", ""))
                self._send(200, body, content_type)

            def _send(
                self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes arrive every few seconds; logging each one would drown the useful lines."""

        return Handler
