"""RFC 3339 timestamps as the API server writes them, and as respawn writes them into status."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    # Sub-second precision: backoffs of zero or a few seconds must not round to the wrong side.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
