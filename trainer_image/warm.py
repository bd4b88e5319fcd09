"""A rank's trainer process started ahead of its attempt, for a restart in place.

`python -m trainer_image.warm ARGS` imports MindSpore and the trainer (and, for rank 0 of a gang,
starts MindSpore's scheduler process, which imports it too) while the gang is still stopping and
waiting out its backoff, then waits for one line on stdin: the environment of the attempt the
supervisor starts (trainer_image/inplace.py). From there it is `python -m trainer_image ARGS`. The
import (seconds) is then off the restart's path: the ranks start at the controller's word with
MindSpore loaded. An empty stdin (the supervisor gone, or the spare not needed) ends it.

The environment MindSpore reads at import is the pod's, the same for every attempt; what changes
between attempts (`RESPAWN_ATTEMPT`, the Auto checkpoint interval) is read only after the line.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

from respawn_protocol import contract
from trainer_image.checkpoint.commit import UMASK

SPARE_NAME = "respawn-spare"  # the process's name (/proc/<pid>/comm) until it is given its attempt


def _name(name: str) -> str:
    """Set this process's name (PR_SET_NAME, 15 bytes at most); returns the one it had."""
    try:
        with open("/proc/self/comm") as f:
            before = f.read().strip()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        return name
    return before


def main(argv: list[str]) -> int:
    own_name = _name(SPARE_NAME)  # `ps -o comm` tells a spare, importing or waiting, from a rank's trainer
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.setdefault("GLOG_v", "3")
    os.umask(UMASK)
    from trainer_image.training import parallel

    # The process becomes `python -m trainer_image`: MindSpore keys its compile cache on the entry
    # script it finds in argv[0] when it is imported (and so does training/compile_cache.py), so a
    # warm start hits the graphs the attempts before it compiled.
    sys.argv[0] = str(Path(__file__).resolve().with_name("__main__.py"))
    for key, value in parallel.RENDEZVOUS_DEFAULTS.items():  # as `prepare` sets them, before import
        os.environ.setdefault(key, value)
    world = os.environ.get(contract.WORLD_SIZE, "1")
    if os.environ.get(contract.RANK) == "0" and world.isdigit() and int(world) > 1:
        parallel.warm_scheduler(os.environ)
    import trainer_image.trainer
    import trainer_image.training.backend  # noqa: F401  (MindSpore)

    line = sys.stdin.readline()
    if not line:
        return 0
    _name(own_name)
    environ = json.loads(line)
    os.environ.clear()
    os.environ.update(environ)
    from trainer_image.__main__ import main as trainer

    return trainer(argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as trainer_image.__main__: MindSpore's threads can stall the teardown
