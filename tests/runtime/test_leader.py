"""Leader election between two electors on a real API server."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client, config

from controller.runtime.clock import FakeClock
from controller.runtime.leader import LeaderElector, default_identity
from tests.support.poll import FAST, wait_for

# Short timings so takeovers happen in seconds; the ratios are client-go's (15/10/2 s).
TIMINGS: dict[str, Any] = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.25}


class Tracker:
    """Counts a replica's leadership callbacks."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.started_at = 0.0

    def on_started(self) -> None:
        self.started_at = time.monotonic()
        self.started.set()

    def on_stopped(self) -> None:
        self.stopped.set()


@pytest.fixture
def electors(
    api_client: client.ApiClient, namespace: str
) -> Iterator[Callable[..., tuple[LeaderElector, Tracker]]]:
    made: list[LeaderElector] = []

    def make(identity: str, **overrides: Any) -> tuple[LeaderElector, Tracker]:
        tracker = Tracker()
        elector = LeaderElector(
            api_client,
            namespace=namespace,
            name="respawn-controller",
            identity=identity,
            on_started_leading=tracker.on_started,
            on_stopped_leading=tracker.on_stopped,
            **{**TIMINGS, **overrides},
        )
        made.append(elector)
        return elector, tracker

    yield make
    for elector in made:
        elector.stop(release=False)
        assert not elector.is_alive()


def holder(api_client: client.ApiClient, namespace: str) -> str:
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease("respawn-controller", namespace)
    return str(lease.spec.holder_identity or "")


def start_pair(
    electors: Callable[..., tuple[LeaderElector, Tracker]], **overrides: Any
) -> tuple[tuple[LeaderElector, Tracker], tuple[LeaderElector, Tracker]]:
    first, second = electors("replica-a", **overrides), electors("replica-b", **overrides)
    first[0].start()
    second[0].start()
    wait_for("someone leads", lambda: first[0].is_leader() or second[0].is_leader(), 10, interval=FAST)
    return (first, second) if first[0].is_leader() else (second, first)


def test_exactly_one_of_two_leads(
    electors: Callable[..., tuple[LeaderElector, Tracker]], api_client: client.ApiClient, namespace: str
) -> None:
    (leader, leader_tracker), (follower, follower_tracker) = start_pair(electors)
    assert holder(api_client, namespace) == leader.identity
    # Watch over several renewals: the follower must never lead while the leader renews.
    deadline = time.monotonic() + 6 * TIMINGS["retry_period"]
    while time.monotonic() < deadline:
        assert leader.is_leader() and not follower.is_leader()
        time.sleep(0.02)
    assert leader_tracker.started.is_set() and not follower_tracker.started.is_set()
    renewed = client.CoordinationV1Api(api_client).read_namespaced_lease("respawn-controller", namespace).spec
    assert renewed.renew_time > renewed.acquire_time, "the leader keeps renewing"


def test_follower_takes_over_after_the_leader_stops_renewing(
    electors: Callable[..., tuple[LeaderElector, Tracker]], api_client: client.ApiClient, namespace: str
) -> None:
    (leader, _), (follower, follower_tracker) = start_pair(electors)
    stopped_at = time.monotonic()
    leader.stop(release=False)  # as if the process hung or died: the lease is left to expire
    assert not leader.is_leader()
    wait_for("follower takes over", follower.is_leader, TIMINGS["lease_duration"] + 3, interval=FAST)
    waited = follower_tracker.started_at - stopped_at
    assert waited >= TIMINGS["lease_duration"] - 2 * TIMINGS["retry_period"] - 0.5, "took over before expiry"
    assert waited <= TIMINGS["lease_duration"] + 1.0, (
        "took over well within one lease duration of the last renewal"
    )
    assert holder(api_client, namespace) == follower.identity
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease("respawn-controller", namespace)
    assert lease.spec.lease_transitions == 1


def test_release_on_clean_shutdown_makes_the_takeover_fast(
    electors: Callable[..., tuple[LeaderElector, Tracker]], api_client: client.ApiClient, namespace: str
) -> None:
    # A long lease: without the release the follower would wait 20 s.
    (leader, leader_tracker), (follower, follower_tracker) = start_pair(
        electors, lease_duration=20.0, renew_deadline=10.0
    )
    stopped_at = time.monotonic()
    leader.stop(release=True)
    assert leader_tracker.stopped.is_set(), "on_stopped_leading runs on a clean stop too"
    wait_for("follower takes the released lease", follower.is_leader, 5, interval=FAST)
    assert follower_tracker.started_at - stopped_at < 2.0


