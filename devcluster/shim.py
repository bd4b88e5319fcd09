"""Exec shim: `python -m devcluster.shim SPEC_JSON ERROR_FD`, started by the pod runner.

It turns the current process into a pod's container and then *becomes* the container's
command (execvpe), so the pid the agent recorded is the container process itself and signals
sent to it hit the workload directly:

1. a private mount namespace and UTS namespace (unshare; Python 3.11 has no os.unshare),
   with every mount made private so nothing done here propagates back to the host;
2. the pod's volumes bind-mounted at their mountPath (mountpoints created when missing),
   the agent's hosts file bind-mounted read-only at /etc/hosts;
3. the pod's hostname; the container's working directory;
4. PR_SET_PDEATHSIG, so the container dies with the agent thread that started it;
5. execvpe. ERROR_FD is close-on-exec: the agent reading EOF on it means exec succeeded, a JSON
   line means the container could not start (reported as StartError, exit code 128).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128

_libc: Any = None


def _call(name: str, *args: object) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args!r}: {os.strerror(errno)}")


def _bind(source: str, target: str, *, read_only: bool, is_file: bool) -> None:
    if is_file:
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
            with open(target, "a"):
                pass
    else:
        os.makedirs(target, exist_ok=True)
    _call("mount", source.encode(), target.encode(), None, MS_BIND | MS_REC, None)
    if read_only:
        _call("mount", b"none", target.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)


def become_container(spec: dict[str, Any]) -> None:
    """Everything up to (not including) exec; raises on any failure."""
    _call("unshare", CLONE_NEWNS | CLONE_NEWUTS)
    _call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    for m in spec.get("mounts", []):
        if not os.path.exists(m["source"]):
            raise FileNotFoundError(f"volume source {m['source']} for {m['target']} does not exist")
        _bind(
            m["source"], m["target"], read_only=m.get("read_only", False), is_file=os.path.isfile(m["source"])
        )
    if spec.get("hosts_file"):
        _bind(spec["hosts_file"], "/etc/hosts", read_only=True, is_file=True)
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        _call("sethostname", name, len(name))
    cwd = spec.get("cwd") or "/"
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)
    _call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if spec.get("parent_pid") and os.getppid() != spec["parent_pid"]:
        raise RuntimeError("the node agent exited before the container started")


def main(argv: list[str]) -> int:
    spec_path, error_fd = argv[0], int(argv[1])
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        become_container(spec)
        # Signal dispositions are inherited from the agent's Python (SIGPIPE ignored, SIGINT
        # handled); restore the defaults a freshly started container process would have.
        for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.set_inheritable(error_fd, False)
        command = spec["argv"]
        try:
            os.execvpe(command[0], command, spec["env"])
        except FileNotFoundError:
            raise RuntimeError(f'exec: "{command[0]}": executable file not found in $PATH') from None
        except OSError as exc:
            raise RuntimeError(f'exec: "{command[0]}": {exc.strerror}') from None
    except BaseException as exc:  # report anything, the agent decides what it means
        message = str(exc) if isinstance(exc, (OSError, RuntimeError)) else f"{type(exc).__name__}: {exc}"
        try:
            os.write(error_fd, json.dumps({"error": message}).encode())
        finally:
            os._exit(START_ERROR_EXIT)
    return START_ERROR_EXIT  # not reached: execvpe does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
