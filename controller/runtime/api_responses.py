"""API requests by HTTP method and response code, as client-go's `rest_client_requests_total`:
a controller refused (403), throttled (429) or failing against a sick API server (5xx, or no
answer at all: code `<error>`) shows here before it shows as jobs that stop healing.

The count is taken at the kubernetes client's REST layer, below every API object, so informers'
LISTs and WATCHes, writes, leader election and the metrics' token reviews are all counted without
each call site knowing. A watch counts once, when its response headers arrive."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

NO_RESPONSE = "<error>"  # client-go's code label for a request that got no HTTP status


class ApiResponses(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, method: str, code: str) -> None:
        with self._lock:
            self._counts[(method, code)] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "respawn_rest_client_requests",
            "API requests made by the controller, by HTTP method and response code "
            f"({NO_RESPONSE}: no response, e.g. a refused connection or a timeout).",
            labels=["method", "code"],
        )
        for (method, code), count in sorted(self.counts().items()):
            family.add_metric([method, code], count)
        yield family


def count_responses(api: client.ApiClient) -> ApiResponses:
    """The counts of `api`'s requests, counting from the first call on. A client is wrapped once:
    controllers that share it (tests do) share its counts instead of counting each request twice."""
    rest = api.rest_client
    existing = getattr(rest, "_respawn_responses", None)
    if isinstance(existing, ApiResponses):
        return existing
    responses = ApiResponses()
    request: Callable[..., Any] = rest.request

    def counted(method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            response = request(method, *args, **kwargs)
        except Exception as exc:
            status = getattr(exc, "status", None)
            responses.record(method.upper(), str(status) if status else NO_RESPONSE)
            raise
        responses.record(method.upper(), str(response.status))
        return response

    rest.request = counted
    rest._respawn_responses = responses
    return responses
