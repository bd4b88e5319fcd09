"""Checkpoint benchmark for the trainer: a ~50M-parameter LLaMA-style model on this machine's CPU and disk.

Prints, per format (ckpt, safetensors):
- the training-loop stall per checkpoint, async vs the same save done synchronously;
- save and load throughput next to the fsync'd write and cold-ish read bandwidth of the same disk,
  measured in the same run (page cache evicted per file with posix_fadvise, not machine-wide);
- resume time of a fresh process, from start to the first resumed step: import, build, load, first step.

    python scripts/bench_checkpoint.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.poll import poll  # noqa: E402

STEPS_PER_EPOCH = 64
BATCH = 1
CONFIG: dict[str, Any] = {
    "seed": 1,
    "context": {"mode": 0},
    "runner_config": {"epochs": 1, "batch_size": BATCH},
    "lr_schedule": {"learning_rate": 1e-4, "warmup_steps": 2, "total_steps": 1000},
    "model": {
        "type": "llama",
        "seq_length": 16,
        "hidden_size": 512,
        "num_layers": 16,
        "num_heads": 8,
        "intermediate_size": 1376,
    },
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": BATCH * STEPS_PER_EPOCH}},
}
SAVES_PER_MODE = 2  # throughput saves
MODES = ("sync", "async")
STEP_REPS = 8  # interleaved split / fused steps
STALL_REPS = 8  # paired windows per format and mode
WINDOW = 3  # steps per window: the background writer finishes within it
CHUNK = 8 << 20


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_bandwidth(directory: Path, size: int) -> tuple[float, float]:
    """MB/s of an fsync'd sequential write and of a read after eviction, for a file of `size` bytes."""
    path = directory / "disk-probe.bin"
    block = os.urandom(CHUNK)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        written = 0
        while written < size:
            written += f.write(block[: min(CHUNK, size - written)])
        os.fsync(f.fileno())
    write = size / (time.perf_counter() - t0) / 1e6
    evict(path)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass
    read = size / (time.perf_counter() - t0) / 1e6
    path.unlink()
    return write, read


