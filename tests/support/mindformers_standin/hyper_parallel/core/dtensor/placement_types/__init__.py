"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

Placement = standin(__name__, "Placement")
Replicate = standin(__name__, "Replicate")
Shard = standin(__name__, "Shard")
