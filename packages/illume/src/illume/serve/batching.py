"""Gathering concurrent requests into one batch for the model, with a bounded queue.

The model runs on one worker thread (a pipeline is not safe to call from two at once, and one
batch uses every core). Requests wait in a bounded queue; the worker takes the oldest, then, for
up to `window_s`, every waiting request that can share its batch (same task, same sampling
settings) until the batch holds `max_rows` images or answers. A full queue refuses at once
(`QueueFull`: the server's 429), a request past its deadline or whose client went away is
dropped before it reaches the model, and a request's drawing does not depend on its batch: each
carries its own seed, drawn from its own generators (`IllumePipeline.generate_image` with one seed
per prompt).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any


class QueueFull(Exception):
    """The queue holds `max_queue` requests already: try again later."""


class Expired(Exception):
    """The request's deadline passed before the model reached it."""


@dataclass
class Job:
    """One request: `key` says which others may share its batch, `rows` how many images or
    answers it adds to it, `payload` what `run` needs to do it."""

    key: Hashable
    rows: int
    payload: Any
    deadline: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


#: (key, payloads of one batch) -> one result per payload, in order.
Runner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class BatchStats:
    """What the metrics endpoint reports: called by the worker after each batch."""

    on_batch: Callable[[int, float], None] = lambda rows, seconds: None
    on_drop: Callable[[str], None] = lambda reason: None


class Batcher:
    """Args:
    run: does one batch (on the worker thread).
    max_rows: images or answers in one batch at most (a request larger than that runs alone).
    window_s: how long the worker waits for more requests to join a batch.
    max_queue: requests waiting at most; one more is refused with QueueFull.
    """

    def __init__(
        self,
        run: Runner,
        max_rows: int = 16,
        window_s: float = 0.02,
        max_queue: int = 64,
        stats: BatchStats | None = None,
    ):
        if max_rows < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_rows and max_queue must be >= 1 and window_s >= 0")
        self.run, self.max_rows, self.window_s, self.max_queue = run, max_rows, window_s, max_queue
        self.stats = stats or BatchStats()
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="illume-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch the model is on)."""
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(self, key: Hashable, rows: int, payload: Any, timeout_s: float) -> Any:
        """Queues a request and waits for its result; raises QueueFull at once when the queue is
        full and Expired when `timeout_s` passes first (the request is then dropped). A cancelled
        caller (a client that went away) drops it too."""
        loop = asyncio.get_running_loop()
        job = Job(key, rows, payload, time.monotonic() + timeout_s, loop.create_future(), loop)
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._waiting.append(job)
            self._lock.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True
            raise Expired(f"no answer within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout_s)

    # -- the worker -------------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest live request and those that may join it within the window."""
        with self._lock:
            while not self._stop:
                self._drop_dead()
                if self._waiting:
                    break
                self._lock.wait()
            if self._stop:
                return None
            first = self._waiting.popleft()
            batch, rows = [first], first.rows
            closes = time.monotonic() + self.window_s
            while rows < self.max_rows:
                self._drop_dead()
                for job in list(self._waiting):
                    if job.key == first.key and rows + job.rows <= self.max_rows:
                        self._waiting.remove(job)
                        batch.append(job)
                        rows += job.rows
                left = closes - time.monotonic()
                if left <= 0 or rows >= self.max_rows:
                    break
                self._lock.wait(left)
            return batch

    def _drop_dead(self) -> None:
        now = time.monotonic()
        for job in list(self._waiting):
            if job.cancelled or now > job.deadline:
                self._waiting.remove(job)
                self.stats.on_drop("cancelled" if job.cancelled else "expired")
                job.resolve(error=Expired("the deadline passed while the request waited"))

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            for job in batch:
                if job.cancelled:  # its client went away while the batch gathered
                    self.stats.on_drop("cancelled")
            batch = [j for j in batch if not j.cancelled]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = self.run(batch[0].key, [j.payload for j in batch])
            except Exception as err:  # one bad batch answers its requests, the worker lives on
                for job in batch:
                    job.resolve(error=err)
                continue
            finally:
                self.stats.on_batch(sum(j.rows for j in batch), time.perf_counter() - start)
            for job, result in zip(batch, results, strict=True):
                job.resolve(result)
