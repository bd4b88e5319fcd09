"""GRPO benchmark: rollout and update throughput, and the share of a run's time spent saving.

Runs `trainer_image/configs/grpo_tiny.yaml` (or --config) in this process, once per checkpoint
format and interval, and prints per run: completions sampled per second and completion bytes per
second in the rollout (G completions per prompt, one policy forward per byte, plus the policy's and
the reference's log-probabilities), completions trained on per second in the updates
(`updates_per_rollout` passes over each rollout), and the save time per checkpoint and its share of
the loop. The first iteration (graph compile) is left out of the rates; saves are all counted.
The runs are interleaved `--repeat` times and each figure is the median; the load average is
printed with them (the machine may be shared).

    python scripts/bench_grpo.py [--config C] [--steps N] [--repeat R] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from respawn_protocol.steplog import read_steps  # noqa: E402
from trainer_image.config import CheckpointMonitor  # noqa: E402
from trainer_image.grpo.config import GrpoConfig, build_grpo_config  # noqa: E402
from trainer_image.grpo.loop import run  # noqa: E402
from trainer_image.training.stop import StopRequest  # noqa: E402

RUNS = (("ckpt", 1), ("ckpt", 10), ("safetensors", 1), ("safetensors", 10))


def configured(base: GrpoConfig, out: Path, fmt: str, every: int, steps: int) -> GrpoConfig:
    monitor = CheckpointMonitor(
        prefix="bench",
        save_checkpoint_steps=every,
        keep_checkpoint_max=2,
        checkpoint_format=fmt,  # type: ignore[arg-type]
    )
    return dataclasses.replace(
        base,
        output_dir=str(out),
        save_checkpoint_dir="",
        load_ckpt_format=fmt,  # type: ignore[arg-type]
        callbacks=[monitor],
        grpo=dataclasses.replace(base.grpo, total_steps=steps),
    )


def measure(config: GrpoConfig) -> dict[str, Any]:
    outcome = run(config, rank=0, world_size=1, stop=StopRequest())
    t = outcome.timings
    lines = read_steps(config.save_dir / "log" / "rank_0" / "steps.jsonl")
    first = lines[0]
    rollout = t.rollout - first["rollout_time"]
    update = t.update - first["update_time"]
    iterations = t.iterations - 1
    g = config.grpo
    per_iteration = g.prompts_per_step * g.num_generations
    saves = -(-g.total_steps // config.callbacks[0].save_checkpoint_steps)  # type: ignore[union-attr]
    loop = rollout + update + t.save
    return {
        "completions_per_s": iterations * per_iteration / rollout,
        "bytes_per_s": iterations * per_iteration * g.max_completion_length / rollout,
        "trained_per_s": iterations * per_iteration * g.updates_per_rollout / update,
        "iteration_ms": 1000 * (rollout + update) / iterations,
        "save_ms": 1000 * t.save / saves,
        "save_share": t.save / loop,
        "reward_first_last": (lines[0]["reward_mean"], lines[-1]["reward_mean"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "trainer_image" / "configs" / "grpo_tiny.yaml"))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = build_grpo_config(args.config)
    g = base.grpo
    print(
        f"{args.config}: {g.prompts_per_step} prompts x G={g.num_generations}, "
        f"{g.max_completion_length} bytes, {g.updates_per_rollout} updates per rollout, "
        f"{args.steps} iterations, median of {args.repeat}"
    )
    results: dict[tuple[str, int], list[dict[str, Any]]] = {run: [] for run in RUNS}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for rep in range(args.repeat):
            for fmt, every in RUNS:
                out = Path(work) / f"{fmt}-{every}-{rep}"
                results[(fmt, every)].append(measure(configured(base, out, fmt, every, args.steps)))
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'format':<12}{'save every':>11}{'iter ms':>9}{'rollout compl/s':>17}{'bytes/s':>9}"
        f"{'update compl/s':>16}{'save ms':>9}{'save share':>12}"
    )
    for (fmt, every), runs in results.items():
        r = {k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "reward_first_last"}
        print(
            f"{fmt:<12}{every:>11}{r['iteration_ms']:>9.1f}{r['completions_per_s']:>17.0f}"
            f"{r['bytes_per_s']:>9.0f}{r['trained_per_s']:>16.0f}{r['save_ms']:>9.1f}"
            f"{100 * r['save_share']:>11.1f}%"
        )


if __name__ == "__main__":
    main()
