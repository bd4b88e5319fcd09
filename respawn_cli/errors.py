"""What `respawn` tells the user when it cannot do what was asked: one line on stderr and an exit
code per kind of trouble (the table in docs/cli.md), never a traceback."""

from __future__ import annotations

import json
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the kubernetes client takes a second to import: not for --version or plot
    import urllib3
    from kubernetes.client.rest import ApiException


class Exit(IntEnum):
    OK = 0
    API_ERROR = 1  # the API server answered with an error not listed below (5xx, 429, ...)
    USAGE = 2  # a wrong option or argument, an unknown plot format
    NO_CONFIG = 3  # no kubeconfig and not in a pod, or a kubeconfig that cannot be used
    UNREACHABLE = 4  # no answer from the API server: refused, timed out, TLS, DNS
    DENIED = 5  # 401 or 403
    NOT_FOUND = 6  # no such TrainingJob, or no TrainingJob resource on that server
    BAD_INPUT = 7  # an output dir, steps.jsonl or reference that is missing, unreadable or empty
    CANNOT_WRITE = 8  # the plot file cannot be written
    INTERNAL = 70  # a bug in respawn (EX_SOFTWARE); RESPAWN_DEBUG=1 shows the traceback
    INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    """Ends the command with `message` (one line) and `code`."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(one_line(message))
        self.code = code


def one_line(text: str) -> str:
    """Messages from files and servers may hold newlines; the user gets one line."""
    return " ".join(str(text).split())


def from_api(exc: ApiException, what: str) -> CliError:
    """An API server's refusal, in its own words where it gave some (a Status body)."""
    message = _status_message(exc.body) or exc.reason or ""
    if exc.status in (401, 403):
        verb = "not authenticated" if exc.status == 401 else "not allowed"
        return CliError(Exit.DENIED, f"{verb} ({exc.status}): {message}")
    if exc.status == 404:
        # A missing object is a Status; a resource the server does not serve, a plain-text page.
        if _status_message(exc.body) is not None:
            return CliError(Exit.NOT_FOUND, f"{what} not found")
        return CliError(
            Exit.NOT_FOUND, "the API server has no TrainingJob resource (are respawn's CRDs installed?)"
        )
    return CliError(Exit.API_ERROR, f"the API server answered {exc.status} {exc.reason}: {message}")


def from_transport(exc: urllib3.exceptions.HTTPError | OSError, host: str) -> CliError:
    reason: Any = getattr(exc, "reason", None) or exc
    return CliError(Exit.UNREACHABLE, f"cannot reach the API server at {host}: {_cause(reason)}")


def _cause(reason: Any) -> str:
    """urllib3 wraps the socket's error in a pool's description; the last clause is the cause."""
    text = one_line(str(reason))
    return text.rsplit(": ", 1)[-1] if "HTTPConnection" in text or "HTTPSConnection" in text else text


def _status_message(body: Any) -> str | None:
    try:
        status = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return None
    message = status.get("message") if isinstance(status, dict) else None
    return one_line(message) if isinstance(message, str) else None
