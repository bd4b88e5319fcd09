"""Work-queue semantics, driven by a fake clock: no test here sleeps."""

from __future__ import annotations

import threading
import time

import pytest

from controller.runtime.clock import FakeClock
from controller.runtime.workqueue import ExponentialBackoff, WorkQueue
from tests.support.poll import poll


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> WorkQueue[str]:
    return WorkQueue(clock=clock)


def drain(queue: WorkQueue[str]) -> list[str]:
    keys = []
    while (key := queue.get(timeout=0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_adds_are_deduplicated_and_fifo(queue: WorkQueue[str]) -> None:
    for key in ["a", "b", "a", "c", "b"]:
        queue.add(key)
    assert len(queue) == 3
    assert drain(queue) == ["a", "b", "c"]
    assert queue.get(timeout=0) is None


def test_key_is_not_handed_out_twice_while_processing(queue: WorkQueue[str]) -> None:
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")  # an event arrives while a worker reconciles "a"
    assert queue.get(timeout=0) is None, "a second worker must not get the key being processed"
    assert len(queue) == 0 and queue.processing() == 1
    queue.done("a")
    assert queue.get(timeout=0) == "a", "the add during processing must not be lost"
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_done_without_new_add_does_not_requeue(queue: WorkQueue[str]) -> None:
    queue.add("a")
    key = queue.get(timeout=0)
    assert key == "a"
    queue.done(key)
    assert len(queue) == 0 and queue.get(timeout=0) is None


def test_add_after_waits_for_the_clock(queue: WorkQueue[str], clock: FakeClock) -> None:
    queue.add_after("a", 5.0)
    assert queue.get(timeout=0) is None
    assert queue.delayed() == 1 and len(queue) == 0
    clock.advance(4.999)
    assert queue.get(timeout=0) is None
    clock.advance(0.001)
    assert queue.get(timeout=0) == "a"
    assert queue.delayed() == 0


def test_add_after_keeps_the_earlier_schedule(queue: WorkQueue[str], clock: FakeClock) -> None:
    queue.add_after("a", 10.0)
    queue.add_after("a", 2.0)
    queue.add_after("a", 7.0)
    assert queue.delayed() == 1
    clock.advance(2.0)
    assert drain(queue) == ["a"]
    clock.advance(10.0)
    assert drain(queue) == [], "superseded schedules must not fire again"


def test_add_after_with_no_delay_adds_now(queue: WorkQueue[str]) -> None:
    queue.add_after("a", 0)
    assert queue.get(timeout=0) == "a"


def test_rate_limited_backoff_grows_per_key_and_forget_resets(clock: FakeClock) -> None:
    queue: WorkQueue[str] = WorkQueue(clock=clock, backoff_base=1.0, backoff_cap=8.0)
    delays = []
    for _ in range(5):
        queue.add_rate_limited("a")
        waited = 0.0
        while (key := queue.get(timeout=0)) is None:
            clock.advance(0.5)
            waited += 0.5
        queue.done(key)
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert queue.num_requeues("a") == 5

    queue.add_rate_limited("b")  # another key has its own count
    assert queue.num_requeues("b") == 1

    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    clock.advance(1.0)
    assert "a" in drain(queue)


def test_default_backoff_is_client_go_5ms_to_1000s() -> None:
    backoff = ExponentialBackoff()
    delays = [backoff.when("k") for _ in range(25)]
    assert delays[:3] == [0.005, 0.01, 0.02]
    assert delays[17] == pytest.approx(0.005 * 2**17)
    assert delays[-1] == 1000.0
    assert max(delays) == 1000.0


def test_get_blocks_until_the_fake_clock_reaches_a_delayed_key(
    queue: WorkQueue[str], clock: FakeClock
) -> None:
    queue.add_after("a", 30.0)
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()

    def advanced() -> bool:
        clock.advance(10.0)
        worker.join(0.01)
        return bool(got)

    poll(advanced, 5, interval=0)
    worker.join(5)
    assert got == ["a"]


def test_get_wakes_on_add_from_another_thread() -> None:
    queue: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout=10)))
    worker.start()
    queue.add("a")
    worker.join(5)
    assert got == ["a"]


def test_get_times_out_on_real_clock() -> None:
    queue: WorkQueue[str] = WorkQueue()
    started = time.monotonic()
    assert queue.get(timeout=0.05) is None
    assert time.monotonic() - started >= 0.05


def test_shutdown_releases_blocked_getters_and_ignores_adds(queue: WorkQueue[str]) -> None:
    got: list[str | None] = ["unset"]
    worker = threading.Thread(target=lambda: got.__setitem__(0, queue.get()))
    worker.start()
    queue.shutdown()
    worker.join(5)
    assert not worker.is_alive() and got == [None]
    queue.add("a")
    queue.add_after("b", 1)
    assert queue.shutting_down and len(queue) == 0 and queue.get(timeout=0) is None


def test_concurrent_workers_never_share_a_key() -> None:
    queue: WorkQueue[str] = WorkQueue()
    in_flight: set[str] = set()
    lock = threading.Lock()
    overlaps: list[str] = []
    processed: list[str] = []

    def worker() -> None:
        while (key := queue.get(timeout=2)) is not None:
            with lock:
                if key in in_flight:
                    overlaps.append(key)
                in_flight.add(key)
            time.sleep(0.0005)  # hold the key briefly so re-adds land while it is in flight
            with lock:
                in_flight.discard(key)
                processed.append(key)
            queue.done(key)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for i in range(2000):
        queue.add(f"k{i % 7}")
    poll(lambda: not (len(queue) or queue.processing()), 10, interval=0.01)
    queue.shutdown()
    for thread in workers:
        thread.join(5)
    assert overlaps == []
    assert set(processed) == {f"k{i}" for i in range(7)}
    assert len(processed) < 2000, "adds of a queued key should have been coalesced"
