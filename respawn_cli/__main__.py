"""respawn: inspect TrainingJobs.

respawn status JOB [-n NS] [--kubeconfig K] [--output-dir DIR] [-o text|json]
respawn plot --output-dir DIR [--reference DIR] [--rank N ... | --all-ranks] [--x step|time]
             -o loss.{png,svg,pdf}

Whatever goes wrong ends in one line on stderr and an exit code of respawn_cli/errors.py's table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from respawn_cli.errors import CliError, Exit, one_line

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, pointing at --help, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(Exit.USAGE)


def _api(kubeconfig: str | None) -> tuple[ApiClient, str]:
    """An API client and the namespace of the current context (in a pod: the pod's namespace)."""
    import yaml
    from kubernetes import client, config

    try:
        _, context = config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (context or {}).get("context", {}).get("namespace") or "default"
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return _client(configuration), namespace
    except (config.ConfigException, OSError, yaml.YAMLError, TypeError, AttributeError, KeyError) as exc:
        explicit = kubeconfig or os.environ.get("KUBECONFIG")
        if explicit or Path("~/.kube/config").expanduser().exists():
            where = explicit or "~/.kube/config"
            paths = [Path(p).expanduser() for p in where.split(os.pathsep) if p]
            why = _why(exc) if any(p.exists() for p in paths) else "no such file"
            raise CliError(Exit.NO_CONFIG, f"kubeconfig {where} cannot be used: {why}") from exc
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise CliError(
            Exit.NO_CONFIG,
            "no kubeconfig ($KUBECONFIG, ~/.kube/config or --kubeconfig) and not running in a pod",
        ) from exc
    namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else "default"
    return _client(configuration), namespace


def _client(configuration: Configuration) -> ApiClient:
    from kubernetes import client

    # One retry, not urllib3's default three with backoff: a refused connection is told in
    # milliseconds, not seconds, as kubectl tells it.
    configuration.retries = 1
    return client.ApiClient(configuration)


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = one_line(str(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _status(args: argparse.Namespace) -> int:
    import urllib3
    from kubernetes.client.rest import ApiException

    from respawn_cli import errors
    from respawn_cli.status import gather, render

    # A kubeconfig with insecure-skip-tls-verify is the user's choice; kubectl does not warn either.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    if args.output_dir is not None and not args.output_dir.is_dir():
        raise CliError(Exit.BAD_INPUT, f"--output-dir {args.output_dir}: not a directory")
    api, default_ns = _api(args.kubeconfig)
    namespace = args.namespace or default_ns
    try:
        report = gather(api, namespace, args.job, args.output_dir)
    except ApiException as exc:
        raise errors.from_api(exc, f"TrainingJob {namespace}/{args.job}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise errors.from_transport(exc, api.configuration.host) from exc
    finally:
        api.close()
    if args.json or args.format == "json":
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        sys.stdout.write(render(report))
    return Exit.OK


def _plot(args: argparse.Namespace) -> int:
    from respawn_cli import history
    from respawn_cli.plot import FORMATS, WriteError, plot

    fmt = args.output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CliError(
            Exit.USAGE,
            f"-o {args.output}: the format comes from the suffix, one of "
            + ", ".join(f".{f}" for f in FORMATS),
        )
    for path in (args.output_dir, args.reference):
        if path is not None and not path.exists():
            raise CliError(Exit.BAD_INPUT, f"{path}: no such file or directory")
    if args.reference is not None and args.x == "time":
        raise CliError(Exit.USAGE, "--reference draws against steps; it cannot be used with --x time")
    try:
        ranks = history.ranks(args.output_dir) if args.all_ranks else (args.rank or [0])
        if not ranks:
            raise CliError(Exit.BAD_INPUT, f"{args.output_dir}: no rank_N directories under log/")
        summary = plot(args.output_dir, args.output, ranks=ranks, reference=args.reference, axis=args.x)
    except WriteError as exc:
        raise CliError(Exit.CANNOT_WRITE, f"cannot write {exc}") from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise CliError(Exit.BAD_INPUT, f"{where}{exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CliError(Exit.BAD_INPUT, str(exc)) from exc
    line = (
        f"{args.output}: {summary.starts} starts, {summary.failures} failures, "
        f"{summary.steps_redone} steps redone"
    )
    if summary.downtime is not None:
        line += f", {summary.downtime:.0f}s down between starts"
    if len(summary.ranks) > 1:
        line += f" (rank {summary.ranks[0]}; ranks {', '.join(map(str, summary.ranks))} drawn)"
    if args.reference is not None:
        line += f"; {summary.mismatched}/{summary.compared} steps differ from the reference"
    print(line)
    return Exit.OK


def version() -> str:
    try:
        return metadata.version("respawn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="respawn", description="Inspect respawn TrainingJobs.")
    p.add_argument("--version", action="version", version=f"respawn {version()}")
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
    s.add_argument("-o", "--output", dest="format", choices=("text", "json"), default="text")
    s.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the older spelling of -o json
    s.set_defaults(func=_status)
    q = sub.add_parser("plot", help="loss curve across restarts, to a PNG, SVG or PDF")
    q.add_argument("--output-dir", type=Path, required=True, help="job output dir (or a steps.jsonl)")
    q.add_argument("--reference", type=Path, help="output dir of an uninterrupted run to draw beneath")
    ranks = q.add_mutually_exclusive_group()
    ranks.add_argument(
        "--rank", type=int, action="append", help="rank to draw (repeat to overlay ranks; default 0)"
    )
    ranks.add_argument("--all-ranks", action="store_true", help="overlay every rank with a log")
    q.add_argument(
        "--x",
        choices=("step", "time"),
        default="step",
        help="x axis: global step, or wall-clock time (shows the downtime between starts)",
    )
    q.add_argument(
        "-o", "--output", type=Path, default=Path("loss.png"), help="file; .png, .svg or .pdf sets the format"
    )
    q.set_defaults(func=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else Exit.USAGE
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"respawn: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # `respawn status ... | head`: the reader has gone; nothing left to say to it.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stdout until exit
        return Exit.OK
    except Exception as exc:  # the promise is no traceback, even for a bug
        if os.environ.get("RESPAWN_DEBUG"):
            traceback.print_exc()
        print(
            f"respawn: internal error: {type(exc).__name__}: {one_line(str(exc))[:300]} "
            "(RESPAWN_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return Exit.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
