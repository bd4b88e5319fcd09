"""Checkpoint store benchmark: upload throughput next to the local save, and predownload time, for the
shipped configs (trainer_image/configs/tiny.yaml, small_async.yaml), against a local SeaweedFS
(tests/support/objectstore.py) on loopback.

Per config, one training run (as configured, one rank) with the store, then:
- local save: step end (steps.jsonl `time`) -> `committed` log line, median over the run's saves
  (with async_save the commit overlaps the next steps: this is its latency, not a stall);
- commit -> in the store: `committed` -> `store: uploaded` log lines, for the commits that went up
  (others were skipped for a newer one), median, and the run's count of both;
- upload throughput: the newest checkpoint uploaded again as the uploader sends it (hashed as read,
  multipart above 16 MiB), 5 times, median MB/s; the same file's local save throughput beside it;
- predownload: `predownload` into an empty output directory (listing, resolve, download, sha256,
  fsync, rename, meta.json), 3 times, median.

    python scripts/bench_store.py [--workdir DIR] [--configs tiny small_async]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from respawn_protocol.meta import read_meta  # noqa: E402
from tests.support.objectstore import ObjectStore, seaweedfs  # noqa: E402
from trainer_image.checkpoint.store.client import Settings  # noqa: E402
from trainer_image.checkpoint.store.download import predownload  # noqa: E402
from trainer_image.checkpoint.store.upload import CHUNK, CONCURRENCY, _Hashing  # noqa: E402

LINE = re.compile(r"^(\S+ \S+) INFO \S+ (?:store: )?(committed|uploaded) (\S+) \(global step (\d+)\)")


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def train(store: ObjectStore, bucket: str, config: str, out: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPAWN_")}
    env.update(store.env(bucket, "bench"), PYTHONPATH=str(REPO), GLOG_v="3")
    cmd = [
        sys.executable,
        "-m",
        "trainer_image",
        "--config",
        str(REPO / "trainer_image/configs" / f"{config}.yaml"),
    ]
    cmd += ["--output_dir", str(out), "--load_checkpoint", str(out / "checkpoint")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{config}: the trainer exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stderr


def latencies(log: str, out: Path) -> tuple[list[float], list[float], int, int]:
    """(step end -> committed, committed -> uploaded) in seconds; commits and uploads counted."""
    ended = {r["global_step"]: r["time"] for r in map(json.loads, (out / "log/rank_0/steps.jsonl").open())}
    committed: dict[str, tuple[float, int]] = {}
    save, upload, uploads = [], [], 0
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        at, what, name, step = stamp(m[1]), m[2], m[3], int(m[4])
        if what == "committed":
            committed[name] = (at, step)
            save.append(at - ended[step])
        elif name in committed:
            uploads += 1
            upload.append(at - committed[name][0])
    return save, upload, len(committed), uploads


def upload_rate(store: ObjectStore, bucket: str, path: Path, times: int = 5) -> float:
    from boto3.s3.transfer import TransferConfig

    client, rates = store.client(), []
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=CONCURRENCY)
    for i in range(times):
        with open(path, "rb") as f:
            began = time.perf_counter()
            client.upload_fileobj(_Hashing(f), bucket, f"rate/{i}", Config=config)
            rates.append(path.stat().st_size / 1e6 / (time.perf_counter() - began))
    return statistics.median(rates)


def predownload_time(store: ObjectStore, bucket: str, workdir: Path, times: int = 3) -> float:
    settings = Settings.from_env(store.env(bucket, "bench"))
    assert settings is not None
    spent = []
    for i in range(times):
        out = workdir / f"fresh-{i}"
        began = time.perf_counter()
        assert predownload(settings, output_dir=out, rank=0, world_size=1) is not None
        spent.append(time.perf_counter() - began)
        shutil.rmtree(out)
    return statistics.median(spent)


def bench(store: ObjectStore, config: str, workdir: Path) -> dict[str, Any]:
    bucket = config.replace("_", "-")
    store.client().create_bucket(Bucket=bucket)
    out = workdir / config
    log = train(store, bucket, config, out)
    save, upload, commits, uploads = latencies(log, out)
    meta = read_meta(out / "checkpoint/rank_0")
    assert meta is not None
    newest = out / "checkpoint/rank_0" / meta.last_ckpt_file
    size = newest.stat().st_size
    return {
        "config": config,
        "checkpoint MB": size / 1e6,
        "local save s (median)": statistics.median(save),
        "local save MB/s": size / 1e6 / statistics.median(save),
        "commit -> store s (median)": statistics.median(upload) if upload else float("nan"),
        "commits / uploaded": f"{commits} / {uploads}",
        "upload MB/s (median of 5)": upload_rate(store, bucket, newest),
        "predownload s (median of 3)": predownload_time(store, bucket, workdir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--configs", nargs="+", default=["tiny", "small_async"])
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    with seaweedfs(workdir / "seaweedfs") as store:
        rows = [bench(store, config, workdir) for config in args.configs]
    for row in rows:
        print(" | ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    print(f"load average: {os.getloadavg()[0]:.1f}; workdir {workdir}")


if __name__ == "__main__":
    main()