class Bench:
    def __init__(self, workdir: Path) -> None:
        from trainer_image.checkpoint.progress import Progress
        from trainer_image.config import parse_config
        from trainer_image.training.backend import Backend
        from trainer_image.training.data import build_stream

        self.workdir = workdir
        self.config = parse_config({**CONFIG, "output_dir": str(workdir / "unused")})
        self.stream = build_stream(self.config, rank=0, world_size=1)
        self.backend = Backend(self.config, total_steps=1000)
        self.batches = itertools.cycle(self.stream.batches(start_step=0, epochs=1))
        self.progress = Progress(dataset_fingerprint=self.stream.fingerprint)
        self.params = sum(int(p.size) for p in self.backend.model.trainable_params())

    def step(self, fused: bool = False) -> float:
        """One training step (the trainer's split step, or MindSpore's fused cell for comparison)."""
        batch = next(self.batches)
        t0 = time.perf_counter()
        if fused:
            from mindspore import Tensor

            loss, *_ = self.backend.cell(Tensor(batch))
            loss.asnumpy()
        else:
            self.backend.step(batch, None)
        p = self.progress
        p.global_step += 1
        p.data_step = p.data_step % (STEPS_PER_EPOCH - 1) + 1  # a resumed run always has steps left
        p.epoch, p.step = 1, p.data_step
        return time.perf_counter() - t0

    def checkpointer(self, name: str, fmt: str, async_save: bool) -> Any:
        from trainer_image.checkpoint.checkpointer import Checkpointer
        from trainer_image.config import CheckpointMonitor

        monitor = CheckpointMonitor(
            prefix="bench",
            keep_checkpoint_max=1,
            async_save=async_save,
            checkpoint_format=fmt,  # type: ignore[arg-type]
            save_network_params=False,
        )
        return Checkpointer(
            backend=self.backend,
            monitor=monitor,
            output_dir=self.workdir / name,
            rank=0,
            world_size=1,
            resumed_key=None,
        )

    def stall(self, fmt: str) -> dict[str, list[float]]:
        """Loop time lost per checkpoint, sync and async, interleaved so both see the same noise.

        Each repetition times a window of WINDOW plain steps, then a window of save + WINDOW steps +
        wait for the writer; the difference is the stall (blocked time plus slower steps while the
        writer runs). Also: the async save's blocked time alone (the save call plus the wait of the
        next optimizer update for the snapshot copy), and the process CPU time each save adds."""
        checkpointers = {mode: self.checkpointer(f"{fmt}-{mode}", fmt, mode == "async") for mode in MODES}
        copy_wait = [0.0]
        snapshot = self.backend.snapshot

        def timed_snapshot() -> Any:
            snap = snapshot()
            wait = snap.wait_copied

            def timed_wait() -> None:
                t0 = time.perf_counter()
                wait()
                copy_wait[0] += time.perf_counter() - t0

            snap.wait_copied = timed_wait  # type: ignore[method-assign]
            return snap

        self.backend.snapshot = timed_snapshot  # type: ignore[method-assign]
        out: dict[str, list[float]] = {k: [] for k in ("sync", "async", "blocked", "cpu_sync", "cpu_async")}
        for _ in range(STALL_REPS):
            for mode, ck in checkpointers.items():
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(WINDOW):
                    self.step()
                c1, t1 = time.process_time(), time.perf_counter()
                copy_wait[0] = 0.0
                ck.save(self.progress)
                call = time.perf_counter() - t1
                for _ in range(WINDOW):
                    self.step()
                ck.wait()
                c2, t2 = time.process_time(), time.perf_counter()
                out[mode].append((t2 - t1) - (t1 - t0))
                out[f"cpu_{mode}"].append((c2 - c1) - (c1 - c0))
                if mode == "async":
                    out["blocked"].append(call + copy_wait[0])
        self.backend.snapshot = snapshot  # type: ignore[method-assign]
        return out

    def sync_save_throughput(self, fmt: str) -> tuple[float, int, Path]:
        ck = self.checkpointer(f"{fmt}-throughput", fmt, False)
        times = []
        for _ in range(SAVES_PER_MODE):
            self.step()
            t0 = time.perf_counter()
            ck.save(self.progress)
            times.append(time.perf_counter() - t0)
        path = ck.dir / ck.history[-1].file
        size = path.stat().st_size
        return size / statistics.median(times) / 1e6, size, path

    def load_throughput(self, path: Path) -> tuple[float, float, float]:
        """MB/s of the load call after eviction; the part of it spent in MindSpore's load_checkpoint
        (read, parse, tensors), measured on its own after another eviction; and the first step after
        the load (lazy safetensors pay here)."""
        import mindspore as ms

        size = path.stat().st_size
        evict(path)
        t0 = time.perf_counter()
        ms.load_checkpoint(str(path), format=path.suffix[1:])
        read = time.perf_counter() - t0
        evict(path)
        t0 = time.perf_counter()
        self.backend.load(path, weights_only=False)
        load = time.perf_counter() - t0
        return size / load / 1e6, read / load, self.step()


