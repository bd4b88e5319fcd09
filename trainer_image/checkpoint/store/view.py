"""The store as `respawn_protocol.resolve` reads a checkpoint directory.

A listing of PREFIX/ is laid out in a local scratch directory: each rank's meta.json as it is in the
store, every other object as a sparse file of the object's size. `resolve` with `Check.SIZE` over it
then answers exactly what it answers for a local directory (the newest step committed and present,
at its recorded size, on every rank of its gang; lineage, attempts, fallbacks), without a second
implementation and without downloading any checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from respawn_protocol import safefs
from respawn_protocol.contract import META_FILE
from respawn_protocol.layout import StepKey, is_plain_name, rank_of_dir
from respawn_protocol.meta import Meta, MetaError, read_meta
from respawn_protocol.resolve import Check, Resolution, ResolveError, resolve
from trainer_image.checkpoint.store.client import Settings

MAX_OBJECTS = 524_288  # as safefs caps a directory listing


def lay_out(client: Any, settings: Settings, into: Path) -> int:
    """Mirror the store's listing into `into` (empty); returns how many objects it holds."""
    root = f"{settings.prefix}/" if settings.prefix else ""
    count = 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=root)
    for page in pages:
        for obj in page.get("Contents", ()):
            count += 1
            if count > MAX_OBJECTS:
                raise ResolveError(f"{settings.where()} holds more than {MAX_OBJECTS} objects")
            folder, _, name = obj["Key"][len(root) :].partition("/")
            if rank_of_dir(folder) is None or not is_plain_name(name):
                continue  # not of the layout (another prefix's objects, deeper keys): not ours to read
            local = into / folder / name
            local.parent.mkdir(exist_ok=True)
            if name == META_FILE:
                body = client.get_object(Bucket=settings.bucket, Key=obj["Key"])["Body"]
                local.write_bytes(body.read(safefs.META_MAX_BYTES + 1))
            else:
                with open(local, "wb") as f:
                    f.truncate(int(obj["Size"]))  # sparse: only the size is read (Check.SIZE)
    return count


def newest_complete(
    view: Path,
    world_size: int,
    *,
    exclude: Collection[Path] = (),
    at_most: StepKey | None = None,
    resize: bool = False,
) -> Resolution:
    """The newest step complete on every rank in the laid-out store; random init if none. `resize`:
    the answer may be a step of a gang of another size (its `world_size` says so)."""
    return resolve(
        view,
        True,
        world_size=world_size,
        check=Check.SIZE,
        missing_ok=True,
        exclude=exclude,
        at_most=at_most,
        resize=resize,
    )


def meta_of(view: Path, rank: int) -> Meta | None:
    """A rank's meta.json in the laid-out store; None if absent or unreadable."""
    try:
        return read_meta(view / f"rank_{rank}")
    except MetaError:
        return None


def sizes(view: Path, rank: int) -> dict[str, int]:
    """The rank's objects in the laid-out store (meta.json aside) and their sizes."""
    folder = view / f"rank_{rank}"
    if not folder.is_dir():
        return {}
    return {e.name: e.stat().st_size for e in os.scandir(folder) if e.name != META_FILE}
