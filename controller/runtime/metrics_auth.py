"""Who may read `/metrics`: the API server decides, as kube-rbac-proxy and controller-runtime's
`WithAuthenticationAndAuthorization` do.

A request must carry `Authorization: Bearer <token>`. The token is checked with a TokenReview
(who is this?) and the identity with a SubjectAccessReview for `get` on the non-resource URL of
the request (`/metrics`): the same RBAC rule that lets Prometheus read any component's metrics,

    rules: [{nonResourceURLs: [/metrics], verbs: [get]}]

Answers: 401 without a bearer token or with one the API server does not accept, 403 when the
identity may not `get` the path, 500 when the API server could not be asked (logged, with its
words: e.g. the controller lacking `create` on tokenreviews). Decisions are cached by a hash of
the token (the token itself is never kept): allowed ones for `allowed_ttl`, refusals for
`denied_ttl`, at most `max_entries` of them (least recently used first out), so a scrape every
few seconds costs the API server two requests a minute. Errors are not cached. A token revoked
or a binding removed is therefore honoured within `allowed_ttl`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client

ALLOWED_TTL = 60.0
DENIED_TTL = 10.0
MAX_ENTRIES = 1024
API_TIMEOUT = 5.0  # seconds for each review request


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 401, 403 or 500
    message: str


@dataclass(frozen=True)
class User:
    """The identity a TokenReview returned."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class Reviewer(Protocol):
    """The two API calls; raise on anything but an answer."""

    def authenticate(self, token: str) -> User | None: ...

    def authorize(self, user: User, verb: str, path: str) -> bool: ...


class KubeReviewer:
    """TokenReview and SubjectAccessReview through the controller's API client."""

    def __init__(self, api: client.ApiClient, timeout: float = API_TIMEOUT) -> None:
        self._authn = client.AuthenticationV1Api(api)
        self._authz = client.AuthorizationV1Api(api)
        self._timeout = timeout

    def authenticate(self, token: str) -> User | None:
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        status = self._authn.create_token_review(review, _request_timeout=self._timeout).status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        extra = tuple(sorted((k, tuple(v or ())) for k, v in (user.extra or {}).items()))
        return User(user.username or "", user.uid or "", tuple(user.groups or ()), extra)

    def authorize(self, user: User, verb: str, path: str) -> bool:
        spec = client.V1SubjectAccessReviewSpec(
            user=user.name,
            uid=user.uid or None,
            groups=list(user.groups),
            extra={k: list(v) for k, v in user.extra} or None,
            non_resource_attributes=client.V1NonResourceAttributes(path=path, verb=verb),
        )
        review = client.V1SubjectAccessReview(spec=spec)
        status = self._authz.create_subject_access_review(review, _request_timeout=self._timeout).status
        return bool(status is not None and status.allowed)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


class MetricsAuth:
    """Authenticates and authorizes a request for a path; see the module docstring."""

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        allowed_ttl: float = ALLOWED_TTL,
        denied_ttl: float = DENIED_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self._reviewer = reviewer
        self._ttl = {True: allowed_ttl, False: denied_ttl}
        self._max_entries = max_entries
        self._clock = clock
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], tuple[float, Decision]] = OrderedDict()
        self.reviews = 0  # API requests made: what the cache saves

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def check(self, authorization: str | None, path: str, verb: str = "get") -> Decision:
        token = bearer_token(authorization)
        if token is None:
            return Decision(401, "Unauthorized: send Authorization: Bearer <token>\n")
        key = (hashlib.sha256(token.encode()).hexdigest(), f"{verb} {path}")
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
        decision = self._review(token, verb, path)
        if decision.status != 500:
            self._remember(key, now + self._ttl[decision.status == 200], decision)
        return decision

    def _review(self, token: str, verb: str, path: str) -> Decision:
        try:
            self.reviews += 1
            user = self._reviewer.authenticate(token)
            if user is None:
                return Decision(401, "Unauthorized: the API server did not accept the token\n")
            self.reviews += 1
            if not self._reviewer.authorize(user, verb, path):
                self._log.debug("metrics request refused", extra={"user": user.name, "path": path})
                return Decision(403, f"Forbidden: {user.name} may not {verb} {path}\n")
            return Decision(200, "")
        except Exception as exc:
            self._log.warning("metrics request not reviewed: %s", _reason(exc), extra={"path": path})
            return Decision(500, "the API server could not review the request; see the controller's log\n")

    def _remember(self, key: tuple[str, str], expires: float, decision: Decision) -> None:
        with self._lock:
            self._cache[key] = (expires, decision)
            self._cache.move_to_end(key)
            now = self._clock()
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)


def _reason(exc: Any) -> str:
    """An ApiException as its status and the API server's message; anything else as itself."""
    status, body = getattr(exc, "status", None), getattr(exc, "body", None)
    if status is not None:
        return f"({status}) {body or getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"
