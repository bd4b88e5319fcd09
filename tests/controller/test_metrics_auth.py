"""/metrics of a running controller behind the API server's TokenReview and SubjectAccessReview,
with real ServiceAccount tokens (TokenRequest API) and RBAC; the probes stay open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from controller.__main__ import parse_args
from controller.app import Controller
from tests.support.deploy import http_get, metrics_reader, service_account_token
from tests.support.kube import running_controller


@pytest.fixture
def guarded(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace, device_faults=False, metrics_auth=True) as controller:
        yield controller


def test_metrics_only_for_a_token_allowed_to_get_them(
    api_client: client.ApiClient, namespace: str, guarded: Controller
) -> None:
    port = guarded.health.port
    assert http_get(port, "/healthz")[0] == 200, "kubelet probes send no token"
    assert http_get(port, "/readyz")[0] == 200
    status, body = http_get(port, "/metrics")
    assert status == 401 and "respawn_" not in body
    assert http_get(port, "/metrics", token="not-a-token")[0] == 401

    client.CoreV1Api(api_client).create_namespaced_service_account(namespace, {"metadata": {"name": "nosy"}})
    nosy = service_account_token(api_client, namespace, "nosy")
    status, body = http_get(port, "/metrics", token=nosy)
    assert status == 403 and "respawn_" not in body
    assert f"system:serviceaccount:{namespace}:nosy may not get /metrics" in body

    with metrics_reader(api_client, namespace) as token:
        status, body = http_get(port, "/metrics", token=token)
        assert status == 200
        assert "respawn_workqueue_depth" in body
        auth = guarded.health.metrics_auth
        assert auth is not None
        reviews = auth.reviews
        for _ in range(5):
            assert http_get(port, "/metrics", token=token)[0] == 200
        assert auth.reviews == reviews, "decisions are cached"
    assert http_get(port, "/healthz")[0] == 200


@pytest.mark.parametrize(("argv", "expected"), [([], True), (["--metrics-auth=false"], False)])
def test_metrics_auth_is_on_unless_turned_off(argv: list[str], expected: bool) -> None:
    assert parse_args(argv)[1].metrics_auth is expected


def test_metrics_auth_flag_takes_only_true_or_false(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--metrics-auth=off-ish"])
    assert "expected true or false" in capsys.readouterr().err
