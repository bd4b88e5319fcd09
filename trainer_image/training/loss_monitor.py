"""MFLossMonitor's line: the step's loss in the log every `per_print_times` global steps (the step
log, steps.jsonl, has every step)."""

from __future__ import annotations

import logging
from typing import Any

from trainer_image.config import TrainerConfig

log = logging.getLogger("trainer_image")


def print_loss(config: TrainerConfig, record: dict[str, Any]) -> None:
    """MFLossMonitor: the step's loss in the log every `per_print_times` global steps."""
    monitor = config.loss_monitor
    if monitor is None or record["global_step"] % monitor.per_print_times:
        return
    log.info(
        "step %d (epoch %d, step %d): loss %.6f, lr %.6g, loss scale %g, %.1f ms",
        record["global_step"],
        record["epoch"],
        record["step"],
        record["loss"],
        record["lr"],
        record["loss_scale"],
        record["step_time"] * 1000,
    )
