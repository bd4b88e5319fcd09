"""`python -m trainer_image --config run.yaml [overrides]`: one rank, exit code per contract.ExitCode;
with RESPAWN_RANKS_PER_POD > 1, one process per rank of the pod (trainer_image/supervisor.py); with
RESPAWN_RESTART_IN_PLACE, a supervisor that restarts the pod's ranks in place (trainer_image/inplace.py)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from respawn_protocol.contract import ExitCode, parse_resume_training
from trainer_image.checkpoint.commit import UMASK


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer_image", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config (MindFormers key names)")
    p.add_argument("--output_dir")
    p.add_argument("--load_checkpoint")
    p.add_argument("--resume_training", help="true, false or a checkpoint file name")
    p.add_argument("--train_dataset_dir")
    p.add_argument("--load_ckpt_format", choices=("ckpt", "safetensors"))
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    return p.parse_args(argv)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs: dict[str, Any] = {
        "output_dir": args.output_dir,
        "load_checkpoint": args.load_checkpoint,
        "resume_training": None
        if args.resume_training is None
        else parse_resume_training(args.resume_training),
        "train_dataset.data_loader.dataset_dir": args.train_dataset_dir,
        "load_ckpt_format": args.load_ckpt_format,
        "seed": args.seed,
        "runner_config.epochs": args.epochs,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    # Start-up: SIGTERM ends the process at once, even if a parent left it ignored; the first step's
    # end arms the stop handler (trainer_image/training/stop.py).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only
    os.umask(UMASK)  # nothing this rank (or MindSpore) writes is world-readable: the volume is shared
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("trainer_image")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    from trainer_image import inplace, supervisor
    from trainer_image.config import ConfigError

    try:
        ranks = supervisor.ranks_per_pod(os.environ)
        if inplace.enabled(os.environ):  # the pod's entry point, outliving its ranks (docs/trainer.md)
            supervisor.check_ranks(os.environ, ranks)
            return inplace.serve(argv, os.environ, ranks)
    except ConfigError as e:
        log.error("permanent error: %s", e)
        return ExitCode.CONFIG_ERROR
    if ranks > 1:  # the pod's entry point: one process per rank (docs/trainer.md, Several ranks per pod)
        return supervisor.supervise(argv, os.environ, ranks)

    from trainer_image.trainer import Trainer, build_config, env_overrides, with_save_interval
    from trainer_image.training.preflight import PreflightError, say

    try:
        config = build_config(args.config, env_overrides(os.environ), cli_overrides(args))
        config = with_save_interval(config, os.environ)
        outcome = Trainer(config, apply_env=False).train()
    except ConfigError as e:
        log.error("permanent error: %s", e)
        return ExitCode.CONFIG_ERROR
    except PreflightError as e:
        log.error("%s", e)
        say(str(e), os.environ)
        return ExitCode.PREFLIGHT_FAILED
    except Exception:
        log.exception("training failed")
        return ExitCode.FAILED
    if outcome.status == "completed":
        return ExitCode.SUCCESS
    if outcome.checkpointed:
        return ExitCode.STOPPED
    return ExitCode.TERMINATED  # no CheckpointMonitor: nothing to show for the stop


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: MindSpore's background threads can stall it after the work is done.
    os._exit(code)
