"""Both resolvers on the same directories: MindFormers' real one (tests/support/mindformers_side.py,
run with MindFormers' interpreter) and ours, each answer as the file every rank would load."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

from respawn_protocol.resolve import ResolveError, resolve
from tests.support.gated_start import GATE_ENV
from tests.support.mindformers import mindformers_env, mindformers_python
from tests.support.trainer import TrainerProcess

SIDE = Path(__file__).with_name("mindformers_side.py")

# A resume choice: rank -> file name, or why there is none ("error: ...", "random init").
Choice = dict[int, str] | str


def mindformers(command: str, payload: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """One call of mindformers_side.py in `cwd` (MindFormers writes ./output there)."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(mindformers_python()), "-P", str(SIDE), command, json.dumps(payload)],
        env=mindformers_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def mf_write(output_dir: Path, rank: int, steps: int, cwd: Path, **options: Any) -> int:
    """MindFormers' CheckpointMonitor saving `steps` steps of rank `rank`; the global step reached."""
    payload = {"output_dir": str(output_dir), "rank": rank, "steps": steps, **options}
    result = mindformers("write", payload, cwd)
    return int(result["global_step"])


def theirs(
    root: Path, cwd: Path, resume_training: bool | str = True, fmt: str = "ckpt"
) -> tuple[Choice, bool]:
    """MindFormers' choice, and whether every rank could load its file."""
    payload = {"checkpoint_dir": str(root), "resume_training": resume_training, "format": fmt}
    return _choice(mindformers("resolve", payload, cwd))


def theirs_many(requests: list[dict[str, Any]], cwd: Path) -> list[tuple[Choice, bool]]:
    """`theirs` for each `{"checkpoint_dir", "resume_training", "format"}`, in one process."""
    return [_choice(r) for r in mindformers("resolve_many", {"requests": requests}, cwd)["results"]]


def _choice(result: dict[str, Any]) -> tuple[Choice, bool]:
    if result["error"]:
        return f"error: {result['error']}", False
    files = {int(r): Path(p).name for r, p in result["files"].items()}
    return files, all(v == "ok" for v in result["loadable"].values())


def ours(
    root: Path, resume_training: bool | str = True, fmt: str = "ckpt", exclude: Collection[Path] = ()
) -> Choice:
    try:
        res = resolve(root, resume_training, formats=(fmt,), exclude=exclude)
    except ResolveError as e:
        return f"error: {e}"
    return {r: p.name for r, p in res.files.items()} if res.files else "random init"


def at(prefix: str, step: str, ranks: int = 2, ext: str = "ckpt", run: str = "") -> dict[int, str]:
    """`{rank: '{prefix}_rank_{rank}{run}-{step}.{ext}'}`: a choice, for expectations."""
    return {r: f"{prefix}_rank_{r}{run}-{step}.{ext}" for r in range(ranks)}


def run_gang(
    trainer_env: dict[str, str], config: Path, world: int = 2, **per_rank_env: dict[str, str]
) -> list[int]:
    """Our trainer's ranks as independent processes (no use_parallel) started together, each
    logging to `<config stem>-rank<N>.log`; `per_rank_env`: e.g. `rank1={"RESPAWN_FAULT": ...}`.
    No rank commits before every rank has built its checkpointer (tests/support/gated_start.py).
    Returns the exit codes."""
    gate = config.with_name(f"{config.stem}-gate")
    gate.mkdir()
    procs = [
        TrainerProcess(
            config,
            trainer_env,
            config.with_name(f"{config.stem}-rank{rank}.log"),
            {
                "RESPAWN_RANK": str(rank),
                "RESPAWN_WORLD_SIZE": str(world),
                GATE_ENV: str(gate),
                **per_rank_env.get(f"rank{rank}", {}),
            },
            module="tests.support.gated_start",
        )
        for rank in range(world)
    ]
    return [p.wait() for p in procs]
