"""`python -m controller`: run the respawn controller."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

from kubernetes import config

from controller.app import Controller, Settings
from controller.runtime.logs import configure_logging


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(prog="python -m controller", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file; default: in-cluster config, then $KUBECONFIG")
    p.add_argument("--namespace", help="watch only these namespaces, comma-separated: a,b (default: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--health-port", type=int, default=8081, help="port of /healthz, /readyz and /metrics")
    p.add_argument("--health-host", default="0.0.0.0")
    p.add_argument(
        "--metrics-auth",
        type=_boolean,
        default=True,
        metavar="true|false",
        help="serve /metrics only to a bearer token allowed to get it (TokenReview, SubjectAccessReview); "
        "false: to anyone who can connect, e.g. for local development on 127.0.0.1 (default: true)",
    )
    p.add_argument("--tls-cert-file", type=Path, help="serve the health/metrics port over HTTPS: certificate")
    p.add_argument("--tls-key-file", type=Path, help="... and its key (reloaded when the files change)")
    p.add_argument("--no-leader-election", action="store_true")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    p.add_argument("--lease-name", default="respawn-controller")
    p.add_argument("--identity", default=os.environ.get("POD_NAME"))
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument(
        "--shared-root", type=Path, help="read-only mount of the shared volume (checkpoint awareness)"
    )
    p.add_argument(
        "--checkpoint-poll-interval",
        type=float,
        help="poll the shared volume every N seconds (network filesystems) instead of inotify",
    )
    p.add_argument("--no-device-faults", action="store_true", help="ignore mindx-dl-deviceinfo ConfigMaps")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    # Flags are named after Settings fields; the two negative switches are the exceptions.
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    settings = Settings(
        **given, leader_election=not args.no_leader_election, device_faults=not args.no_device_faults
    )
    return args, settings


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(level=args.log_level)
    if args.kubeconfig:
        api = config.new_client_from_config(config_file=args.kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        from kubernetes import client

        api = client.ApiClient()
    controller = Controller(api, settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: controller.stop())
    return controller.run()


if __name__ == "__main__":
    sys.exit(main())
