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
from controller.runtime.metrics_auth import MetricsAuth, User, bearer_token


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[HealthServer]:
    health = HealthServer(host="127.0.0.1", port=0, registry=registry)
    health.start()
    yield health
    health.stop()


def fetch(
    server: HealthServer, path: str, accept: str = "", token: str | None = None
) -> tuple[int, str, str]:
    headers = {"Accept": accept} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers)
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


# -- /metrics behind TokenReview + SubjectAccessReview (the API calls faked; the real ones:
# tests/controller/test_metrics_auth.py) ----------------------------------------------------------


class FakeReviewer:
    """Tokens `reader` (may get /metrics) and `other` (may not); anything else is not accepted.
    Counts the calls; `broken` makes every call fail as an unreachable API server would."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken = False

    def authenticate(self, token: str) -> User | None:
        self.calls.append(f"authenticate {token}")
        if self.broken:
            raise ConnectionError("API server unreachable")
        return User(f"system:serviceaccount:monitoring:{token}") if token in ("reader", "other") else None

    def authorize(self, user: User, verb: str, path: str) -> bool:
        self.calls.append(f"authorize {user.name} {verb} {path}")
        return user.name.endswith(":reader") and (verb, path) == ("get", "/metrics")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reviewer() -> FakeReviewer:
    return FakeReviewer()


@pytest.fixture
def guarded(registry: CollectorRegistry, reviewer: FakeReviewer) -> Iterator[HealthServer]:
    Counter("respawn_test_reconciles", "Reconciles.", registry=registry).inc()
    health = HealthServer(host="127.0.0.1", port=0, registry=registry, metrics_auth=MetricsAuth(reviewer))
    health.start()
    yield health
    health.stop()


def test_metrics_without_a_bearer_token_are_401_and_ask_the_api_server_nothing(
    guarded: HealthServer, reviewer: FakeReviewer
) -> None:
    status, _, body = fetch(guarded, "/metrics")
    assert status == 401 and "respawn_test" not in body
    request = urllib.request.Request(
        f"http://127.0.0.1:{guarded.port}/metrics", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert reviewer.calls == []


def test_metrics_need_an_accepted_token_of_an_identity_allowed_to_get_them(guarded: HealthServer) -> None:
    status, _, body = fetch(guarded, "/metrics", token="forged")
    assert status == 401 and "respawn_test" not in body
    status, _, body = fetch(guarded, "/metrics", token="other")
    assert status == 403 and "respawn_test" not in body
    assert "system:serviceaccount:monitoring:other may not get /metrics" in body
    status, content_type, body = fetch(guarded, "/metrics", token="reader")
    assert status == 200 and content_type.startswith("text/plain")
    assert "respawn_test_reconciles_total 1.0" in body


def test_probes_stay_open_with_metrics_auth(guarded: HealthServer, reviewer: FakeReviewer) -> None:
    guarded.add_readiness_check("synced", lambda: True)
    assert fetch(guarded, "/healthz")[0] == 200
    assert fetch(guarded, "/readyz")[0] == 200
    assert fetch(guarded, "/nope")[0] == 404
    assert reviewer.calls == []


def test_an_api_server_that_cannot_answer_is_a_500_and_is_not_cached(
    guarded: HealthServer, reviewer: FakeReviewer
) -> None:
    reviewer.broken = True
    status, _, body = fetch(guarded, "/metrics", token="reader")
    assert status == 500 and "respawn_test" not in body
    reviewer.broken = False
    assert fetch(guarded, "/metrics", token="reader")[0] == 200


def test_decisions_are_cached_briefly(reviewer: FakeReviewer) -> None:
    clock = Clock()
    auth = MetricsAuth(reviewer, allowed_ttl=60, denied_ttl=10, clock=clock)
    for _ in range(5):
        assert auth.check("Bearer reader", "/metrics").status == 200
        assert auth.check("Bearer other", "/metrics").status == 403
        assert auth.check("Bearer forged", "/metrics").status == 401
    assert auth.reviews == 5, "one TokenReview each, one SubjectAccessReview for each accepted token"
    clock.now += 11  # refusals expire first: a binding just granted is seen within denied_ttl
    auth.check("Bearer reader", "/metrics")
    auth.check("Bearer other", "/metrics")
    assert auth.reviews == 7
    clock.now += 50
    auth.check("Bearer reader", "/metrics")
    assert auth.reviews == 9


def test_the_decision_cache_is_bounded(reviewer: FakeReviewer) -> None:
    auth = MetricsAuth(reviewer, max_entries=8, clock=Clock())
    for i in range(100):
        assert auth.check(f"Bearer forged-{i}", "/metrics").status == 401
    assert len(auth) == 8
    auth.check("Bearer reader", "/metrics")
    assert len(auth) == 8
    reviews = auth.reviews
    auth.check("Bearer reader", "/metrics")
    assert auth.reviews == reviews, "the newest entry is kept"
    assert auth.check("Bearer forged-0", "/metrics").status == 401
    assert auth.reviews == reviews + 1, "the oldest was dropped"


def test_the_cache_keeps_no_token() -> None:
    auth = MetricsAuth(FakeReviewer(), clock=Clock())
    auth.check("Bearer reader", "/metrics")
    assert "reader" not in repr(auth._cache)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc", "abc"),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Basic abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
