"""Which history a checkpoint file belongs to, so that a resume never pairs files of two.

Two kinds of evidence, read by `candidates.one_history` and resolve.py:

- **Runs** (every writer): MindSpore gives each start of a run a new prefix, `{prefix}_rank_N_K`
  with `K` the highest found plus one, so a file's run is its prefix with the rank taken out
  (`run_id`), and a higher `K` is a later start (`run_number`). MindFormers resumes only from files
  of the run its oldest meta.json names; its resumed runs restart their (epoch, step) numbering, so
  (epoch, step) orders files within a run only.
- **Lineages** (respawn's records): each start of our trainer records `lineage` on every file it
  commits, the same on every rank of the start:
  `sha256(parent | attempt)[:16]`, with `parent` = `resumed:<lineage of the resumed step, else its
  rank-0 file name>@<epoch_step>` when the start resumes a step in full, and `fresh:<K>` when it
  starts without one (random init or weights only; `K` is the start's run number, the same on every
  rank, `run_number` over all rank folders), and `attempt` the controller's `RESPAWN_ATTEMPT` (empty
  outside respawn). Every rank of a start resumes the same step, so they derive the same lineage;
  a start that resumes an older step (a branch) derives a new one, so its files never pair with
  the abandoned branch's files of the same step. Two starts that resume the same step outside
  respawn share a lineage: the resume is exact, so their later files are one training state (unless
  the configuration changed between them, which no name or record shows).
"""

from __future__ import annotations

import hashlib
import re

from respawn_protocol.layout import StepKey, parse_name, run_prefix

_RUN_SUFFIX = re.compile(r"_rank_\d+(?:_(?P<k>\d+))?$")
_RANK = re.compile(r"_rank_\d+")


def run_id(name: str) -> str | None:
    """The run a checkpoint file belongs to: its prefix without tag, with rank 0 for its rank
    (`qwen_rank_3_2-network-1_5.ckpt` -> `qwen_rank_0_2`); None for a name that is no checkpoint's."""
    parsed = parse_name(name)
    if parsed is None:
        return None
    run = run_prefix(parsed.prefix)
    matches = list(_RANK.finditer(run))
    if not matches:
        return run
    m = matches[-1]
    return run[: m.start()] + "_rank_0" + run[m.end() :]


def run_number(run: str) -> int:
    """`K` of a run (0 without a suffix): later starts have higher numbers."""
    m = _RUN_SUFFIX.search(run)
    return int(m["k"]) if m and m["k"] else 0


def fresh_parent(run: int | None) -> str:
    return "fresh:" if run is None else f"fresh:{run}"


def resumed_parent(lineage: str | None, rank0_file: str, key: StepKey) -> str:
    return f"resumed:{lineage or rank0_file}@{key}"


def child_lineage(parent: str, attempt: int | None) -> str:
    text = f"{parent}|{'' if attempt is None else attempt}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
