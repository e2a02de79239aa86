"""Inter-request batching, modelled on TF Serving's BatchingSession + BasicBatchScheduler.

Concurrent runs of the same (feeds, fetches) on one servable are queued into batches of at most
``max_batch_size`` rows. A batch is run when it is full, when ``batch_timeout_micros`` have passed
since its first task, or at once when the timeout is 0 and a batch thread is free. Inputs are
concatenated along dimension 0, run as one ``session.run``, and outputs split back by rows.

Limits, with TF Serving's messages: a task larger than ``max_batch_size`` is INVALID_ARGUMENT; a new
batch beyond ``max_enqueued_batches`` is UNAVAILABLE ("The batch scheduling queue to which this task
was submitted is full").
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
    __slots__ = ("done", "error", "feeds", "result", "size")

    def __init__(self, feeds: Sequence[np.ndarray], size: int) -> None:
        self.feeds = feeds
        self.size = size
        self.done = threading.Event()
        self.result: list[np.ndarray] | None = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("created", "size", "tasks")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.created = time.monotonic()


class BatchScheduler:
    """One queue (TF Serving: one per signature of a servable) with its own batch threads."""

    def __init__(self, params: BatchingParameters, run: RunFn, name: str) -> None:
        self._params = params
        self._run = run
        self._name = name
        self._timeout = params.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._batches: collections.deque[_Batch] = collections.deque()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, feeds: Sequence[np.ndarray], timeout: float | None = None) -> list[np.ndarray]:
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
        with self._cond:
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
                wake = True
            else:
                wake = False
            last.tasks.append(task)
            last.size += size
            # A batch thread needs waking only for a new batch or a full one: joining a batch that is
            # still open changes nothing for a thread already waiting out the front batch's timeout.
            if wake or last.size >= max_size:
                self._cond.notify()
        if not task.done.wait(timeout):
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded while waiting in the batch queue")
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _next_batch(self) -> _Batch | None:
        with self._cond:
            while True:
                if self._batches:
                    front = self._batches[0]
                    wait = front.created + self._timeout - time.monotonic()
                    if front.size >= self._params.max_batch_size or wait <= 0 or self._closed:
                        return self._batches.popleft()
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._process(batch)
            except BaseException as exc:  # the callers must always be released
                log.exception("batch on %s failed", self._name)
                for task in batch.tasks:
                    task.error = exc
                    task.done.set()

    def _process(self, batch: _Batch) -> None:
        tasks = batch.tasks
        if len(tasks) == 1:
            merged: Sequence[np.ndarray] = tasks[0].feeds
        else:
            merged = [np.concatenate([t.feeds[i] for t in tasks]) for i in range(len(tasks[0].feeds))]
        try:
            outputs = self._run(merged)
        except BaseException as exc:
            for task in tasks:
                task.error = exc
                task.done.set()
            return
        if len(tasks) == 1:
            tasks[0].result = outputs
            tasks[0].done.set()
            return
        for out in outputs:
            if out.ndim == 0 or out.shape[0] != batch.size:
                error = ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                    "sizes of the input tensors",
                )
                for task in tasks:
                    task.error = error
                    task.done.set()
                return
        start = 0
        for task in tasks:
            task.result = [out[start : start + task.size] for out in outputs]
            start += task.size
            task.done.set()
