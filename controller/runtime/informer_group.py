"""Several informers of one kind read as one cache: how the controller watches a list of namespaces.

A controller that watches a few namespaces holds its permissions there only (a Role per namespace),
so it cannot LIST or WATCH across all namespaces and filter: it runs one informer per namespace.
Objects are keyed `namespace/name`, so the members' keys never collide; reads concatenate the
members' answers (each member's `by_index` is sorted, the group's is sorted too). Lifecycle and
health stay per member (`members`): each shows up as its own readiness check.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence

from controller.runtime.informer import EventHandler, Informer
from controller.runtime.store import IndexFunc, Obj, object_key


class InformerGroup:
    """The read side of `Informer` over `members` (one per namespace)."""

    def __init__(self, members: Sequence[Informer]) -> None:
        if not members:
            raise ValueError("an informer group needs at least one member")
        self.members: tuple[Informer, ...] = tuple(members)

    def on_event(self, handler: EventHandler) -> None:
        for member in self.members:
            member.on_event(handler)

    def before_delete(self, callback: Callable[[Obj], None]) -> None:
        for member in self.members:
            member.before_delete(callback)

    def add_index(self, name: str, func: IndexFunc) -> None:
        for member in self.members:
            member.add_index(name, func)

    def get(self, key: str) -> Obj | None:
        for member in self.members:
            if (obj := member.get(key)) is not None:
                return obj
        return None

    def list(self) -> builtins.list[Obj]:
        return [obj for member in self.members for obj in member.list()]

    def keys(self) -> builtins.list[str]:
        return [key for member in self.members for key in member.keys()]  # noqa: SIM118 - Informers

    def by_index(self, name: str, value: str) -> builtins.list[Obj]:
        found = [obj for member in self.members for obj in member.by_index(name, value)]
        return sorted(found, key=object_key)
