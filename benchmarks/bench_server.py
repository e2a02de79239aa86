"""Benchmark group "server": deployer-model-server throughput/latency against the in-process ceiling.

``run()`` returns a markdown section. Measures, in one run on this machine:
- the in-process rate of the Classify signature (servable.classify, batch 1, one thread): the ceiling;
- batch-1 gRPC Classify with 1 and 8 concurrent client *processes* (no client GIL contention),
  batching off and on: req/s, p50, p99;
- time from process start to the gRPC port opening (first version AVAILABLE);
- RSS added per loaded version (server RSS with 1 then 2 versions loaded).
Run alone: ``python -m benchmarks.bench_server``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DURATION = float(os.environ.get("BENCH_SERVER_SECONDS", "4"))
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _client(target: str, duration: float, start_at: float, out: Any) -> None:
    from deployer.protos import ensure_light_protos

    ensure_light_protos()
    import grpc
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    from tests.savedmodels import IRIS_ROWS

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "clf"
    example = request.input.example_list.examples.add()
    for name, value in zip(("SepalLength", "SepalWidth", "PetalLength", "PetalWidth"), IRIS_ROWS[1], strict=True):
        example.features.feature[name].float_list.value.append(value)
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    stub.Classify(request, timeout=10)
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        began = time.perf_counter()
        stub.Classify(request, timeout=10)
        latencies.append(time.perf_counter() - began)
    out.put(latencies)


def _load(target: str, clients: int) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # let every spawned client import and connect first
    procs = [ctx.Process(target=_client, args=(target, DURATION, start_at, queue)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(queue.get(timeout=120))
    for proc in procs:
        proc.join(timeout=30)
    latencies.sort()
    rate = len(latencies) / DURATION
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    return rate, p50, p99


def _start_server(flags: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    import grpc

    port = _free_port()
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployer.model_server", f"--port={port}", *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
            break
        except grpc.FutureTimeoutError:
            continue
    channel.close()
    return proc, port, time.perf_counter() - started


def _in_process_rate(model_dir: Path) -> float:
    from tensorflow_serving.apis import input_pb2

    from deployer.model_server.servable import Servable
    from tests.savedmodels import IRIS_ROWS, example_bytes

    servable = Servable("clf", 1, str(model_dir))
    request_input = input_pb2.Input()
    request_input.example_list.examples.add().ParseFromString(example_bytes(IRIS_ROWS[1]))
    for _ in range(200):
        servable.classify("", request_input)
    count = 0
    end = time.perf_counter() + DURATION
    while time.perf_counter() < end:
        servable.classify("", request_input)
        count += 1
    servable.close()
    return count / DURATION


def _wait_versions(port: int, count: int) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "clf"
    deadline = time.time() + 60
    while time.time() < deadline:
        states = stub.GetModelStatus(request, timeout=10).model_version_status
        if sum(s.state == 30 for s in states) >= count:
            channel.close()
            return
        time.sleep(0.1)
    raise RuntimeError("versions did not become AVAILABLE")


def run() -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from tests.savedmodels import write_model

    rows: list[str] = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "clf"
        write_model(base, 1, "good")
        ceiling = _in_process_rate(base / "1")
        config = Path(tmp) / "models.config"
        config.write_text(
            f'model_config_list {{ config {{ name: "clf" base_path: "{base}" model_platform: "tensorflow" '
            "model_version_policy { all {} } } }\n"
        )
        batching = Path(tmp) / "batching.config"
        batching.write_text(
            "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 2 }\n"
        )
        startup = rss_per_version = 0.0
        for mode, extra in (("off", []), ("on", ["--enable_batching", f"--batching_parameters_file={batching}"])):
            proc, port, to_available = _start_server(
                [f"--model_config_file={config}", *extra], Path(tmp) / f"server-{mode}.log"
            )
            try:
                if mode == "off":
                    startup = to_available
                    rss_one = _rss_kb(proc.pid)
                    write_model(base, 2, "good")
                    _wait_versions(port, 2)
                    time.sleep(0.5)
                    rss_per_version = (_rss_kb(proc.pid) - rss_one) / 1024
                for clients in (1, 8):
                    rate, p50, p99 = _load(f"127.0.0.1:{port}", clients)
                    loads.append(os.getloadavg()[0])
                    rows.append(f"| {mode} | {clients} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {rate / ceiling:.2f}× |")
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            if mode == "off":
                import shutil

                shutil.rmtree(base / "2")
    return "\n".join(
        [
            "## server",
            "",
            f"deployer-model-server, batch-1 gRPC Classify, {DURATION:.0f} s per cell, client processes, "
            f"{os.cpu_count()} CPUs shared by server and clients.",
            "",
            f"- In-process signature call (ceiling): **{ceiling:,.0f} calls/s**",
            f"- Process start → first version AVAILABLE, port open: **{startup:.1f} s** (includes importing TF)",
            f"- RSS added by a second loaded version: **{rss_per_version:.1f} MiB**",
            f"- Machine load (1-min average, sampled after each cell): {min(loads):.1f}–{max(loads):.1f} "
            "(other work on the machine shares the CPUs; the figures are noisy)",
            "",
            "| batching | clients | req/s | p50 ms | p99 ms | vs ceiling |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
