"""The /etc/hosts that pod processes see: pod hostnames and headless-service names on loopback.

There is no cluster DNS here, so name resolution goes through /etc/hosts, which the shim
bind-mounts read-only from `<state>/hosts/<namespace>`. Pods of one gang start at slightly
different times, so the files must change under processes that are already running:

* A bind mount pins the inode, so a file replaced by rename would never be seen: files are
  rewritten in place.
* A reader (glibc re-reads /etc/hosts on every lookup, in 4 KiB reads) must never see a
  half-written file. So each pod owns a fixed-size *slot* (one line padded with spaces) at a
  fixed, aligned offset; adding or removing a pod is a single pwrite of that slot, and the file
  is never truncated. Whatever mix of old and new slots a reader gets is a valid file: every
  other line is untouched, and the slot being written is either the old or the new line
  unless the read lands inside that one 1 KiB memcpy.

One file per namespace, as DNS search paths would have it: the qualified names
(`<host>.<subdomain>.<ns>.svc[.cluster.local]`) of every pod appear in every file; the short
ones (`<host>`, `<host>.<subdomain>`, the pod name, the service name) only in the pod's own
namespace, so equal hostnames in two namespaces do not clash.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

SLOT_SIZE = 1024

_HEADER = """\
# Kubernetes-managed hosts file (devcluster node agent).
# One padded line per running pod, rewritten in place; do not edit.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class HostsEntry:
    namespace: str
    pod_name: str
    ip: str
    hostname: str
    subdomain: str | None
    cluster_domain: str = "cluster.local"

    def names(self, *, for_namespace: str) -> list[str]:
        """Most important first: a line too long for its slot loses names from the end."""
        own = for_namespace == self.namespace
        names: list[str] = []
        if self.subdomain:
            svc = f"{self.subdomain}.{self.namespace}.svc"
            host = f"{self.hostname}.{self.subdomain}"
            names += [
                f"{host}.{self.namespace}.svc.{self.cluster_domain}",
                f"{host}.{self.namespace}.svc",
                f"{host}.{self.namespace}",
            ]
            if own:
                names += [host, self.hostname, self.pod_name, self.subdomain]
            names += [f"{svc}.{self.cluster_domain}", svc]
        elif own:
            names += [self.hostname, self.pod_name]
        return list(dict.fromkeys(names))

    def line(self, *, for_namespace: str) -> str:
        names = self.names(for_namespace=for_namespace)
        if not names:
            return ""
        line = f"{self.ip}\t{' '.join(names)}"
        while len(line) > SLOT_SIZE - 1 and len(names) > 1:
            names.pop()
            line = f"{self.ip}\t{' '.join(names)}"
        return line[: SLOT_SIZE - 1]


class _SlotFile:
    def __init__(self, path: Path, header: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # Slots start at a multiple of SLOT_SIZE, so none straddles a 4 KiB boundary: stdio reads
        # the file in 4 KiB chunks, and a slot read by two read() calls could mix two versions.
        raw = header.encode()
        self._base = -(-len(raw) // SLOT_SIZE) * SLOT_SIZE
        os.pwrite(self._fd, raw[:-1] + b" " * (self._base - len(raw)) + b"\n", 0)
        self._slots: dict[str, int] = {}
        self._lines: dict[str, str] = {}
        self._free: list[int] = []
        self._count = 0

    def put(self, key: str, line: str) -> None:
        if not line:
            self.drop(key)
            return
        if self._lines.get(key) == line:
            return
        slot = self._slots.get(key)
        if slot is None:
            if self._free:
                slot = self._free.pop(0)
            else:
                slot, self._count = self._count, self._count + 1
            self._slots[key] = slot
        self._lines[key] = line
        self._write(slot, line)

    def drop(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        self._lines.pop(key, None)
        if slot is not None:
            self._write(slot, "")
            self._free.append(slot)
            self._free.sort()

    def _write(self, slot: int, line: str) -> None:
        data = line.encode()[: SLOT_SIZE - 1].ljust(SLOT_SIZE - 1) + b"\n"
        os.pwrite(self._fd, data, self._base + slot * SLOT_SIZE)

    def close(self) -> None:
        os.close(self._fd)


class HostsTable:
    """All pods' entries, mirrored into one slot file per namespace that has pods here."""

    def __init__(self, directory: Path, *, extra_lines: tuple[str, ...] = ()) -> None:
        self._dir = directory
        self._header = _HEADER + "".join(f"{line}\n" for line in extra_lines)
        self._entries: dict[str, HostsEntry] = {}
        self._files: dict[str, _SlotFile] = {}
        self._lock = threading.Lock()

    def path(self, namespace: str) -> Path:
        """The file to mount for a pod of `namespace` (created, with every current entry)."""
        with self._lock:
            return self._file(namespace).path

    def put(self, key: str, entry: HostsEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._file(entry.namespace)
            for namespace, f in self._files.items():
                f.put(key, entry.line(for_namespace=namespace))

    def remove(self, key: str) -> None:
        with self._lock:
            if self._entries.pop(key, None) is not None:
                for f in self._files.values():
                    f.drop(key)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def _file(self, namespace: str) -> _SlotFile:
        f = self._files.get(namespace)
        if f is None:
            f = self._files[namespace] = _SlotFile(self._dir / namespace, self._header)
            for key, entry in self._entries.items():
                f.put(key, entry.line(for_namespace=namespace))
        return f
