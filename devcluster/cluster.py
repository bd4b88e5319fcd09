"""`python -m devcluster cluster`: a local cluster for people, in the foreground.

Starts etcd, kube-apiserver and kube-controller-manager, installs the CRDs from deploy/, runs
the node agent, prints the kubeconfig path, and stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from devcluster.local import LocalCluster


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devcluster cluster", description=__doc__)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".devcluster"),
        help="state directory (certificates, etcd data, logs, pod volumes)",
    )
    parser.add_argument("--nodes", default="node-0,node-1", help="comma-separated node names to register")
    parser.add_argument(
        "--no-controller-manager",
        action="store_true",
        help="do not run kube-controller-manager (no garbage collection, as in the tests)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    nodes = tuple(n for n in args.nodes.split(",") if n)
    with LocalCluster(
        workdir=args.workdir, nodes=nodes, controller_manager=not args.no_controller_manager
    ) as cluster:
        print(f"API server:  {cluster.control_plane.server_url}")
        print(f"CRDs:        {', '.join(cluster.crds)}")
        print(f"nodes:       {', '.join(nodes)} (node agent log: {cluster.agent_log_path})")
        print(f"kubeconfig:  {cluster.kubeconfig_path}")
        print(f"\n  export KUBECONFIG={cluster.kubeconfig_path}\n  kubectl get nodes\n")
        print("Ctrl-C stops the cluster.", flush=True)
        while not stop.wait(1.0):
            if not cluster.agent_alive():
                print(f"node agent exited; see {cluster.agent_log_path}", file=sys.stderr)
                return 1
    return 0
