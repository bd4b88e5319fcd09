"""Two controller replicas: only the Lease holder acts; the other takes over when it goes.
Also: the probes and /metrics of a running controller."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes import client

from controller.app import Controller, Settings
from tests.controller.test_controller_api import (
    create_job,
    get_job,
    job_pods,
    run_attempt,
    set_phase,
    training_job,
    wait_for,
)


@pytest.fixture
def replicas(api_client: client.ApiClient, namespace: str) -> Iterator[list[Controller]]:
    controllers = [
        Controller(
            api_client,
            Settings(
                namespace=namespace,
                health_port=0,
                health_host="127.0.0.1",
                lease_namespace=namespace,
                identity=f"replica-{i}",
                lease_duration=3.0,
                renew_deadline=2.0,
                retry_period=0.5,
            ),
        )
        for i in range(2)
    ]
    for c in controllers:
        c.start()
    yield controllers
    for c in controllers:
        c.stop()
        c.shutdown()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_one_replica_leads_and_the_other_takes_over(
    api_client: client.ApiClient, namespace: str, replicas: list[Controller]
) -> None:
    leader = wait_for(
        "a leader", lambda: next((c for c in replicas if c.elector and c.elector.is_leader()), None)
    )
    follower = next(c for c in replicas if c is not leader)
    assert follower.elector is not None and not follower.elector.is_leader()

    create_job(api_client, namespace, training_job("ha"))
    run_attempt(api_client, namespace, "ha", 0)
    assert follower.writer.requests == 0, "the follower must not write"

    for port in (leader.health.port, follower.health.port):
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz")[0] == 200
    assert "respawn_leader 1.0" in http_get(leader.health.port, "/metrics")[1]
    assert "respawn_leader 0.0" in http_get(follower.health.port, "/metrics")[1]

    leader.stop()
    leader.shutdown()  # releases the Lease
    wait_for("takeover", lambda: follower.elector is not None and follower.elector.is_leader(), timeout=10)
    set_phase(api_client, namespace, "ha-a0-0", "Failed", exit_code=1)
    run_attempt(api_client, namespace, "ha", 1)
    assert get_job(api_client, namespace, "ha")["status"]["restarts"] == 1
    assert job_pods(api_client, namespace, "ha", 0) == []

    status, metrics = http_get(follower.health.port, "/metrics")
    assert status == 200
    labels = f'class="counted",namespace="{namespace}",reason="Error",trainingjob="ha"'
    assert f"respawn_restarts_total{{{labels}}} 1.0" in metrics
    assert 'respawn_jobs{phase="Running"} 1.0' in metrics
    assert "respawn_time_to_recover_seconds_count" in metrics
    assert "respawn_reconcile_duration_seconds_count" in metrics
