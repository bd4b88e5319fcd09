"""TLS for the health/metrics port: a server context from a certificate and key on disk, loaded
again when the certificate file changes (cert-manager and kubelet rotate them in place), so a
renewed certificate is served without a restart."""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

RECHECK_SECONDS = 10.0  # how often the certificate file's modification time is looked at


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class ReloadingContext:
    """`current()` is the context for the next connection; a broken new pair keeps the old one."""

    def __init__(self, cert: Path, key: Path, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._cert, self._key, self._clock = cert, key, clock
        self._lock = threading.Lock()
        self._stamp = self._mtime()
        self._context = server_context(cert, key)  # a bad pair at start is an error, not a fallback
        self._checked = clock()

    def _mtime(self) -> tuple[int, int]:
        return os.stat(self._cert).st_mtime_ns, os.stat(self._key).st_mtime_ns

    def current(self) -> ssl.SSLContext:
        with self._lock:
            if self._clock() - self._checked >= RECHECK_SECONDS:
                self._checked = self._clock()
                try:
                    stamp = self._mtime()
                    if stamp != self._stamp:
                        self._context, self._stamp = server_context(self._cert, self._key), stamp
                except (OSError, ssl.SSLError):
                    pass  # mid-rotation or broken: keep serving the pair that worked
            return self._context
