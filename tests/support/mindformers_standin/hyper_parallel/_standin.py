"""TEST-ONLY: what every name of the `hyper_parallel` stand-in is."""

from __future__ import annotations

from typing import Any


def standin(module: str, name: str) -> type:
    """A class for `module.name`: MindFormers builds some of these at import time (`Shard(0)` in module-level
    sharding plans) and subclasses or isinstance-checks others, which all work; anything else it
    might do with one fails, as it should without the real package."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    doc = f"TEST-ONLY stand-in for {module}.{name}: hyper_parallel is not installed (no registry serves it)."
    return type(name, (), {"__init__": __init__, "__doc__": doc, "__module__": module})
