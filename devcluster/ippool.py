"""Pod IPs from a loopback range: every pod gets its own 127.x.y.z, unique while the pod exists.

Linux routes all of 127.0.0.0/8 to `lo`, so a process can bind and connect to any of these
addresses without configuration. Addresses are handed out round-robin, so a freed address is
the last to be reused and a stale connection attempt does not reach a newer pod.
"""

from __future__ import annotations

import ipaddress
import threading


class IPPoolExhausted(RuntimeError):
    pass


class IPPool:
    def __init__(self, network: str) -> None:
        self._network = ipaddress.ip_network(network)
        self._by_owner: dict[str, str] = {}
        self._taken: set[str] = set()
        self._cursor = 0
        self._lock = threading.Lock()

    def reserve(self, owner: str, ip: str) -> bool:
        """Keep `ip` for `owner` (a pod found running when the agent starts); False if not ours or taken."""
        with self._lock:
            if self._by_owner.get(owner) == ip:
                return True
            if ip in self._taken or ipaddress.ip_address(ip) not in self._network:
                return False
            self._by_owner[owner] = ip
            self._taken.add(ip)
            return True

    def allocate(self, owner: str) -> str:
        with self._lock:
            if owner in self._by_owner:
                return self._by_owner[owner]
            hosts = self._network.num_addresses - 2
            for _ in range(hosts):
                self._cursor = self._cursor % hosts + 1
                ip = str(self._network.network_address + self._cursor)
                if ip not in self._taken:
                    self._by_owner[owner] = ip
                    self._taken.add(ip)
                    return ip
            raise IPPoolExhausted(f"no free address in {self._network}")

    def release(self, owner: str) -> None:
        with self._lock:
            ip = self._by_owner.pop(owner, None)
            if ip is not None:
                self._taken.discard(ip)
