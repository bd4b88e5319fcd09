"""The chaos soak harness, shared by tests/e2e/test_chaos.py (short, CI) and scripts/chaos_soak.py.

`ChaosSoak` runs real-trainer TrainingJobs under two controller replicas (subprocesses with leader
election) while a seeded injector hits them, records what every fault hit and every pod event, and
then checks the outcome (`ChaosSoak.verify`; the rules are in test_chaos.py's docstring).

Placement: the uninterrupted reference jobs (one per distinct trainer config) are pinned to
`nodes[-1]` and node faults (NotReady, device fault) only ever hit `nodes[0]`, so the references
are never touched by a fault aimed at a job and the chaos jobs always have a node to restart on
(`faultyNodes` accumulates, and with two nodes a job avoiding both could never be scheduled).
NotReady kills the node's pod processes (a crashed machine, not a partition): a partitioned
node's processes would go on writing to the shared volume after the controller force-deleted
their pods, which no controller can prevent.
"""

from tests.support.chaos.common import run_config
from tests.support.chaos.soak import ChaosSoak
from tests.support.chaos.verify import summary

__all__ = ["ChaosSoak", "run_config", "summary"]
