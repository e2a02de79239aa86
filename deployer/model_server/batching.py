"""Inter-request batching, modelled on TF Serving's BatchingSession + BasicBatchScheduler.

Concurrent runs of the same (feeds, fetches) on one servable are queued into batches of at most
``max_batch_size`` rows. A batch is run when it is full, when ``batch_timeout_micros`` have passed
since its first task, or at once when the timeout is 0 — each time only while fewer than
``num_batch_threads`` batches are running. Inputs are concatenated along dimension 0, run as one
callable, and outputs split back by rows.

Limits, with TF Serving's messages: a task larger than ``max_batch_size`` is INVALID_ARGUMENT; a new
batch beyond ``max_enqueued_batches`` is UNAVAILABLE ("The batch scheduling queue to which this task
was submitted is full").

Ours: a batch is run by one of its own requests' threads (leader/follower), not by dedicated batch
threads; ``num_batch_threads`` bounds how many batches run at once, as TF Serving's thread count
does. The queue, the batch formation and the errors are the same, but a request costs no hand-off to
a batch thread and back (each a thread wake-up and a GIL hand-over in Python, which cost more than a
small model's whole run and made batching a loss). A lone request with ``batch_timeout_micros`` 0
runs at once in its own thread, so batching costs nothing when there is nothing to batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from deployer.model_server.config import BatchingParameters
from deployer.model_server.status import ServingError

log = logging.getLogger(__name__)

RunFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class _Task:
    __slots__ = ("batch", "done", "error", "feeds", "result", "size", "wake")

    def __init__(self, feeds: Sequence[np.ndarray], size: int) -> None:
        self.feeds = feeds
        self.size = size
        self.batch: _Batch | None = None
        self.done = False
        self.wake = threading.Event()  # set when done, or when this task's thread may run its batch
        self.result: list[np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("created", "size", "tasks")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.created = time.monotonic()


class BatchScheduler:
    """One queue (TF Serving: one per signature of a servable)."""

    def __init__(self, params: BatchingParameters, run: RunFn, name: str) -> None:
        self._params = params
        self._run = run
        self._name = name
        self._timeout = params.batch_timeout_micros / 1e6
        self._lock = threading.Lock()
        self._batches: collections.deque[_Batch] = collections.deque()
        self._free_slots = params.num_batch_threads
        self._closed = False

    def submit(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        sizes = {int(f.shape[0]) if f.ndim else -1 for f in feeds}
        if len(sizes) != 1 or -1 in sizes:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Batching session Run() input tensors must have equal 0th-dimension size",
            )
        size = sizes.pop()
        max_size = self._params.max_batch_size
        if size > max_size:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {size} is larger than maximum input batch size {max_size}",
            )
        task = _Task(feeds, size)
        with self._lock:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Batch scheduler is shutting down")
            last = self._batches[-1] if self._batches else None
            if last is None or last.size + size > max_size:
                if len(self._batches) >= self._params.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full",
                    )
                last = _Batch()
                self._batches.append(last)
            last.tasks.append(task)
            last.size += size
            task.batch = last
            if last.size >= max_size and last is self._batches[0] and last.tasks[0] is not task:
                # The front batch just filled up: whoever waits out its timeout may run it now.
                self._wake_front()
        self._wait(task)
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for batch in self._batches:
                for task in batch.tasks:
                    task.wake.set()

    def _wake_front(self) -> None:
        """Let the threads of the front batch check whether one of them can run it (lock held)."""
        if self._batches:
            for task in self._batches[0].tasks:
                task.wake.set()

    def _wait(self, task: _Task) -> None:
        while True:
            lead: _Batch | None = None
            wait: float | None = None
            with self._lock:
                if task.done:
                    return
                front = self._batches[0] if self._batches else None
                if front is not None and task.batch is front and self._free_slots > 0:
                    left = front.created + self._timeout - time.monotonic()
                    if front.size >= self._params.max_batch_size or left <= 0 or self._closed:
                        lead = self._batches.popleft()
                        self._free_slots -= 1
                        if self._free_slots > 0:
                            self._wake_front()  # another slot is free for the next batch
                    else:
                        wait = left
                task.wake.clear()
            if lead is None:
                task.wake.wait(wait)
                continue
            try:
                self._process(lead)
            finally:
                with self._lock:
                    self._free_slots += 1
                    self._wake_front()

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            if len(tasks) == 1:
                merged: Sequence[np.ndarray] = tasks[0].feeds
            else:
                merged = [np.concatenate([t.feeds[i] for t in tasks]) for i in range(len(tasks[0].feeds))]
            outputs = self._run(merged)
            if len(tasks) > 1:
                for out in outputs:
                    if out.ndim == 0 or out.shape[0] != batch.size:
                        raise ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                            "sizes of the input tensors",
                        )
        except BaseException as exc:  # the other callers must always be released
            if not isinstance(exc, ServingError):
                log.debug("batch on %s failed: %s", self._name, exc)
            self._finish(tasks, error=exc)
            return
        if len(tasks) == 1:
            tasks[0].result = outputs
        else:
            start = 0
            for task in tasks:
                task.result = [out[start : start + task.size] for out in outputs]
                start += task.size
        self._finish(tasks)

    def _finish(self, tasks: list[_Task], error: BaseException | None = None) -> None:
        with self._lock:
            for task in tasks:
                task.error = error
                task.done = True
                task.wake.set()
