"""Prometheus metrics named as TF Serving exports them (``/tensorflow/serving/x`` → ``:tensorflow:serving:x``).

Served from a private CollectorRegistry at the monitoring config's path on the REST port.
Exported (labels as TF Serving's util.cc / saved_model loader):

- ``:tensorflow:serving:request_count{model_name,status}`` counter
- ``:tensorflow:serving:request_latency{model_name,API,entrypoint,status}`` histogram, microseconds,
  buckets 10·1.8^i (i < 33)
- ``:tensorflow:serving:request_example_count_total{model}`` counter
- ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}`` counter (status success|fail)
- ``:tensorflow:serving:model_warmup_latency{model_path}`` histogram, microseconds

prometheus_client renames counter TYPE lines to ``<name>_total``; TF Serving writes counters under
their own names, so the exposition text is patched back for the counters above.

With --num_server_processes N > 1 (ours) every process's page is the sum over all of them: the owner gathers each
process's :class:`Snapshot` and sums them (counters and histogram buckets), and one more family says
how the requests spread: ``deployer_model_server_process_requests_total{process,pid}`` (requests each
process answered; process 0 is the owner). A restarted process starts from zero, so merged counters
can drop, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
EXAMPLE_COUNT = ":tensorflow:serving:request_example_count_total"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
_COUNTERS = (REQUEST_COUNT, EXAMPLE_COUNT, LOAD_ATTEMPTS)
PROCESS_REQUESTS = "deployer_model_server_process_requests"

BUCKETS: tuple[float, ...] = tuple(10 * 1.8**i for i in range(33))


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value


Buckets = tuple[list[int], float]  # a histogram's per-bucket counts and sum


@dataclass
class Snapshot:
    """A copy of the metrics of one process (or the sum of several): plain data, so it can be pickled."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=lambda: {n: {} for n in _COUNTERS})
    latency: dict[tuple[str, ...], Buckets] = field(default_factory=dict)
    warmup: dict[tuple[str, ...], Buckets] = field(default_factory=dict)
    # (process index, pid, requests answered) per process, for --num_server_processes > 1
    processes: list[tuple[int, int, float]] = field(default_factory=list)

    def requests(self) -> float:
        return sum(self.counters[REQUEST_COUNT].values())


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots: counters and histogram buckets add up."""
    total = Snapshot()
    for snap in snapshots:
        for name, values in snap.counters.items():
            into = total.counters.setdefault(name, {})
            for key, value in values.items():
                into[key] = into.get(key, 0) + value
        for mine, theirs in ((total.latency, snap.latency), (total.warmup, snap.warmup)):
            for key, (counts, hist_sum) in theirs.items():
                have = mine.get(key)
                if have is None:
                    mine[key] = (list(counts), hist_sum)
                else:
                    mine[key] = ([a + b for a, b in zip(have[0], counts, strict=True)], have[1] + hist_sum)
        total.processes.extend(snap.processes)
    total.processes.sort()
    return total


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _COUNTERS}
        self._latency: dict[tuple[str, ...], _Histogram] = {}
        self._warmup: dict[tuple[str, ...], _Histogram] = {}
        # --num_server_processes > 1: every process's snapshot, summed (server_processes.py); None: this one's.
        self.gather: Callable[[], Snapshot] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def record_request(self, model: str, api: str, entrypoint: str, status: str, latency_us: float) -> None:
        with self._lock:
            counts = self._counters[REQUEST_COUNT]
            counts[(model, status)] = counts.get((model, status), 0) + 1
            key = (model, api, entrypoint, status)
            hist = self._latency.get(key)
            if hist is None:
                hist = self._latency[key] = _Histogram()
            hist.observe(latency_us)

    def record_examples(self, model: str, count: int) -> None:
        with self._lock:
            counts = self._counters[EXAMPLE_COUNT]
            counts[(model,)] = counts.get((model,), 0) + count

    def record_load(self, model_path: str, ok: bool) -> None:
        key = (model_path, "success" if ok else "fail")
        with self._lock:
            counts = self._counters[LOAD_ATTEMPTS]
            counts[key] = counts.get(key, 0) + 1

    def record_warmup(self, model_path: str, latency_us: float) -> None:
        with self._lock:
            hist = self._warmup.get((model_path,))
            if hist is None:
                hist = self._warmup[(model_path,)] = _Histogram()
            hist.observe(latency_us)

    def snapshot(self, process: tuple[int, int] | None = None) -> Snapshot:
        """This process's metrics; ``process`` = (index, pid) adds its line to the per-process family."""
        with self._lock:
            snap = Snapshot(
                {name: dict(values) for name, values in self._counters.items()},
                {key: (list(hist.counts), hist.sum) for key, hist in self._latency.items()},
                {key: (list(hist.counts), hist.sum) for key, hist in self._warmup.items()},
            )
        if process is not None:
            snap.processes.append((process[0], process[1], snap.requests()))
        return snap

    def collect(self) -> Iterator[Any]:
        snap = self.gather() if self.gather is not None else self.snapshot()
        labels = {
            REQUEST_COUNT: ("model_name", "status"),
            EXAMPLE_COUNT: ("model",),
            LOAD_ATTEMPTS: ("model_path", "status"),
        }
        docs = {
            REQUEST_COUNT: "The total number of requests.",
            EXAMPLE_COUNT: "The total number of tensorflow.Examples.",
            LOAD_ATTEMPTS: "The number of times a SavedModel was successfully loaded.",
        }
        for name in _COUNTERS:
            metric = Metric(name, docs[name], "counter")
            for key, value in snap.counters[name].items():
                metric.add_sample(name, dict(zip(labels[name], key, strict=True)), value)
            yield metric
        latency = HistogramMetricFamily(
            REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "API", "entrypoint", "status"],
        )
        for key, (counts, hist_sum) in snap.latency.items():
            latency.add_metric(list(key), _cumulative(counts), hist_sum)
        yield latency
        warmup = HistogramMetricFamily(
            WARMUP_LATENCY,
            "Distribution of wall time (in microseconds) for warming up the model.",
            labels=["model_path"],
        )
        for key, (counts, hist_sum) in snap.warmup.items():
            warmup.add_metric(list(key), _cumulative(counts), hist_sum)
        yield warmup
        if snap.processes:
            processes = CounterMetricFamily(
                PROCESS_REQUESTS,
                "Requests answered by each server process (--num_server_processes; process 0 owns the config).",
                labels=["process", "pid"],
            )
            for index, pid, requests in snap.processes:
                processes.add_metric([str(index), str(pid)], requests)
            yield processes

    def exposition(self) -> bytes:
        text = generate_latest(self.registry).decode("utf-8")
        for name in _COUNTERS:
            text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ")
            text = text.replace(f"# TYPE {name}_total counter", f"# TYPE {name} counter")
        return text.encode("utf-8")


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(BUCKETS, counts, strict=False):
        total += count
        out.append((repr(bound), float(total)))
    total += counts[-1]
    out.append(("+Inf", float(total)))
    return out
