"""`spec.checkpointStore` (an S3-compatible object store the trainers upload their commits to and
predownload from) and `status.checkpointStore` (how far the uploads are).

The controller never reads the credentials: the Secret is named, and the workers get its two keys
through secretKeyRef (respawn_protocol/contract.py), so a tenant's keys stay in the tenant's
namespace and the controller needs no access to Secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from controller.api.paths import InvalidSpec

# S3's bucket naming rules (lowercase letters, digits, dots and hyphens; 3-63; letter or digit at
# both ends), as the CRD's schema says them too.
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
REGION = re.compile(r"^[a-z0-9-]{1,64}$")
MAX_PREFIX = 512
MAX_ERROR = 200


@dataclass(frozen=True)
class CheckpointStore:
    endpoint: str  # http(s)://host[:port]
    bucket: str
    prefix: str  # no leading or trailing "/"; default <namespace>/<name>
    credentials_secret: str  # a Secret of the job's namespace: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    region: str | None = None


@dataclass(frozen=True)
class StoreStatus:
    """The current attempt's uploads, summed over its ranks (core/reports.py)."""

    step: int | None = None  # newest step every rank has in the store
    pending: int = 0  # the most local commits a rank has not uploaded yet
    lag_seconds: float = 0.0  # the longest any of them has waited
    failures: int = 0  # the most failed tries in a row of any rank
    error: str | None = None  # the last failure's message (the lowest failing rank's)


def _endpoint(value: Any) -> str:
    where = "spec.checkpointStore.endpoint"
    if not isinstance(value, str):
        raise InvalidSpec(f"{where} must be an http:// or https:// URL, got {value!r}")
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InvalidSpec(f"{where} must be an http:// or https:// URL with a host, got {value!r}")
    if url.username or url.password:
        raise InvalidSpec(f"{where} must not carry credentials: name a Secret in credentialsSecret")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise InvalidSpec(f"{where} must be scheme://host[:port] only; the bucket and prefix are fields")
    try:
        url.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise InvalidSpec(f"{where} has an invalid port: {value!r}") from None
    return value.rstrip("/")


def _prefix(value: Any, default: str) -> str:
    where = "spec.checkpointStore.prefix"
    prefix = default if value is None else value
    if not isinstance(prefix, str) or not prefix or len(prefix) > MAX_PREFIX:
        raise InvalidSpec(f"{where} must be a non-empty string of at most {MAX_PREFIX} characters")
    if any(s in ("", ".", "..") or not PREFIX_SEGMENT.match(s) for s in prefix.split("/")):
        raise InvalidSpec(
            f"{where} must be segments of letters, digits, '.', '_' and '-' joined by '/', with no"
            f" empty, '.' or '..' segment and no leading or trailing '/'; got {prefix!r}"
        )
    return prefix


def parse_store(value: Any, *, namespace: str, name: str) -> CheckpointStore | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidSpec("spec.checkpointStore must be an object")
    bucket, secret, region = value.get("bucket"), value.get("credentialsSecret"), value.get("region")
    if not isinstance(bucket, str) or not BUCKET.match(bucket) or ".." in bucket:
        raise InvalidSpec(f"spec.checkpointStore.bucket must be an S3 bucket name, got {bucket!r}")
    if not isinstance(secret, str) or len(secret) > 253 or not SECRET_NAME.match(secret):
        raise InvalidSpec(
            f"spec.checkpointStore.credentialsSecret must name a Secret in the job's namespace: {secret!r}"
        )
    if region is not None and (not isinstance(region, str) or not REGION.match(region)):
        raise InvalidSpec(f"spec.checkpointStore.region must be a region name, got {region!r}")
    return CheckpointStore(
        endpoint=_endpoint(value.get("endpoint")),
        bucket=bucket,
        prefix=_prefix(value.get("prefix"), f"{namespace}/{name}"),
        credentials_secret=secret,
        region=region,
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_store_status(value: Any) -> StoreStatus | None:
    if not isinstance(value, dict):
        return None
    step, lag, error = value.get("step"), value.get("lagSeconds"), value.get("lastError")
    return StoreStatus(
        step=step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None,
        pending=_count(value.get("pendingCommits")),
        lag_seconds=float(lag)
        if isinstance(lag, int | float) and not isinstance(lag, bool) and lag >= 0
        else 0.0,
        failures=_count(value.get("failures")),
        error=error[:MAX_ERROR] if isinstance(error, str) else None,
    )


def store_status_to_dict(status: StoreStatus) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pendingCommits": status.pending,
        "lagSeconds": round(status.lag_seconds, 1),
        "failures": status.failures,
    }
    if status.step is not None:
        body["step"] = status.step
    if status.error:
        body["lastError"] = status.error[:MAX_ERROR]
    return body
