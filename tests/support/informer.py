"""An informer event handler that records what it was given."""

from __future__ import annotations

from typing import Any

from controller.runtime.store import object_key

Event = tuple[str, str, str | None]  # (event type, object key, the old object's resourceVersion)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        old_rv = old["metadata"]["resourceVersion"] if old else None
        self.events.append((event_type, object_key(obj), old_rv))
