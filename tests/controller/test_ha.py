"""Two controller replicas: only the Lease holder acts; the other takes over when it goes.
Also: the probes and /metrics of a running controller."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.deploy import http_get
from tests.support.kube import create_job, get_job, job_pods, run_attempt, running_controller, set_phase
from tests.support.manifests import played_job
from tests.support.poll import wait_for


@pytest.fixture
def replicas(api_client: client.ApiClient, namespace: str) -> Iterator[list[Controller]]:
    with ExitStack() as running:
        yield [
            running.enter_context(
                running_controller(
                    api_client,
                    namespace,
                    leader_election=True,
                    lease_namespace=namespace,
                    identity=f"replica-{i}",
                    lease_duration=3.0,
                    renew_deadline=2.0,
                    retry_period=0.5,
                )
            )
            for i in range(2)
        ]


def test_one_replica_leads_and_the_other_takes_over(
    api_client: client.ApiClient, namespace: str, replicas: list[Controller]
) -> None:
    leader = wait_for(
        "a leader", lambda: next((c for c in replicas if c.elector and c.elector.is_leader()), None)
    )
    follower = next(c for c in replicas if c is not leader)
    assert follower.elector is not None and not follower.elector.is_leader()

    create_job(api_client, namespace, played_job("ha"))
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
