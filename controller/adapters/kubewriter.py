"""The controller's only writer to the API server. Reads come from informer caches.

Bodies go out as plain JSON. The client's typed methods validate a body against its models first
(client 37: pydantic), which refuses objects the API server accepts (an integer quantity such as
`huawei.com/Ascend910: 8`) and drops fields the models do not know; respawn copies the user's
pod template, so it must pass through untouched.

Every call is idempotent from the caller's point of view: creating what this job already owns and
deleting what is gone succeed. Creating a name that something else holds raises `ForeignObject`:
respawn never adopts, changes or deletes an object without its job's ownerReference. A status
write carries the resourceVersion the decision was based on, so a decision made on a stale cache
is refused (409) instead of applied twice.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from respawn_protocol.crd import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 30.0


class Conflict(Exception):
    """The object changed since it was read; reconcile again from fresh state."""


class ForeignObject(Exception):
    """A name this job needs is held by an object it does not own. A `leftover` belongs to a deleted
    TrainingJob of the same name: it is terminating, or the garbage collector will remove it."""

    def __init__(self, kind: str, namespace: str, name: str, *, leftover: bool) -> None:
        self.kind, self.namespace, self.name, self.leftover = kind, namespace, name, leftover
        state = "belongs to a deleted namesake" if leftover else "exists and is not owned by this TrainingJob"
        super().__init__(f"{kind} {namespace}/{name} {state}")


ENSURED_MEMORY = 16384  # objects remembered as ensured (three per job)
_PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "PodGroup": "podgroups",  # Volcano's or the coscheduling plugin's, by apiVersion (core/gang.py)
}


# Built-in kinds take an update without a resourceVersion; a custom resource (a PodGroup) does not,
# so it is read first (the create below answers 409 and returns what is there).
_UNCONDITIONAL = frozenset({"ServiceAccount", "Role", "RoleBinding"})


def _holds(actual: Any, wanted: Any) -> bool:
    """Whether an object says what we want: equal, or for a spec, every field we set (the API
    server may have defaulted others, as Volcano's schema does a PodGroup's queue)."""
    if isinstance(wanted, dict) and isinstance(actual, dict):
        return all(actual.get(k) == v for k, v in wanted.items())
    return bool(actual == wanted)


def _merged(existing: dict[str, Any], desired: tuple[str, Any]) -> Any:
    field, value = desired
    current = existing.get(field)
    return {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value


def _collection(body: dict[str, Any], namespace: str) -> str:
    api = body["apiVersion"]
    root = "/api/v1" if api == "v1" else f"/apis/{api}"
    return f"{root}/namespaces/{namespace}/{_PLURALS[body['kind']]}"


def _desired(body: dict[str, Any]) -> tuple[str, Any] | None:
    """The part of an owned object the controller keeps up to date: a Role's rules, a PodGroup's
    spec (minMember follows the attempt's size); None for the rest (created once)."""
    for field in ("rules", "spec"):
        if field in body:
            return field, body[field]
    return None


def api_message(exc: ApiException) -> str:
    """The API server's own message (a Status body's `message`), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or f"HTTP {exc.status}")


def _owners(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list((body.get("metadata") or {}).get("ownerReferences") or [])


def _leftover(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if existing["metadata"].get("deletionTimestamp"):
        return True
    ours = {(ref.get("kind"), ref.get("name")) for ref in _owners(wanted)}
    return any(
        (ref.get("kind"), ref.get("name")) in ours for ref in _owners(existing) if ref.get("controller")
    )


class KubeWriter:
    def __init__(self, api: client.ApiClient, *, component: str = "respawn-controller") -> None:
        self._api = api
        self._component = component
        self.requests = 0
        self._ensured: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """The pod as the API server holds it: created now, or already there and this job's."""
        return self._create("Pod", f"/api/v1/namespaces/{namespace}/pods", body)

    def ensure_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("Service", f"/api/v1/namespaces/{namespace}/services", body)

    def ensure_owned(self, namespace: str, body: dict[str, Any]) -> None:
        """A ServiceAccount, Role or RoleBinding of the job: created, or, for the Role, brought up to
        date (it names the pods of the current attempt). What this process already made sure of is
        remembered, so a restart costs one request (the Role's update), not seven."""
        kind, name = body["kind"], body["metadata"]["name"]
        collection = _collection(body, namespace)
        key = (f"{body['apiVersion']}/{kind}", namespace, name)
        owner = ",".join(sorted(r.get("uid", "") for r in _owners(body)))
        desired = _desired(body)
        wanted = (owner, json.dumps(desired, sort_keys=True))
        known = self._ensured.get(key)
        if known == wanted:
            return
        if known is not None and known[0] == owner and kind in _UNCONDITIONAL:
            try:
                self._request("PUT", f"{collection}/{name}", body)  # ours: an unconditional update
            except ApiException:
                del self._ensured[key]
                raise  # gone or changed under us: the retried pass creates and checks it afresh
        else:
            existing = self._create(kind, collection, body)
            if desired is not None and not _holds(existing.get(desired[0]), desired[1]):
                self._request(
                    "PUT", f"{collection}/{name}", {**existing, desired[0]: _merged(existing, desired)}
                )
        self._ensured[key] = wanted
        self._ensured.move_to_end(key)
        while len(self._ensured) > ENSURED_MEMORY:
            self._ensured.popitem(last=False)

    def delete_pod(self, namespace: str, name: str, *, uid: str | None = None, force: bool = False) -> None:
        """Delete a pod; with `uid`, only that pod (a same-named successor is left alone)."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if force:
            options["gracePeriodSeconds"] = 0
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", options)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or a successor holds the name
                raise

    def annotate_pod(self, namespace: str, name: str, *, uid: str, key: str, value: str) -> None:
        """Set one annotation on a pod, only the incarnation with `uid` (a merge patch that names
        the uid fails with 409 on a successor). A pod already gone is no error: the next pass sees."""
        body = {"metadata": {"uid": uid, "annotations": {key: value}}}
        try:
            self._request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", body, merge=True)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def delete_job(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete a TrainingJob (ttlSecondsAfterFinished), only the incarnation with `uid`."""
        options = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        try:
            self._request("DELETE", path, options)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or re-created under the name
                raise

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Replace the status subresource, guarded by the job's resourceVersion; returns the new object."""
        meta = job["metadata"]
        body = {
            "apiVersion": job.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": job.get("kind", KIND),
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": job.get("spec", {}),
            "status": status,
        }
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/{PLURAL}/{meta['name']}/status"
        try:
            return self._request("PUT", path, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{meta['namespace']}/{meta['name']}: {exc.reason}") from exc
            raise

    def emit_event(self, job: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        """Best effort, like client-go's recorder: a lost event must not fail a reconcile."""
        meta = job["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self._component,
        }
        try:
            self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except ApiException as exc:
            log.warning(
                "event not recorded", extra={"job": meta["name"], "reason": reason, "error": exc.reason}
            )

    def _create(self, kind: str, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        for _ in range(2):  # the holder of the name may vanish between our create and our read
            try:
                return self._request("POST", collection, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            try:
                existing = self._request("GET", f"{collection}/{name}")
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            if {r.get("uid") for r in _owners(existing)} & {r.get("uid") for r in _owners(body)}:
                return existing
            namespace = existing["metadata"].get("namespace", "")
            raise ForeignObject(kind, namespace, name, leftover=_leftover(existing, body))
        raise Conflict(f"{kind} {name} was created and deleted by someone else meanwhile")

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, merge: bool = False
    ) -> dict[str, Any]:
        self.requests += 1
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json" if merge else "application/json"
        request = self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self._api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=response, body=data.decode(errors="replace"), data=None
            )
        return json.loads(data) if data else {}
