"""Running a read that might block (a FIFO, a hung mount) with a deadline, so that a regression
fails the test instead of hanging the suite."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T], *, fifos: Iterable[Path] = ()) -> T:
    """`fn()`'s result, or AssertionError if it has not returned after `seconds`. A reader stuck
    opening one of `fifos` is released (a writer opens and closes them) so no thread is left."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        raise AssertionError(f"still blocked after {seconds} s")
    if error:
        raise error[0]
    return result[0]
