"""The paths a TrainingJob names on the shared volume, checked again by the controller.

The CRD's CEL rules and the chart's admission policy check the same; a controller may still meet a
job admitted under an older CRD, or on a cluster without the policy.
"""

from __future__ import annotations

from typing import Any


class InvalidSpec(ValueError):
    """A spec the controller cannot act on; reported on the job, never retried."""


def check_path(field: str, path: Any, *, absolute: bool) -> None:
    """The CRD's path rules, again: a controller may meet a job admitted under an older CRD."""
    if not isinstance(path, str):
        raise InvalidSpec(f"{field} must be a string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InvalidSpec(f"{field} {path!r} must not contain control characters")
    if path.startswith("/") != absolute:
        where = "an absolute path" if absolute else "relative to the shared volume (no leading '/')"
        raise InvalidSpec(f"{field} {path!r} must be {where}")
    segments = path[1:].split("/") if absolute else path.split("/")
    if ".." in segments and not absolute:
        raise InvalidSpec(f"{field} {path!r} must stay inside the shared volume (no '..' segments)")
    if {"", ".", ".."} & set(segments):
        raise InvalidSpec(
            f"{field} {path!r} must be normalized (no empty, '.' or '..' segments, no trailing '/')"
        )


def check_tenant(output_dir: str, namespace: str) -> None:
    """Tenant isolation: a job writes under its own namespace's directory of the shared volume."""
    if namespace and output_dir != namespace and not output_dir.startswith(namespace + "/"):
        raise InvalidSpec(
            f"spec.outputDir {output_dir!r} must lie under the job's namespace directory {namespace + '/'!r}"
        )
