"""API requests counted by method and response code at the client's REST layer, against the test
API server: successes, refusals and requests that got no answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry

from controller.runtime.api_responses import NO_RESPONSE, count_responses
from devcluster.controlplane import free_port


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A client of its own: the counts start at zero."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


def test_requests_are_counted_by_method_and_code(api: client.ApiClient, namespace: str) -> None:
    responses = count_responses(api)
    core = client.CoreV1Api(api)
    core.list_namespaced_pod(namespace)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("absent", namespace)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"))
    core.create_namespaced_config_map(namespace, body)
    with pytest.raises(ApiException):
        core.create_namespaced_config_map(namespace, body)
    assert responses.counts() == {
        ("GET", "200"): 1,
        ("GET", "404"): 1,
        ("POST", "201"): 1,
        ("POST", "409"): 1,
    }

    registry = CollectorRegistry()
    registry.register(responses)
    labels = {"method": "GET", "code": "404"}
    assert registry.get_sample_value("respawn_rest_client_requests_total", labels) == 1.0


def test_a_client_is_counted_once_however_many_controllers_share_it(api: client.ApiClient) -> None:
    first, second = count_responses(api), count_responses(api)
    assert first is second
    client.CoreV1Api(api).list_namespace()
    assert first.counts() == {("GET", "200"): 1}


def test_a_request_without_an_answer_is_counted_as_an_error() -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    configuration.retries = False
    with client.ApiClient(configuration) as api:
        responses = count_responses(api)
        with pytest.raises(Exception, match=r"(?i)refused|connection"):
            client.CoreV1Api(api).list_namespace(_request_timeout=5)
    assert responses.counts() == {("GET", NO_RESPONSE): 1}
