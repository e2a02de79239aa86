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
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
EXAMPLE_COUNT = ":tensorflow:serving:request_example_count_total"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
_COUNTERS = (REQUEST_COUNT, EXAMPLE_COUNT, LOAD_ATTEMPTS)

BUCKETS: tuple[float, ...] = tuple(10 * 1.8**i for i in range(33))


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(BUCKETS, self.counts, strict=False):
            total += count
            out.append((repr(bound), float(total)))
        total += self.counts[-1]
        out.append(("+Inf", float(total)))
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _COUNTERS}
        self._latency: dict[tuple[str, ...], _Histogram] = {}
        self._warmup: dict[tuple[str, ...], _Histogram] = {}
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

    def collect(self) -> Iterator[Any]:
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
        with self._lock:
            for name in _COUNTERS:
                metric = Metric(name, docs[name], "counter")
                for key, value in self._counters[name].items():
                    metric.add_sample(name, dict(zip(labels[name], key, strict=True)), value)
                yield metric
            latency = HistogramMetricFamily(
                REQUEST_LATENCY,
                "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                labels=["model_name", "API", "entrypoint", "status"],
            )
            for key, hist in self._latency.items():
                latency.add_metric(list(key), hist.buckets(), hist.sum)
            yield latency
            warmup = HistogramMetricFamily(
                WARMUP_LATENCY,
                "Distribution of wall time (in microseconds) for warming up the model.",
                labels=["model_path"],
            )
            for key, hist in self._warmup.items():
                warmup.add_metric(list(key), hist.buckets(), hist.sum)
            yield warmup

    def exposition(self) -> bytes:
        text = generate_latest(self.registry).decode("utf-8")
        for name in _COUNTERS:
            text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ")
            text = text.replace(f"# TYPE {name}_total counter", f"# TYPE {name} counter")
        return text.encode("utf-8")
