"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's rules and timings.

Two controller replicas may run (a rolling update, a rescheduled pod); only the leader may
reconcile, or both would create and delete the same pods. Each replica runs a `LeaderElector`:

- Acquire: every `retry_period` (with up to 20 % jitter) read the Lease; take it if it is free
  (no holder, or released), or if its record has not changed for the record's
  `leaseDurationSeconds` as measured on *this* process's monotonic clock since we first saw that
  record. Measuring locally, as client-go does, makes expiry immune to clock skew between nodes.
- Renew: the leader rewrites `renewTime` every `retry_period`. If no renewal succeeds within
  `renew_deadline`, leadership is lost; requests are cut short at that deadline, so a hung API
  server cannot stretch it. `renew_deadline < lease_duration` leaves a margin, so the old leader
  gives up before anyone else can take over.
- Every write is an update carrying the resourceVersion that was read: if another replica wrote
  in between, the API server answers 409 Conflict and this attempt fails; the next one re-reads.
- Losing the lease is final for this elector: `on_stopped_leading` is called and the elector does
  not try again. The controller exits from that callback and Kubernetes restarts the pod, which
  starts from a clean slate as a follower: a process that may still hold stale in-memory state
  never acts as leader again.
- `stop()` releases the lease (empty holderIdentity, leaseDurationSeconds 1), so the other replica
  takes over within one retry period instead of waiting out the lease. `on_stopped_leading` runs
  then too: leadership ends however it ends.

Callbacks run on the elector's thread and must return quickly (start or stop workers, set an
event); a slow `on_started_leading` delays the first renewal.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.runtime.clock import Clock, RealClock

_JITTER = 0.2


def default_identity() -> str:
    """The pod's name (POD_NAME from the downward API, else the hostname) plus a random suffix.

    The suffix keeps a restarted container from mistaking its predecessor's lease for its own.
    """
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def _micro_time(now: datetime) -> datetime:
    """`now` fit for a MicroTime field: the server parses exactly six fractional digits, and the client
    drops the fraction from its ISO output when it is zero, which the server would then reject."""
    return now.replace(microsecond=now.microsecond or 1)