def resume_run(workdir: Path, fmt: str, checkpoint_dir: Path) -> dict[str, float]:
    """A fresh process resuming from `checkpoint_dir`, stopped by SIGTERM after its first step."""
    out = workdir / f"resume-{fmt}"
    config = {
        **CONFIG,
        "output_dir": str(out),
        "load_checkpoint": str(checkpoint_dir),
        "resume_training": True,
        "load_ckpt_format": fmt,
        # SIGTERM after the first step commits one more checkpoint; exit 75
        "callbacks": [
            {
                "type": "CheckpointMonitor",
                "prefix": "resumed",
                "save_checkpoint_steps": 10_000,
                "checkpoint_format": fmt,
                "save_network_params": False,
            }
        ],
    }
    path = workdir / f"resume-{fmt}.yaml"
    path.write_text(yaml.safe_dump(config))
    steps = out / "log" / "rank_0" / "steps.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPAWN_", "MS_COMPILER_CACHE"))}
    env["PYTHONPATH"] = str(REPO)
    env["RESPAWN_COMPILE_CACHE"] = "off"  # the first step's figure is the compile's
    log_path = workdir / f"resume-{fmt}.log"
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainer_image", "--config", str(path)], env=env, stderr=log
        )
        stepped = poll(
            lambda: steps.exists() and steps.read_bytes().endswith(b"\n"),
            600,
            interval=0.01,
            give_up=lambda: proc.poll() is not None,
        )
        if not stepped:
            proc.kill()
            raise RuntimeError(f"resume run failed:\n{log_path.read_text()[-3000:]}")
        total = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=600)
    text = log_path.read_text()
    m = re.search(r"import ([\d.]+)s, build ([\d.]+)s, load ([\d.]+)s", text)
    assert m is not None and code == 75, text[-2000:]
    first = json.loads(steps.read_text().splitlines()[0])
    assert first["resumed_from"] is not None
    # startup_seconds runs from the trainer's start (after parsing config) to the first step
    return {
        "process": total,
        "python+args": total - first["startup_seconds"] - first["step_time"],
        "import": float(m[1]),
        "build": float(m[2]),
        "load": float(m[3]),
        "first_step": first["step_time"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.workdir))
    try:
        bench = Bench(workdir)
        print(f"model: {bench.params / 1e6:.1f}M parameters, {os.cpu_count()} CPUs, workdir {workdir}")
        print(f"load average {load_average()}")
        for _ in range(2):  # compile
            bench.step()
            bench.step(fused=True)
        fused, split = [], []
        for _ in range(STEP_REPS):
            fused.append(bench.step(fused=True))
            split.append(bench.step())
        step_time = statistics.median(split)
        diff = statistics.median(s - f for s, f in zip(split, fused, strict=True))
        print(
            f"training step: {step_time * 1e3:.0f} ms split (gradients, then optimizer) vs "
            f"{statistics.median(fused) * 1e3:.0f} ms fused; split - fused, paired: {diff * 1e3:+.0f} ms "
            f"(median of {STEP_REPS} interleaved)"
        )
        results: dict[str, dict[str, Any]] = {}
        for fmt in ("ckpt", "safetensors"):
            print(f"measuring {fmt} ...", file=sys.stderr)
            r = results[fmt] = {}
            r["stall"] = bench.stall(fmt)
            r["stall_load"] = load_average()
            r["save_mbps"], r["size"], path = bench.sync_save_throughput(fmt)
            r["disk_write"], r["disk_read"] = disk_bandwidth(workdir, r["size"])
            r["load_mbps"], r["load_parse_share"], r["first_step_after_load"] = bench.load_throughput(path)
            r["resume_source"] = path.parent.parent
            r["io_load"] = load_average()
        for fmt in ("ckpt", "safetensors"):
            results[fmt]["resume"] = resume_run(workdir, fmt, results[fmt]["resume_source"])
        report(results, step_time)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def quartiles(xs: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(xs, n=4)
    return f"{q1:.3f}..{q3:.3f}"


def report(results: dict[str, dict[str, Any]], step_time: float) -> None:
    print()
    for fmt, r in results.items():
        print(f"[{fmt}] checkpoint {r['size'] / 2**20:.0f} MiB")
        st = r["stall"]
        sync, asyn, blocked = (statistics.median(st[k]) for k in ("sync", "async", "blocked"))
        print(f"  stall per checkpoint, median of {STALL_REPS} paired windows (load {r['stall_load']}):")
        print(f"    sync  {sync:.3f} s   quartiles {quartiles(st['sync'])}")
        print(
            f"    async {asyn:.3f} s = {100 * asyn / sync:.1f} % of sync   quartiles {quartiles(st['async'])}"
        )
        print(
            f"    async, blocked only (save call + optimizer waiting for the copy) {blocked:.4f} s = "
            f"{100 * blocked / sync:.1f} % of sync   quartiles {quartiles(st['blocked'])}"
        )
        print(
            f"    process CPU time added per checkpoint: sync {statistics.median(st['cpu_sync']):.2f} s, "
            f"async {statistics.median(st['cpu_async']):.2f} s"
        )
        print(f"  I/O figures below: load {r['io_load']}")
        print(
            f"  save {r['save_mbps']:.0f} MB/s (write, fsync, sha256, meta) vs disk fsync'd write "
            f"{r['disk_write']:.0f} MB/s = {100 * r['save_mbps'] / r['disk_write']:.0f} %"
        )
        print(
            f"  load {r['load_mbps']:.0f} MB/s vs disk cold read {r['disk_read']:.0f} MB/s = "
            f"{100 * r['load_mbps'] / r['disk_read']:.0f} % (load_checkpoint alone "
            f"{100 * r['load_parse_share']:.0f} % of the load time); first step after load "
            f"{r['first_step_after_load']:.2f} s (steady {step_time:.2f} s)"
        )
        res = r["resume"]
        print(
            f"  resume, process start to first resumed step done: {res['process']:.1f} s = python+args "
            f"{res['python+args']:.1f} + import {res['import']:.1f} + build {res['build']:.1f} + "
            f"load {res['load']:.1f} + first step {res['first_step']:.1f} (compile included)"
        )


if __name__ == "__main__":
    main()
