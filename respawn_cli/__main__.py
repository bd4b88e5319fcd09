"""respawn: inspect TrainingJobs.

respawn status JOB [-n NS] [--kubeconfig K] [--output-dir DIR] [--json]
respawn plot --output-dir DIR [--reference DIR] [--rank 0] -o loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException


def _api(kubeconfig: str | None) -> tuple[client.ApiClient, str]:
    """An API client and the namespace of the current context (in-cluster: the pod's namespace)."""
    try:
        _, context = config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (context or {}).get("context", {}).get("namespace") or "default"
        return config.new_client_from_config(config_file=kubeconfig), namespace
    except (config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig:
            raise
        config.load_incluster_config()
        ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
        return client.ApiClient(), namespace


def _status(args: argparse.Namespace) -> int:
    from respawn_cli.status import gather, render

    try:
        api, default_ns = _api(args.kubeconfig)
    except config.ConfigException as exc:
        print(f"respawn: no usable kubeconfig: {exc}", file=sys.stderr)
        return 1
    try:
        report = gather(api, args.namespace or default_ns, args.job, args.output_dir)
    except ApiException as exc:
        print(f"respawn: {exc.status} {exc.reason}: TrainingJob {args.job}", file=sys.stderr)
        return 1
    finally:
        api.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        sys.stdout.write(render(report))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from respawn_cli.plot import plot

    try:
        summary = plot(args.output_dir, args.output, rank=args.rank, reference=args.reference)
    except ValueError as exc:
        print(f"respawn: {exc}", file=sys.stderr)
        return 1
    line = (
        f"{args.output}: {summary.starts} starts, {summary.failures} failures, "
        f"{summary.steps_redone} steps redone"
    )
    if args.reference is not None:
        line += f"; {summary.mismatched}/{summary.compared} steps differ from the reference"
    print(line)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="respawn", description="Inspect respawn TrainingJobs.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="phase, attempts, failures, restarts, checkpoint and resume of a job")
    s.add_argument("job")
    s.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    s.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config, then in-cluster")
    s.add_argument(
        "--output-dir",
        type=Path,
        help="the job's output dir on the shared volume, as mounted here: adds checkpoints and resumes",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_status)
    q = sub.add_parser("plot", help="loss curve across restarts, to a PNG")
    q.add_argument("--output-dir", type=Path, required=True, help="job output dir (or a steps.jsonl)")
    q.add_argument("--reference", type=Path, help="output dir of an uninterrupted run to draw beneath")
    q.add_argument("--rank", type=int, default=0)
    q.add_argument("-o", "--output", type=Path, default=Path("loss.png"))
    q.set_defaults(func=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
