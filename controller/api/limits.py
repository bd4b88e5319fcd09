"""Bounds on a TrainingJob that keep one job from exhausting the controller or the API server.

The template is copied into every pod of the gang: its size times `replicas` is what the API
server stores and what the controller sends, so it is capped well below the API server's ~1.5 MiB
per object. The world size is capped in the CRD too; checked here again for jobs admitted before.
"""

from __future__ import annotations

import json
from typing import Any

from controller.api.paths import InvalidSpec

MAX_TEMPLATE_BYTES = 256 * 1024
MAX_WORLD_SIZE = 65536  # replicas x ranksPerPod


def check_template_size(template: dict[str, Any]) -> None:
    size = len(json.dumps(template, separators=(",", ":")))
    if size > MAX_TEMPLATE_BYTES:
        raise InvalidSpec(
            f"spec.template is {size / 1024:.0f} KiB as JSON, more than the {MAX_TEMPLATE_BYTES // 1024} KiB "
            "allowed: it is copied into every worker pod; move large data into a ConfigMap or volume"
        )


def check_world_size(replicas: int, ranks_per_pod: int) -> None:
    if (ranks := replicas * ranks_per_pod) > MAX_WORLD_SIZE:
        raise InvalidSpec(f"spec.replicas x spec.ranksPerPod is {ranks}, more than {MAX_WORLD_SIZE} ranks")
