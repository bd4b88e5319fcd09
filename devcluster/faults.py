"""Fault injection against the node agent: `python -m devcluster fault COMMAND ...`.

    kill NAMESPACE/POD [--signal KILL|TERM|...] [--container C]   signal the container's real process
    oom NAMESPACE/POD [--container C]              SIGKILL, reported as OOMKilled (exit code 137)
    node-not-ready NODE [--kill-pods]              Ready -> Unknown, heartbeats stop; --kill-pods: its
                                                   processes die as on a crashed machine, otherwise they
                                                   keep running as on a partitioned one
    node-ready NODE                                undo node-not-ready
    evict NAMESPACE/POD                            the Eviction API (the API server adds DisruptionTarget)
    cleanup                                        SIGKILL every pod process recorded in the state dir

Process faults need only the state dir (--state-dir or $RESPAWN_DEVCLUSTER_STATE); API faults
use --kubeconfig, else the agent's (from its state dir), else $KUBECONFIG. Each command returns
once its effect is visible (node faults wait for the Node object), so a test can go on at once.
The same operations are plain functions for Python tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from kubernetes import client

from devcluster.kubeapi import Kube, call, wait_until
from devcluster.statedir import STATE_ENV, PidRecord, StateDir


class FaultError(RuntimeError):
    pass


def _split(target: str) -> tuple[str, str]:
    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name:
        raise FaultError(f"expected NAMESPACE/POD, got {target!r}")
    return namespace, name


def find_process(state: StateDir, namespace: str, pod: str, *, container: str | None = None) -> PidRecord:
    """The live container process of a pod (its only one, or the named container's)."""
    live = [r for r in state.pid_records() if r.namespace == namespace and r.pod == pod and r.alive()]
    if container is not None:
        live = [r for r in live if r.container == container]
    if not live:
        what = f"container {container!r} of " if container else ""
        raise FaultError(f"no running process for {what}{namespace}/{pod} in {state.root}")
    if len(live) > 1:
        names = ", ".join(sorted(r.container for r in live))
        raise FaultError(f"{namespace}/{pod} has several running containers ({names}); pass --container")
    return live[0]


def kill(
    state: StateDir, namespace: str, pod: str, *, sig: int = signal.SIGKILL, container: str | None = None
) -> PidRecord:
    """Send `sig` to the container's main process (not its group), as `kill` inside the container would."""
    record = find_process(state, namespace, pod, container=container)
    os.kill(record.pid, sig)
    return record


def oom(state: StateDir, namespace: str, pod: str, *, container: str | None = None) -> PidRecord:
    """What the kernel's OOM killer does to a container: SIGKILL, and the runtime says OOMKilled."""
    record = find_process(state, namespace, pod, container=container)
    pod_dir = state.pod_dir(namespace, pod, record.uid)
    (pod_dir / f"{record.container}.oom").write_text("fault oom\n")
    os.kill(record.pid, signal.SIGKILL)
    return record


def _kube(state: StateDir, kubeconfig: str | None) -> Kube:
    chosen = kubeconfig or state.agent_info().get("kubeconfig") or os.environ.get("KUBECONFIG")
    return Kube(str(chosen) if chosen else None)


def _ready_status(kube: Kube, node: str) -> str | None:
    obj = call(kube.core.read_node, node)
    return next(
        (c["status"] for c in obj.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None
    )


def node_not_ready(
    state: StateDir,
    node: str,
    *,
    kill_pods: bool = False,
    kubeconfig: str | None = None,
    timeout: float = 30.0,
) -> list[PidRecord]:
    """Mark the node down; once the Node shows it, optionally kill its pods' processes."""
    marker = state.node_down_marker(node)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"kill_pods": kill_pods}))
    kube = _kube(state, kubeconfig)
    try:
        wait_until(
            lambda: _ready_status(kube, node) not in ("True", None),
            timeout=timeout,
            what=f"node {node} to become NotReady (is the agent running?)",
        )
    finally:
        kube.close()
    killed = []
    if kill_pods:
        for record in state.pid_records():
            if record.node == node and record.kill_group(signal.SIGKILL):
                killed.append(record)
    return killed


