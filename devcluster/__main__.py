"""`python -m devcluster COMMAND`: assets | cluster | agent | fault."""

from __future__ import annotations

import sys

USAGE = """usage: python -m devcluster COMMAND [ARGS]

commands:
  assets   build or find the pinned etcd / kube-apiserver / helm; print their directory
  cluster  run a local control plane and node agent in the foreground (Ctrl-C stops everything)
  agent    run the node agent against an existing API server
  fault    inject a fault: kill a pod's process, OOM-kill it, evict it, mark a node NotReady
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "assets":
        from devcluster import assets

        return assets.main(rest)
    if command == "cluster":
        from devcluster import cluster

        return cluster.main(rest)
    if command == "agent":
        from devcluster import nodeagent

        return nodeagent.main(rest)
    if command == "fault":
        from devcluster import faults

        return faults.main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
