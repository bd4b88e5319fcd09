"""A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, built by
devcluster/seaweedfs.py) on loopback ports, with static credentials generated for the session.

`object_store` (session): the running server; `store_bucket`: a fresh bucket per test. Loaded as a
plugin by tests/conftest.py. The server is one process, stopped at the end
of the session (SIGKILL); it dies with the test process too (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devcluster.controlplane import _die_with_parent, free_port
from devcluster.seaweedfs import BINARY, ensure_seaweedfs
from respawn_protocol import contract

START_DEADLINE = 180.0  # a loaded 2-core machine: the master, volume, filer and S3 servers in turn
_PORTS = ("master", "volume", "filer", "s3")


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    access_key: str
    secret_key: str
    workdir: Path

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 2},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def env(self, bucket: str, prefix: str = "job") -> dict[str, str]:
        """What the controller puts on a trainer's pod for spec.checkpointStore."""
        return {
            contract.STORE_ENDPOINT: self.endpoint,
            contract.STORE_BUCKET: bucket,
            contract.STORE_PREFIX: prefix,
            contract.STORE_ACCESS_KEY_ID: self.access_key,
            contract.STORE_SECRET_ACCESS_KEY: self.secret_key,
        }


def _command(binary: Path, workdir: Path, ports: dict[str, tuple[int, int]], config: Path) -> list[str]:
    args = {
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        "dir": str(workdir / "data"),
        "master.volumeSizeLimitMB": "64",  # volumes are preallocated by nothing, but stay small
        "volume.max": "256",  # each bucket is a collection of its own volumes (7 grown at a time); sparse
        "volume.preStopSeconds": "0",  # a test store: no grace for clients at the stop
        "master.telemetry": "false",  # no network beyond loopback
        "s3": "true",
        "s3.config": str(config),
        "s3.autoCreateBucket": "false",  # a missing bucket must stay missing (the trainer refuses it)
        "s3.iam": "false",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        "filer.localSocket": str(workdir / "filer.sock"),
        "s3.localSocket": str(workdir / "s3.sock"),
    }
    for name, (port, grpc) in ports.items():
        args[f"{name}.port"] = str(port)
        args[f"{name}.port.grpc"] = str(grpc)
    # -logdir: glog's files would otherwise land in the system's temp directory, outliving the test.
    return [str(binary), f"-logdir={workdir}", "server", *(f"-{k}={v}" for k, v in args.items())]


def _wait_ready(store: ObjectStore, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Up means an object can be written: the S3 gateway answers and a volume server has registered."""
    client = store.client()
    deadline = time.monotonic() + START_DEADLINE
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; see {log}")
        try:
            if not any(b["Name"] == "ready" for b in client.list_buckets().get("Buckets", ())):
                client.create_bucket(Bucket="ready")
            client.put_object(Bucket="ready", Key="probe", Body=b"ok")
            return
        except Exception as e:
            last = e
        time.sleep(0.25)
    raise RuntimeError(f"SeaweedFS not ready after {START_DEADLINE:.0f}s ({last}); see {log}")


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[ObjectStore]:
    """A SeaweedFS S3 server under `workdir` (empty) for the duration of the block."""
    binary = ensure_seaweedfs() / BINARY
    (workdir / "data").mkdir(parents=True)
    access_key, secret_key = "test" + secrets.token_hex(8), secrets.token_hex(20)  # this server only
    identity = {
        "name": "respawn-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],  # Admin: the fixture creates buckets
    }
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {name: (free_port(), free_port()) for name in _PORTS}  # (HTTP, gRPC)
    store = ObjectStore(f"http://127.0.0.1:{ports['s3'][0]}", access_key, secret_key, workdir)
    log = workdir / "weed.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            _command(binary, workdir, ports, config),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_ready(store, proc, log)
        yield store
    finally:
        # SIGKILL at once: weed's own stop keeps its parts reconnecting to each other for 10 s and
        # more, and nothing of a test store's data needs to survive.
        proc.kill()
        proc.wait()
        # `weed server` puts a socket per gRPC port in /tmp whatever TMPDIR says (command/server.go).
        for name, (_, grpc) in ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{grpc}.sock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture
def store_bucket(object_store: ObjectStore, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket for this test."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:8]}"
    object_store.client().create_bucket(Bucket=name)
    return name


def listing(client: Any, bucket: str) -> dict[str, int]:
    """Every object in the bucket and its size."""
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", ())})
    return out


def remote_metas(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Each rank folder's meta.json in the bucket, parsed: {"<prefix>/rank_N": meta}."""
    return {
        key.rsplit("/", 1)[0]: json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in listing(client, bucket)
        if key.endswith("/meta.json")
    }


def assert_metas_name_only_whole_objects(client: Any, bucket: str) -> None:
    """The store's invariant: every record of every meta.json names an object of its recorded size."""
    objects = listing(client, bucket)
    for folder, meta in remote_metas(client, bucket).items():
        for record in meta["checkpoints"]:
            key = f"{folder}/{record['file']}"
            assert objects.get(key) == record["size"], (
                key,
                objects.get(key),
                record["size"],
                sorted(objects),
            )