def node_ready(state: StateDir, node: str, *, kubeconfig: str | None = None, timeout: float = 30.0) -> None:
    state.node_down_marker(node).unlink(missing_ok=True)
    kube = _kube(state, kubeconfig)
    try:
        wait_until(
            lambda: _ready_status(kube, node) == "True",
            timeout=timeout,
            what=f"node {node} to become Ready (is the agent running?)",
        )
    finally:
        kube.close()


def evict(namespace: str, pod: str, *, kubeconfig: str | None = None, state: StateDir | None = None) -> None:
    """POST an Eviction, as `kubectl drain` does; PodDisruptionBudgets apply (HTTP 429)."""
    kube = _kube(state, kubeconfig) if state is not None else Kube(kubeconfig or os.environ.get("KUBECONFIG"))
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}}
    try:
        call(kube.core.create_namespaced_pod_eviction, pod, namespace, body)
    except client.ApiException as exc:
        raise FaultError(
            f"eviction of {namespace}/{pod} refused: HTTP {exc.status} {exc.body or exc.reason}"
        ) from exc
    finally:
        kube.close()


def _signal(name: str) -> int:
    text = name.upper()
    if text.isdigit():
        return int(text)
    return int(getattr(signal, text if text.startswith("SIG") else f"SIG{text}"))


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help="the agent's state dir")
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="python -m devcluster fault",
        description=__doc__,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("kill", "signal a pod's container process"),
        ("oom", "OOM-kill a pod's container"),
    ):
        p = commands.add_parser(name, help=help_text, parents=[common])
        p.add_argument("target", metavar="NAMESPACE/POD")
        p.add_argument("--container")
        if name == "kill":
            p.add_argument(
                "--signal", default="KILL", help="name (KILL, TERM, SIGINT) or number; default KILL"
            )
    p = commands.add_parser("node-not-ready", help="make a node NotReady", parents=[common])
    p.add_argument("node")
    p.add_argument("--kill-pods", action="store_true", help="its processes die, as on a crashed machine")
    p = commands.add_parser("node-ready", help="make a node Ready again", parents=[common])
    p.add_argument("node")
    p = commands.add_parser("evict", help="evict a pod through the Eviction API", parents=[common])
    p.add_argument("target", metavar="NAMESPACE/POD")
    commands.add_parser("cleanup", help="kill every pod process recorded in the state dir", parents=[common])
    return parser


def _run(args: argparse.Namespace) -> str:
    kubeconfig = getattr(args, "kubeconfig", None)
    state_dir = getattr(args, "state_dir", None)
    if args.command == "evict":
        namespace, pod = _split(args.target)
        state = StateDir.from_env(state_dir) if state_dir or os.environ.get(STATE_ENV) else None
        evict(namespace, pod, kubeconfig=kubeconfig, state=state)
        return f"evicted {namespace}/{pod}"
    state = StateDir.from_env(state_dir)
    if args.command in ("kill", "oom"):
        namespace, pod = _split(args.target)
        if args.command == "kill":
            record = kill(state, namespace, pod, sig=_signal(args.signal), container=args.container)
        else:
            record = oom(state, namespace, pod, container=args.container)
        return f"{args.command}: {namespace}/{pod} container {record.container} pid {record.pid}"
    if args.command == "node-not-ready":
        killed = node_not_ready(state, args.node, kill_pods=args.kill_pods, kubeconfig=kubeconfig)
        return f"node {args.node} NotReady" + (
            f"; killed {len(killed)} container(s)" if args.kill_pods else ""
        )
    if args.command == "node-ready":
        node_ready(state, args.node, kubeconfig=kubeconfig)
        return f"node {args.node} Ready"
    return f"killed {len(state.kill_leftovers())} process(es)"


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        print(_run(args))
    except (FaultError, ValueError, TimeoutError, OSError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except client.ApiException as exc:
        print(f"error: HTTP {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    return 0
