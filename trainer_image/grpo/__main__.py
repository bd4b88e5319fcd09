"""`python -m trainer_image.grpo --config grpo.yaml [flags]`: one rank of GRPO post-training, exit
code per contract.ExitCode. The flags are MindSpore RLHF's (`--resume_training` as a flag,
`--actor_checkpoint_path`, `--ref_checkpoint_path`, `--save_checkpoint_dir`, `--save_strategy_dir`)
plus overrides like the pretraining entry point's; under the controller its environment supplies
the rest, so a TrainingJob needs no flags."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from respawn_protocol import contract
from respawn_protocol.contract import ExitCode, parse_resume_training
from trainer_image.checkpoint.commit import UMASK

HCCL_TIMEOUTS = ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT")
log = logging.getLogger("trainer_image.grpo")


def _flag(value: str) -> bool:
    parsed = parse_resume_training(value)
    if not isinstance(parsed, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return parsed


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer_image.grpo", description=__doc__)
    p.add_argument("--config", required=True, help="YAML config (trainer_image/configs/grpo_tiny.yaml)")
    p.add_argument("--output_dir")
    p.add_argument("--save_checkpoint_dir", help="checkpoint/, ref/ and log/ go here (default: output_dir)")
    p.add_argument("--save_strategy_dir", help="strategy files (default: <save_checkpoint_dir>/strategy)")
    p.add_argument(
        "--actor_checkpoint_path", help="initial policy; with --resume_training, a state to continue"
    )
    p.add_argument("--ref_checkpoint_path", help="reference model (default: the initial policy, saved once)")
    p.add_argument(
        "--resume_training", nargs="?", const=True, type=_flag, help="continue a saved training state"
    )
    p.add_argument("--load_ckpt_format", choices=("ckpt", "safetensors"))
    p.add_argument("--seed", type=int)
    p.add_argument("--total_steps", type=int, help="GRPO iterations of the whole run")
    return p.parse_args(argv)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs: dict[str, Any] = {
        "output_dir": args.output_dir,
        "save_checkpoint_dir": args.save_checkpoint_dir,
        "save_strategy_dir": args.save_strategy_dir,
        "actor_checkpoint_path": args.actor_checkpoint_path,
        "ref_checkpoint_path": args.ref_checkpoint_path,
        "resume_training": args.resume_training,
        "load_ckpt_format": args.load_ckpt_format,
        "seed": args.seed,
        "grpo.total_steps": args.total_steps,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def job_checkpoint_dir(environ: Mapping[str, str], save_dir: Path, resume: bool) -> Path | None:
    """Where auto-resume looks: the controller's RESPAWN_JOB_CHECKPOINT_DIR, which must be this
    run's `<save_checkpoint_dir>/checkpoint`; outside respawn, that directory with --resume_training."""
    from trainer_image.config import ConfigError

    own = save_dir / contract.CHECKPOINT_DIR
    value = environ.get(contract.JOB_CHECKPOINT_DIR)
    if value:
        if Path(value).resolve() != own.resolve():
            raise ConfigError(
                f"{contract.JOB_CHECKPOINT_DIR}={value} is not where this run writes its checkpoints "
                f"({own}, from save_checkpoint_dir): the job would never resume from them"
            )
        return Path(value)
    return own if resume else None


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # start-up: a stop ends the process at once
    os.environ.setdefault("GLOG_v", "3")
    os.umask(UMASK)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    from trainer_image import supervisor
    from trainer_image.config import ConfigError

    environ = os.environ
    try:
        ranks = supervisor.ranks_per_pod(environ)
        if ranks > 1:  # the pod's entry point: one process per rank, as for pretraining
            supervisor.check_ranks(environ, ranks)
            command = [sys.executable, "-m", "trainer_image.grpo", *argv]
            return supervisor.Supervisor(command, environ, ranks).run()
        return _train(args, environ)
    except ConfigError as e:
        log.error("permanent error: %s", e)
        return ExitCode.CONFIG_ERROR


def _train(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """One rank; ConfigError for a permanent error."""
    from trainer_image.config import ConfigError
    from trainer_image.grpo.config import build_grpo_config, grpo_env_overrides, with_save_interval
    from trainer_image.grpo.loop import run
    from trainer_image.trainer import attempt_of, rank_and_world, save_interval
    from trainer_image.training.report import Reporter
    from trainer_image.training.stop import StopRequest

    config = build_grpo_config(args.config, grpo_env_overrides(environ), cli_overrides(args))
    config = with_save_interval(config, save_interval(environ))
    rank, world_size = rank_and_world(environ)
    attempt = attempt_of(environ)
    job_dir = job_checkpoint_dir(environ, config.save_dir, config.resume_training)
    # The seed's distributed trouble: collective timeouts, set in the TrainingJob's template env
    # (docs/trainer.md, GRPO); logged so that every rank shows what it got.
    for name in HCCL_TIMEOUTS:
        if name in environ:
            log.info("%s=%s", name, environ[name])
    stop = StopRequest()
    stop.install()
    reporter = Reporter.from_env(environ, rank=rank, attempt=attempt)
    try:
        outcome = run(
            config, rank=rank, world_size=world_size, stop=stop, attempt=attempt,
            job_checkpoint_dir=job_dir, reporter=reporter,
        )  # fmt: skip
    except ConfigError:
        raise
    except Exception:
        log.exception("GRPO training failed")
        return ExitCode.FAILED
    finally:
        reporter.close()
        stop.uninstall()
    if outcome.status == "completed":
        return ExitCode.SUCCESS
    return ExitCode.STOPPED if outcome.checkpointed else ExitCode.TERMINATED


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip teardown: MindSpore's threads can stall it