def test_losing_the_lease_calls_on_stopped_leading_and_does_not_retry(
    electors: Callable[..., tuple[LeaderElector, Tracker]], api_client: client.ApiClient, namespace: str
) -> None:
    elector, tracker = electors("replica-a")
    elector.start()
    assert elector.wait_for_leadership(10)
    # Another party takes the lease over (as an operator or a partitioned peer might).
    leases = client.CoordinationV1Api(api_client)
    lease = leases.read_namespaced_lease("respawn-controller", namespace)
    now = datetime.now(UTC).replace(microsecond=1)
    lease.spec.holder_identity, lease.spec.renew_time, lease.spec.lease_duration_seconds = (
        "intruder",
        now,
        3600,
    )
    leases.replace_namespaced_lease("respawn-controller", namespace, lease)

    assert tracker.stopped.wait(TIMINGS["renew_deadline"] + 3), (
        "loss must be reported within the renew deadline"
    )
    assert not elector.is_leader()
    wait_for("the elector gives up for good", lambda: not elector.is_alive(), interval=FAST)
    assert holder(api_client, namespace) == "intruder", "a lost lease is not released"


def test_timings_are_validated_and_identity_is_unique(api_client: client.ApiClient) -> None:
    with pytest.raises(ValueError):
        LeaderElector(api_client, namespace="ns", name="l", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError):
        LeaderElector(api_client, namespace="ns", name="l", renew_deadline=2, retry_period=2)
    assert re.fullmatch(r".+_[0-9a-f]{8}", default_identity())
    assert default_identity() != default_identity()


def test_whole_second_timestamps_are_written_in_the_servers_micro_time_format(
    api_client: client.ApiClient, namespace: str
) -> None:
    # The client drops the fraction of a whole-second datetime, and the server rejects MicroTime
    # without exactly six digits; a fake clock standing on a whole second hits that every time.
    clock = FakeClock(wall=datetime(2030, 1, 1, tzinfo=UTC))
    elector = LeaderElector(api_client, namespace=namespace, name="whole-second", clock=clock, **TIMINGS)
    elector.start()
    try:
        assert elector.wait_for_leadership(10)
    finally:
        elector.stop(release=True)
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease("whole-second", namespace)
    assert lease.spec.holder_identity == "" and lease.spec.renew_time.year == 2030, (
        "released with a fake time"
    )


class Partition:
    """A TCP proxy to the API server that can be cut: then it forwards nothing and answers nothing,
    as a network partition looks to a client (requests hang until they time out)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.cut = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(conn)
            if self.cut.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(self.upstream)
            self._sockets.append(upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.cut.is_set():
                    dst.sendall(data)

    def close(self) -> None:
        for s in self._sockets:
            s.close()


def test_a_leader_cut_off_from_the_api_server_stops_leading_before_its_lease_expires(
    kubeconfig: Path, api_client: client.ApiClient, namespace: str
) -> None:
    # Found by the chaos soak: each lease request went through the client's three retries, so a
    # leader whose API server hung kept leading for two lease durations, while a follower that
    # could reach the API server would have taken over after one.
    api = config.new_client_from_config(config_file=str(kubeconfig))
    server = urlparse(api.configuration.host)
    assert server.hostname and server.port
    partition = Partition(server.hostname, server.port)
    api.configuration.host = f"https://127.0.0.1:{partition.port}"
    stopped_at: list[datetime] = []
    elector = LeaderElector(
        api,
        namespace=namespace,
        name="respawn-controller",
        identity="cut-off",
        on_stopped_leading=lambda: stopped_at.append(datetime.now(UTC)),
        **TIMINGS,
    )
    try:
        elector.start()
        assert elector.wait_for_leadership(10)
        partition.cut.set()
        wait_for("leadership given up", lambda: stopped_at, TIMINGS["lease_duration"] * 3, interval=FAST)
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease("respawn-controller", namespace)
        assert lease.spec.holder_identity == "cut-off"
        led_for = (stopped_at[0] - lease.spec.renew_time).total_seconds()
        assert led_for < TIMINGS["lease_duration"], (
            f"led {led_for:.1f}s after its last renewal, past its {TIMINGS['lease_duration']}s lease"
        )
    finally:
        elector.stop(release=False)
        partition.close()
        api.close()
