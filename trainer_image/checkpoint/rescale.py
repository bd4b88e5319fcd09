"""MindFormers' rescale when the global batch size changes on resume.

The position is kept in samples: a step of the old run consumed `old` samples, one of the new run
consumes `new`, so steps count `step * old // new` (rounded down: a partly consumed batch is redone).
The LR schedule, a function of the optimizer's step, moves with it.
"""

from __future__ import annotations

import dataclasses

from trainer_image.checkpoint.progress import Progress


def rescale_steps(steps: int, *, old: int, new: int) -> int:
    return steps * old // new


def rescale_progress(progress: Progress, *, old: int, new: int, steps_per_epoch: int) -> Progress:
    """`progress` saved with global batch `old`, restated for global batch `new`; the epoch and the
    step within it follow from the rescaled data position."""
    data_step = rescale_steps(progress.data_step, old=old, new=new)
    out = dataclasses.replace(
        progress,
        global_step=rescale_steps(progress.global_step, old=old, new=new),
        data_step=data_step,
        global_batch_size=new,
    )
    if data_step:
        out.epoch = out.epoch_base + (data_step - 1) // steps_per_epoch + 1
        out.step = (data_step - 1) % steps_per_epoch + 1
    else:
        out.epoch, out.step = out.epoch_base, 0
    return out
