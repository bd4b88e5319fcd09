"""The probe and metrics server, over real HTTP on a free loopback port."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from controller.runtime.health import HealthServer, informer_checks


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[HealthServer]:
    health = HealthServer(host="127.0.0.1", port=0, registry=registry)
    health.start()
    yield health
    health.stop()


def fetch(server: HealthServer, path: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_probes_pass_with_no_checks_and_report_each_check(server: HealthServer) -> None:
    assert fetch(server, "/healthz")[0] == 200
    server.add_liveness_check("watch", lambda: True)
    status, _, body = fetch(server, "/healthz")
    assert status == 200
    assert "[+]watch ok" in body and "healthz check passed" in body


def test_failing_or_raising_check_makes_the_probe_503(server: HealthServer) -> None:
    server.add_readiness_check("synced", lambda: True)
    server.add_readiness_check("pods", lambda: False)

    def broken() -> bool:
        raise RuntimeError("no")

    server.add_readiness_check("broken", broken)
    status, _, body = fetch(server, "/readyz?verbose")
    assert status == 503
    assert "[+]synced ok" in body and "[-]pods failed" in body and "[-]broken failed" in body
    assert fetch(server, "/healthz")[0] == 200, "readiness checks must not affect liveness"


def test_metrics_come_from_the_registry(server: HealthServer, registry: CollectorRegistry) -> None:
    Counter("respawn_test_reconciles", "Reconciles.", registry=registry).inc(3)
    status, content_type, body = fetch(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "respawn_test_reconciles_total 3.0" in body
    status, content_type, body = fetch(server, "/metrics", accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and body.rstrip().endswith("# EOF")


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert fetch(server, "/nope")[0] == 404


def test_informer_checks_map_alive_to_liveness_and_synced_to_readiness() -> None:
    class Stub:
        name = "pods"

        def is_alive(self) -> bool:
            return True

        def has_synced(self) -> bool:
            return False

    liveness, readiness = informer_checks([Stub()])
    assert liveness["informer-pods"]() is True
    assert readiness["informer-pods"]() is False


def test_stop_frees_the_port(registry: CollectorRegistry) -> None:
    health = HealthServer(host="127.0.0.1", port=0, registry=registry)
    health.start()
    port = health.port
    health.stop()
    again = HealthServer(host="127.0.0.1", port=port, registry=registry)
    again.start()
    again.stop()


def test_half_open_connections_neither_pile_up_threads_nor_stop_the_probes(
    registry: CollectorRegistry,
) -> None:
    health = HealthServer(
        host="127.0.0.1", port=0, registry=registry, max_connections=16, request_timeout=1.0
    )
    health.start()
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(300):  # connect, send nothing
            idle.append(socket.create_connection(("127.0.0.1", health.port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() - threads_before <= 16
        started = time.monotonic()
        while True:
            try:
                assert fetch(health, "/healthz")[0] == 200
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() - started < 5, "/healthz never answered"
                time.sleep(0.1)
        assert threading.active_count() - threads_before <= 16
    finally:
        for sock in idle:
            sock.close()
        health.stop()
