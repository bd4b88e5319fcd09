"""The controller's only writer to the API server. Reads come from informer caches.

Every call is idempotent from the caller's point of view: creating what exists and deleting what
is gone succeed. A status write carries the resourceVersion the decision was based on, so a
decision made on a stale cache is refused (409) instead of applied twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from respawn_protocol.crd import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The object changed since it was read; reconcile again from fresh state."""


class KubeWriter:
    def __init__(self, api: client.ApiClient, *, component: str = "respawn-controller") -> None:
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._component = component
        self.requests = 0

    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        """True if created, False if it already existed."""
        return self._create(lambda: self._core.create_namespaced_pod(namespace, body, _preload_content=False))

    def ensure_service(self, namespace: str, body: dict[str, Any]) -> bool:
        return self._create(
            lambda: self._core.create_namespaced_service(namespace, body, _preload_content=False)
        )

    def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        self.requests += 1
        try:
            self._core.delete_namespaced_pod(
                name,
                namespace,
                grace_period_seconds=0 if force else None,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Replace the status subresource, guarded by the job's resourceVersion; returns the new object."""
        meta = job["metadata"]
        body = {
            "apiVersion": job.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": job.get("kind", "TrainingJob"),
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": job.get("spec", {}),
            "status": status,
        }
        self.requests += 1
        try:
            return self._custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{meta['namespace']}/{meta['name']}: {exc.reason}") from exc
            raise

    def emit_event(self, job: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        """Best effort, like client-go's recorder: a lost event must not fail a reconcile."""
        meta = job["metadata"]
        now = datetime.now(UTC)
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TrainingJob",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
            "reportingComponent": self._component,
        }
        self.requests += 1
        try:
            self._core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as exc:
            log.warning(
                "event not recorded", extra={"job": meta["name"], "reason": reason, "error": exc.reason}
            )

    def _create(self, call: Any) -> bool:
        self.requests += 1
        try:
            call()
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True