class LeaderElector:
    """Campaigns for the Lease `namespace/name`; see the module docstring for the rules."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        on_new_leader: Callable[[str], None] | None = None,
        request_timeout: float | None = None,
        clock: Clock | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period * (1 + _JITTER) > 0:
            raise ValueError("need lease_duration > renew_deadline > 1.2 * retry_period > 0")
        self.identity = identity or default_identity()
        self.namespace, self.name = namespace, name
        # The API stores whole seconds; rounding up never shortens the promise made to followers.
        self.lease_duration_seconds = math.ceil(lease_duration)
        self.renew_deadline, self.retry_period = renew_deadline, retry_period
        self._request_timeout = request_timeout or renew_deadline / 2
        # The client's own retries would make one request last several timeouts and keep a cut-off
        # leader leading past its lease; the elector retries by itself.
        configuration = copy.copy(api_client.configuration)
        configuration.retries = False
        self._client = client.ApiClient(configuration)
        self._api = client.CoordinationV1Api(self._client)
        self._on_started = on_started_leading or (lambda: None)
        self._on_stopped = on_stopped_leading or (lambda: None)
        self._on_new_leader = on_new_leader or (lambda identity: None)
        self._clock = clock or RealClock()
        self._log = logger or logging.getLogger(__name__)
        self._stopping = threading.Event()
        self._leading = threading.Event()
        self._release_on_stop = True
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("elector already started")
        self._thread = threading.Thread(target=self._run, name=f"leader-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float | None = None) -> None:
        """Stop campaigning or renewing; with `release`, hand the lease over at once."""
        self._release_on_stop = release
        self._stopping.set()
        if self._thread is not None:
            # At most an attempt and a release (two requests each) are in flight.
            self._thread.join(timeout if timeout is not None else self._request_timeout * 4 + 1)

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- campaign ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._campaign()
        finally:
            self._client.close()

    def _campaign(self) -> None:
        if not self._acquire():
            return
        self._leading.set()
        self._log.info("became leader", extra={"lease": self.name, "identity": self.identity})
        try:
            self._safe_callback(self._on_started)
            self._renew_until_lost_or_stopped()
        finally:
            if self._stopping.is_set() and self._release_on_stop:
                self._release()
            self._leading.clear()
            self._safe_callback(self._on_stopped)

    def _acquire(self) -> bool:
        while not self._stopping.is_set():
            if self._attempt():
                return True
            self._stopping.wait(self.retry_period * (1 + random.random() * _JITTER))
        return False

    def _renew_until_lost_or_stopped(self) -> None:
        while not self._stopping.wait(self.retry_period):
            deadline = self._clock.monotonic() + self.renew_deadline
            while not self._attempt(deadline):
                if self._clock.monotonic() + self.retry_period >= deadline:
                    self._log.error(
                        "failed to renew lease within %.1fs; leadership lost",
                        self.renew_deadline,
                        extra={"lease": self.name, "identity": self.identity},
                    )
                    return
                if self._stopping.wait(self.retry_period):
                    return

    def _attempt(self, deadline: float | None = None) -> bool:
        """One try to acquire or renew; False on any failure (logged), so callers simply retry.

        While leading, no request outlasts `deadline`: as client-go's context, it is cut short, so
        leadership is given up within the renew deadline even if the API server hangs.
        """
        try:
            return self._try_acquire_or_renew(deadline)
        except Exception as exc:
            status = exc.status if isinstance(exc, ApiException) else type(exc).__name__
            self._log.warning("lease %s/%s: attempt failed (%s)", self.namespace, self.name, status)
            return False

    def _try_acquire_or_renew(self, deadline: float | None) -> bool:
        now, seen_at = _micro_time(self._clock.now()), self._clock.monotonic()
        try:
            lease = self._read(self._timeout(deadline))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return self._create(now, seen_at, self._timeout(deadline))
        spec = lease.spec or client.V1LeaseSpec()
        self._observe(spec, seen_at)
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.lease_duration_seconds
        if holder and holder != self.identity and self._observed_at + duration > seen_at:
            return False
        ours = holder == self.identity
        lease.spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_duration_seconds,
            acquire_time=spec.acquire_time if ours and spec.acquire_time else now,
            renew_time=now,
            lease_transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
        )
        try:
            updated = self._replace(lease, self._timeout(deadline))
        except ApiException as exc:
            if exc.status == 409:  # someone wrote since our read; the next attempt re-reads
                return False
            raise
        self._observe(updated.spec, seen_at)
        return True

    def _create(self, now: datetime, seen_at: float, timeout: float) -> bool:
        spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_duration_seconds,
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        )
        metadata = client.V1ObjectMeta(name=self.name, namespace=self.namespace)
        body = client.V1Lease(metadata=metadata, spec=spec)
        try:
            created = self._api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:  # another replica created it first
                return False
            raise
        self._observe(created.spec, seen_at)
        return True

    def _observe(self, spec: client.V1LeaseSpec, seen_at: float) -> None:
        """Remember when the record last changed, by our clock: expiry counts from there."""
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_duration_seconds,
            spec.lease_transitions,
        )
        if record == self._observed:
            return
        previous_holder = self._observed[0] if self._observed else None
        self._observed, self._observed_at = record, seen_at
        if spec.holder_identity and spec.holder_identity != previous_holder:
            self._safe_callback(lambda: self._on_new_leader(spec.holder_identity or ""))

    def _release(self) -> None:
        """Give the lease up so a follower takes it on its next retry rather than after expiry."""
        try:
            lease = self._read()
            spec = lease.spec or client.V1LeaseSpec()
            if spec.holder_identity != self.identity:
                return
            now = _micro_time(self._clock.now())
            lease.spec = client.V1LeaseSpec(
                holder_identity="",
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=spec.lease_transitions,
            )
            self._replace(lease)
            self._log.info("released lease", extra={"lease": self.name, "identity": self.identity})
        except Exception as exc:
            self._log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self._request_timeout
        return max(0.01, min(self._request_timeout, deadline - self._clock.monotonic()))

    def _read(self, timeout: float | None = None) -> client.V1Lease:
        timeout = timeout or self._request_timeout
        return self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)

    def _replace(self, lease: client.V1Lease, timeout: float | None = None) -> client.V1Lease:
        """Update carrying the read resourceVersion: a concurrent writer makes this fail with 409."""
        return self._api.replace_namespaced_lease(
            self.name, self.namespace, lease, _request_timeout=timeout or self._request_timeout
        )

    def _safe_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            self._log.exception("leader-election callback failed", extra={"lease": self.name})
