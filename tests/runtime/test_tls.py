"""HTTPS on the health/metrics port (controller/runtime/tls.py): probes and metrics answer over TLS
only, a client that never handshakes holds up nobody, and a rotated certificate is served without
a restart (a broken one is not)."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from controller.runtime.health import HealthServer
from controller.runtime.tls import RECHECK_SECONDS, ReloadingContext
from tests.support.poll import wait_for


def write_pair(directory: Path, common_name: str) -> Path:
    """A self-signed certificate for 127.0.0.1 in tls.crt / tls.key; returns the certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "tls.crt"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HealthServer, Path, Clock]]:
    clock = Clock()
    write_pair(tmp_path, "first")
    tls = ReloadingContext(tmp_path / "tls.crt", tmp_path / "tls.key", clock=clock)
    server = HealthServer(
        host="127.0.0.1", port=0, registry=CollectorRegistry(), request_timeout=1.0, tls=tls
    )
    server.start()
    yield server, tmp_path, clock
    server.stop()


def https_get(port: int, path: str, cafile: Path) -> tuple[int, str]:
    """(status, the server certificate's common name)."""
    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket)
        peer = connection.sock.getpeercert() or {}
        subject: Any = peer.get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        connection.request("GET", path)
        return connection.getresponse().status, str(names[0])
    finally:
        connection.close()


def test_probes_and_metrics_answer_over_tls_only(served: tuple[HealthServer, Path, Clock]) -> None:
    server, directory, _ = served
    first = directory / "first.pem"
    first.write_bytes((directory / "tls.crt").read_bytes())
    assert https_get(server.port, "/healthz", first) == (200, "first")
    assert https_get(server.port, "/metrics", first)[0] == 200
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse()
    plain.close()


def test_clients_that_never_handshake_hold_up_nobody(served: tuple[HealthServer, Path, Clock]) -> None:
    server, directory, _ = served
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    try:
        # More than the connection cap: those past it are closed, the others time out in their
        # handshake after the request timeout (1 s here); then a real client gets through.
        def answered() -> bool:
            try:
                return https_get(server.port, "/readyz", directory / "tls.crt")[0] == 200
            except (OSError, http.client.HTTPException):
                return False

        wait_for("an HTTPS answer despite 50 silent connections", answered, 30)
        assert threading.active_count() < 60
    finally:
        for sock in silent:
            sock.close()


def test_a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not(
    served: tuple[HealthServer, Path, Clock],
) -> None:
    server, directory, clock = served
    first = directory / "first.pem"
    first.write_bytes((directory / "tls.crt").read_bytes())
    write_pair(directory, "second")
    stamp = time.time() + 5
    os.utime(directory / "tls.crt", (stamp, stamp))
    second = directory / "second.pem"
    second.write_bytes((directory / "tls.crt").read_bytes())
    assert https_get(server.port, "/healthz", first) == (200, "first"), "not looked at before RECHECK_SECONDS"
    clock.now += RECHECK_SECONDS
    assert https_get(server.port, "/healthz", second) == (200, "second")

    (directory / "tls.key").write_text("not a key\n")
    stamp += 5
    os.utime(directory / "tls.crt", (stamp, stamp))
    os.utime(directory / "tls.key", (stamp, stamp))
    clock.now += RECHECK_SECONDS
    assert https_get(server.port, "/healthz", second) == (200, "second"), (
        "a broken pair keeps the working one"
    )


def test_the_command_line_takes_the_pair_and_refuses_half_of_it(tmp_path: Path) -> None:
    from controller.__main__ import parse_args
    from controller.app import _tls

    cert = write_pair(tmp_path, "cli")
    _, settings = parse_args(["--tls-cert-file", str(cert), "--tls-key-file", str(tmp_path / "tls.key")])
    assert isinstance(_tls(settings), ReloadingContext)
    _, half = parse_args(["--tls-cert-file", str(cert)])
    with pytest.raises(ValueError, match="go together"):
        _tls(half)
