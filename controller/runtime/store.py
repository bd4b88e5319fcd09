"""An informer's cache: objects by key, with secondary indexes kept current on every change (as
client-go's thread-safe store and indexers)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name` for namespaced objects, `name` for cluster-scoped ones (client-go's key)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def index_by_label(label: str) -> IndexFunc:
    """Index by a label's value, prefixed with the object's namespace (`ns/value`) when it has one.

    The prefix makes the index value equal to the owning object's key: pods labelled with a
    TrainingJob's name are found with `by_index(name, "ns/job-name")`.
    """

    def index(obj: Obj) -> list[str]:
        meta = obj.get("metadata") or {}
        value = (meta.get("labels") or {}).get(label)
        if value is None:
            return []
        return [f"{meta['namespace']}/{value}" if meta.get("namespace") else value]

    return index


def index_by_field(*path: str) -> IndexFunc:
    """Index by the string at `path`, e.g. `index_by_field("spec", "nodeName")` for pods by node."""

    def index(obj: Obj) -> list[str]:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        return [value] if isinstance(value, str) and value else []

    return index


class Store:
    """The cache and its indexes, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, Obj] = {}
        self.index_funcs: dict[str, IndexFunc] = {}
        self.indexes: dict[str, dict[str, set[str]]] = {}

    def put(self, key: str, obj: Obj | None) -> Obj | None:
        """Store (or, with None, remove) `key`; return the previous object."""
        with self.lock:
            old = self.objects.pop(key, None) if obj is None else self.objects.get(key)
            if obj is not None:
                self.objects[key] = obj
            for name, func in self.index_funcs.items():
                self._reindex(name, func, key, old, obj)
            return old

    def replace(self, objects: dict[str, Obj]) -> dict[str, Obj]:
        with self.lock:
            old, self.objects = self.objects, objects
            for name, func in self.index_funcs.items():
                self.indexes[name] = {}
                for key, obj in objects.items():
                    self._reindex(name, func, key, None, obj)
            return old

    def add_index(self, name: str, func: IndexFunc) -> None:
        with self.lock:
            if name in self.index_funcs:
                raise ValueError(f"index {name!r} already exists")
            self.index_funcs[name] = func
            self.indexes[name] = {}
            for key, obj in self.objects.items():
                self._reindex(name, func, key, None, obj)

    def _reindex(self, name: str, func: IndexFunc, key: str, old: Obj | None, new: Obj | None) -> None:
        index = self.indexes[name]
        for value in _index_values(func, old):
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]
        for value in _index_values(func, new):
            index.setdefault(value, set()).add(key)


def _index_values(func: IndexFunc, obj: Obj | None) -> list[str]:
    if obj is None:
        return []
    try:
        return list(func(obj))
    except Exception:
        logging.getLogger(__name__).exception("index function failed for %s", object_key(obj))
        return []
