"""Where the store is (the controller's RESPAWN_STORE_* variables) and a boto3 client for it.

The client is built with explicit credentials and bounded timeouts and retries: boto3's own credential
search would otherwise fall through to the instance metadata service, which hangs where there is none.
A missing bucket is refused, never created: a mistyped name would otherwise fill a bucket nobody
looks at, with permissions the trainer should not need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respawn_protocol import contract
from respawn_protocol.layout import rank_dir

CONNECT_TIMEOUT = 5.0
STRATEGY_FOLDER = "strategy"
READ_TIMEOUT = 30.0
ATTEMPTS = 3  # per request, botocore's standard retry mode (throttling, 5xx, connection errors)


class StoreError(RuntimeError):
    """The store cannot be used: its message says why in words a user can act on."""


@dataclass(frozen=True)
class Settings:
    endpoint: str
    bucket: str
    prefix: str
    region: str
    access_key: str = ""
    secret_key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings | None:
        """None without RESPAWN_STORE_ENDPOINT: no store. Settings that cannot work still come back
        (`problem` says why), so the trainer can report them and train on without the store."""
        endpoint = environ.get(contract.STORE_ENDPOINT, "")
        if not endpoint:
            return None
        return cls(
            endpoint=endpoint,
            bucket=environ.get(contract.STORE_BUCKET, ""),
            prefix=environ.get(contract.STORE_PREFIX, "").strip("/"),
            region=environ.get(contract.STORE_REGION) or "us-east-1",
            access_key=environ.get(contract.STORE_ACCESS_KEY_ID, ""),
            secret_key=environ.get(contract.STORE_SECRET_ACCESS_KEY, ""),
        )

    def problem(self) -> str | None:
        if not self.endpoint.startswith(("http://", "https://")):
            return f"{contract.STORE_ENDPOINT}={self.endpoint!r}: not an http(s):// URL"
        if not self.bucket:
            return f"{contract.STORE_BUCKET} is not set"
        if not self.access_key or not self.secret_key:
            return f"{contract.STORE_ACCESS_KEY_ID} / {contract.STORE_SECRET_ACCESS_KEY} are not set"
        return None

    def key(self, rank: int, name: str) -> str:
        """The object of `name` in rank_N/, as output_dir/checkpoint/rank_N/name is laid out."""
        folder = rank_dir_name(rank)
        return f"{self.prefix}/{folder}/{name}" if self.prefix else f"{folder}/{name}"

    def strategy_key(self, world_size: int, rank: int) -> str:
        """A rank's strategy file (merge.py) of a `world_size`-rank gang: kept apart per gang size, so
        a resized gang's never replaces the one its predecessor's steps need."""
        name = f"{STRATEGY_FOLDER}/{world_size}/ckpt_strategy_rank_{rank}.json"
        return f"{self.prefix}/{name}" if self.prefix else name

    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"


def rank_dir_name(rank: int) -> str:
    return rank_dir(Path(), rank).name


def connect(settings: Settings) -> Any:
    """A boto3 S3 client, and the bucket checked: StoreError with the reason if it cannot be used."""
    problem = settings.problem()
    if problem:
        raise StoreError(problem)
    import boto3  # here: only runs with a store pay for the import
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        config=Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "max_attempts": ATTEMPTS},
            s3={"addressing_style": "path"},  # what on-premises stores (Ceph RGW, SeaweedFS) serve
            # Checksums only where S3 requires them: stores other than AWS reject the newer trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    try:
        client.head_bucket(Bucket=settings.bucket)
    except Exception as e:
        raise StoreError(describe(e, settings)) from e
    return client


def describe(error: BaseException, settings: Settings) -> str:
    """One line a user can act on, for what boto3 raised."""
    where = settings.where()
    try:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    except ImportError:  # boto3 missing from the image: say what failed, not why botocore is absent
        return f"{where}: {type(error).__name__}: {error}"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket"):
            # Refused, never created: a mistyped name would fill a bucket nobody looks at.
            return f"bucket {settings.bucket!r} does not exist at {settings.endpoint} (create it first)"
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            return f"access denied to {where}: check the credentials ({code or status})"
        return f"{where}: {code or status}: {error}"
    if isinstance(error, EndpointConnectionError):
        return f"cannot reach {settings.endpoint}: {error}"
    if isinstance(error, NoCredentialsError):
        return f"{where}: no credentials"
    return f"{where}: {type(error).__name__}: {error}"
