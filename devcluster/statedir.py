"""The node agent's state directory: the one place the agent, the fault commands and the test
fixture agree on.

Layout (all under the state dir)::

    agent.json                       pid of the agent, its kubeconfig, its node names
    hosts/<namespace>                the /etc/hosts every pod of that namespace sees
    nodes/<node>.down                marker: the node is NotReady (written by `fault node-not-ready`)
    pods/<ns>_<name>_<uid>/          one directory per pod
        <container>.log              stdout+stderr of the container, appended across restarts
        <container>.pid              pid record while the process may be alive (see PidRecord)
        <container>.oom              marker: the next exit of this container is reported as OOMKilled
        <container>.termination-log  bind-mounted at the container's terminationMessagePath
        <container>.spec.json        what the shim is asked to do
        volumes/<volume>/            emptyDir, configMap, secret, projected and downwardAPI volumes
    volumes/<namespace>/<claim>/     persistentVolumeClaim volumes (unless --pvc-root says otherwise)

Pid records exist so that no pod process survives the agent, even a SIGKILLed one: whoever
finds a record whose process is still alive (the next agent, the fixture, a person running
`fault cleanup`) can kill its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ENV = "RESPAWN_DEVCLUSTER_STATE"


@dataclass(frozen=True)
class PidRecord:
    """A container process: it is the leader of its own session and process group (pgid == pid).

    `start_time` (clock ticks since boot, /proc/<pid>/stat field 22) tells a live record from a
    recycled pid.
    """

    pid: int
    start_time: int
    namespace: str
    pod: str
    uid: str
    container: str
    node: str

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time

    def group_members(self, table: list[tuple[int, int, int]] | None = None) -> list[int]:
        """Live processes still in this container's process group (children included).

        A member started before the leader cannot belong to it: its pgid is a recycled number.
        """
        rows = _proc_table() if table is None else table
        return [pid for pid, pgid, start in rows if pgid == self.pid and start >= self.start_time]

    def kill_group(self, sig: int = signal.SIGKILL) -> bool:
        """Signal every live process of the group; True if there was one."""
        members = self.group_members()
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return bool(members)


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _proc_table() -> list[tuple[int, int, int]]:
    return list(_iter_proc_table())


def _iter_proc_table() -> Iterator[tuple[int, int, int]]:
    """(pid, pgid, start_time) of every live, non-zombie process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), int(fields[2]), int(fields[19])


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_env(cls, value: str | os.PathLike[str] | None) -> StateDir:
        chosen = value or os.environ.get(STATE_ENV)
        if not chosen:
            raise ValueError(f"no state dir: pass --state-dir or set {STATE_ENV}")
        return cls(Path(chosen))

    # -- layout ---------------------------------------------------------------------------------

    @property
    def agent_file(self) -> Path:
        return self.root / "agent.json"

    def hosts_file(self, namespace: str) -> Path:
        return self.root / "hosts" / namespace

    def node_down_marker(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.down"

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.root / "pods" / f"{namespace}_{name}_{uid}"

    def pod_dirs(self, namespace: str, name: str) -> list[Path]:
        """Directories of every pod instance ever run under this name, oldest first."""
        pods = self.root / "pods"
        if not pods.is_dir():
            return []
        found = [p for p in pods.iterdir() if p.name.startswith(f"{namespace}_{name}_")]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    # -- agent ----------------------------------------------------------------------------------

    def write_agent_info(self, *, pid: int, kubeconfig: str | None, nodes: list[str]) -> None:
        write_atomic(self.agent_file, json.dumps({"pid": pid, "kubeconfig": kubeconfig, "nodes": nodes}))

    def agent_info(self) -> dict[str, object]:
        try:
            info: dict[str, object] = json.loads(self.agent_file.read_text())
        except FileNotFoundError:
            return {}
        return info

    # -- processes ------------------------------------------------------------------------------

    def write_pid(self, pod_dir: Path, record: PidRecord) -> Path:
        path = pod_dir / f"{record.container}.pid"
        write_atomic(path, json.dumps(asdict(record)))
        return path

    def pid_records(self) -> list[PidRecord]:
        pods = self.root / "pods"
        if not pods.is_dir():
            return []
        records = []
        for path in pods.glob("*/*.pid"):
            try:
                records.append(PidRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return records

    def live_processes(self) -> list[tuple[PidRecord, list[int]]]:
        """Records that still have live processes in their group, with those pids."""
        found = []
        table = _proc_table()
        for record in self.pid_records():
            members = record.group_members(table)
            if members:
                found.append((record, members))
        return found

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process group recorded here; return the pids that were alive."""
        killed: list[int] = []
        for record, members in self.live_processes():
            record.kill_group(signal.SIGKILL)
            killed.extend(members)
        return killed


def write_atomic(path: Path, text: str | bytes, *, mode: int = 0o644) -> None:
    """Replace `path` by rename, so a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
