"""Benchmark group "server": deployer-model-server against a do-nothing server of the same framework.

``run()`` returns a markdown section. In one run, variants interleaved (every round visits every cell,
each round starting one cell later), medians over the rounds, ratios paired within a round:

- servers (subprocesses on loopback): ``ours`` (iris Classify + a digits-like 8x8 CNN Predict, REST on),
  ``ours+batching`` (--enable_batching with TF Serving's CPU-only starting point: num_batch_threads =
  cores, batch_timeout_micros 0, max_batch_size 32), ``ours×2`` (--num_server_processes=2: two
  processes on the same ports, gRPC and REST at 8 h2load connections), and ``reference``: a do-nothing gRPC server (the
  same grpcio thread-pool server, answering pre-built response bytes without parsing the request) and
  a do-nothing REST server (the same waitress transport, answering a pre-built body): the physical
  limit of the framework on this machine;
- load from ``h2load`` (Debian's nghttp2-client, installed here when missing; gRPC as HTTP/2 POSTs with
  ``content-type: application/grpc`` and a 5-byte length prefix, REST as HTTP/1.1) and from Python
  client processes, 1 and 8 connections, gRPC and REST;
- per cell: req/s, p50/p99 (h2load's per-request log, or the Python clients' own timings), server CPU
  µs per request (utime+stime of the server's processes from /proc), 1-minute load average;
- in-process signature call: ``Servable.classify`` batch 1 with today's C++ callable against the
  ``Session.make_callable(feed_list=...)`` closure it replaced.

Run alone: ``python -m benchmarks.run server`` (or ``python -m benchmarks.bench_server``).
Knobs: BENCH_SERVER_SECONDS (per cell, default 4), BENCH_SERVER_ROUNDS (default 3), BENCH_SERVER_CELLS
(a regex selecting cells by key, e.g. ``cnn|grpc-h2``, for iterating; ``make bench`` runs them all).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DURATION = float(os.environ.get("BENCH_SERVER_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_SERVER_ROUNDS", "3"))
CELLS = os.environ.get("BENCH_SERVER_CELLS", "")  # a regex on cell keys, to run a subset while iterating
ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FEATURES = ("SepalLength", "SepalWidth", "PetalLength", "PetalWidth")
CLASSIFY_PATH = "/tensorflow.serving.PredictionService/Classify"
TWO = "ours×2"  # --num_server_processes=2
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _proc_status(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children (--num_server_processes' followers), live ones only."""
    total = 0.0
    for one in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def _rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MiB."""
    return sum(_proc_status(one, "VmRSS") for one in (pid, *_children(pid))) / 1024


def ensure_h2load() -> str | None:
    """h2load's path, installing Debian's nghttp2-client when it is missing and we may."""
    found = shutil.which("h2load")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nghttp2-client"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    return shutil.which("h2load")


# -- models and requests --------------------------------------------------------------------------------


def write_digits_cnn(base: Path, version: int = 1) -> Path:
    """A digits-like CNN (8x8x1 → conv 3x3x16 → conv 3x3x32 → 2x2 max-pool → dense 64 → softmax 10),
    seeded random weights: Predict ``images`` [None, 8, 8, 1] float32 → ``probabilities`` [None, 10]."""
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> Any:
        return v1.Variable((rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32))

    export_dir = base / str(version)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 8, 8, 1], name="images")
        h = tf.nn.relu(tf.nn.conv2d(images, weight(3, 3, 1, 16), 1, "SAME") + weight(16))
        h = tf.nn.relu(tf.nn.conv2d(h, weight(3, 3, 16, 32), 1, "SAME") + weight(32))
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.matmul(tf.reshape(h, [-1, 4 * 4 * 32]), weight(512, 64)) + weight(64))
        probabilities = tf.nn.softmax(tf.matmul(h, weight(64, 10)) + weight(10), name="probabilities")
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {"images": info(images)}, {"probabilities": info(probabilities)}, "tensorflow/serving/predict"
        )
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()
    return export_dir


def classify_request() -> Any:
    from tensorflow_serving.apis import classification_pb2

    from tests.savedmodels import IRIS_ROWS

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    example = request.input.example_list.examples.add()
    for name, value in zip(FEATURES, IRIS_ROWS[1], strict=True):
        example.features.feature[name].float_list.value.append(value)
    return request


def digits_request() -> Any:
    import numpy as np
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    image = np.random.default_rng(1).random((1, 8, 8, 1), dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=image.tobytes())
    for size in image.shape:
        tensor.tensor_shape.dim.add(size=size)
    request.inputs["images"].CopyFrom(tensor)
    return request


def classify_json() -> bytes:
    import json

    from tests.savedmodels import IRIS_ROWS

    return json.dumps({"examples": [dict(zip(FEATURES, IRIS_ROWS[1], strict=True))]}).encode()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: 1 byte not-compressed, 4 bytes big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# -- the do-nothing reference server --------------------------------------------------------------------


def reference_main(grpc_port: int, rest_port: int, workers: int, classify: bytes, predict: bytes, rest: bytes) -> None:
    """Same frameworks as ours (grpcio thread-pool server, waitress), pre-built answers, nothing parsed."""
    from concurrent import futures

    import grpc

    from deployer.model_server.limits import MAX_REQUEST_BYTES
    from deployer.model_server.rest_api import RestServer

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.so_reuseport", 0),
        ],
    )
    handlers = {
        "Classify": grpc.unary_unary_rpc_method_handler(lambda _request, _context: classify),
        "Predict": grpc.unary_unary_rpc_method_handler(lambda _request, _context: predict),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()

    class _Answer:
        def handle(self, _method: str, _path: str, _body: bytes) -> tuple[int, str, bytes]:
            return 200, "application/json", rest

    RestServer(_Answer(), "127.0.0.1", rest_port, 4 * (os.cpu_count() or 1), MAX_REQUEST_BYTES)  # type: ignore[arg-type]
    server.wait_for_termination()


# -- servers ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    started: float = 0.0

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _wait_ready(server: Server, log_path: Path, timeout: float = 120.0) -> float:
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    ready = grpc.channel_ready_future(channel)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited: {log_path.read_text()[-2000:]}")
            try:
                ready.result(timeout=0.5)
                return time.perf_counter() - server.started
            except grpc.FutureTimeoutError:
                continue
    finally:
        ready.cancel()
        channel.close()
    raise RuntimeError(f"{server.name} did not open its port: {log_path.read_text()[-2000:]}")


def start_server(name: str, argv: list[str], tmp: Path, rest: bool = True) -> tuple[Server, float]:
    grpc_port, rest_port = _free_port(), _free_port() if rest else 0
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, *argv, f"--port={grpc_port}", f"--rest_api_port={rest_port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    server = Server(name, process, grpc_port, rest_port, started)
    return server, _wait_ready(server, log_path)


# -- load generators --------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]
    cpu_us_per_request: float
    load: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def h2load_cell(
    h2load: str, url: str, body: Path, connections: int, streams: int, http1: bool, tmp: Path
) -> tuple[int, float, list[float], int]:
    log_path = tmp / "h2load.log"
    log_path.unlink(missing_ok=True)
    headers = (
        ["-H", "content-type: application/json"]
        if http1
        else ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    )
    argv = [
        h2load,
        *(["--h1"] if http1 else []),
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-D",
        f"{max(1, round(DURATION))}s",
        "-d",
        str(body),
        *headers,
        f"--log-file={log_path}",
        url,
    ]
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=DURATION + 60, check=False).stdout
    seconds = time.perf_counter() - started
    latencies: list[float] = []
    bad = 0
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000)
                bad += parts[1] != "200"
    for line in out.splitlines():
        words = line.replace(",", " ").split()
        if line.startswith("finished in"):  # "finished in 4.00s, 1234.50 req/s, ..."
            took = words[2]
            seconds = float(took[:-2]) / 1000 if took.endswith("ms") else float(took.rstrip("s"))
        elif line.startswith("requests:"):  # "requests: N total, N started, N done, N succeeded, N failed, ..."
            counts = {words[k + 1]: int(words[k]) for k in range(1, len(words) - 1, 2) if words[k].isdigit()}
            bad += counts.get("failed", 0) + counts.get("errored", 0) + counts.get("timeout", 0)
    return len(latencies), seconds, latencies, bad


def _grpc_client(target: str, path: str, message: bytes, duration: float, start_at: float, out: Any) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(path)  # raw bytes both ways: the client's own parsing is not measured
    call(message, timeout=10)
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        began = time.perf_counter()
        call(message, timeout=10)
        latencies.append((time.perf_counter() - began) * 1000)
    out.put(latencies)


def _rest_client(port: int, path: str, body: bytes, duration: float, start_at: float, out: Any) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}

    def once() -> None:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"REST answered {response.status}")

    once()
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        began = time.perf_counter()
        once()
        latencies.append((time.perf_counter() - began) * 1000)
    out.put(latencies)


def python_cell(target: Callable[..., None], args: tuple[Any, ...], clients: int) -> tuple[int, float, list[float]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 2.5  # every spawned client imports and connects first
    procs = [ctx.Process(target=target, args=(*args, DURATION, start_at, queue)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(queue.get(timeout=120))
    for proc in procs:
        proc.join(timeout=30)
    return len(latencies), DURATION, latencies


# -- in-process ------------------------------------------------------------------------------------------


def in_process_rates(model_dir: Path, rounds: int = 5, seconds: float = 1.0) -> tuple[list[float], list[float]]:
    """Servable.classify calls/s, batch 1, one thread: today's C++ callable vs the Python-closure runner."""
    from tensorflow_serving.apis import input_pb2

    from deployer.model_server.servable import Servable
    from tests.savedmodels import IRIS_ROWS, example_bytes

    class Closure(Servable):
        """The runner before issue 10: Session.make_callable(feed_list=...) (a Python Session.run closure)."""

        def _make_callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
            return self._session.make_callable(list(fetches), feed_list=list(feeds))

    ours = Servable("clf", 1, str(model_dir))
    before = Closure("clf", 1, str(model_dir))
    request_input = input_pb2.Input()
    request_input.example_list.examples.add().ParseFromString(example_bytes(IRIS_ROWS[1]))

    def rate(servable: Servable) -> float:
        for _ in range(100):
            servable.classify("", request_input)
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            servable.classify("", request_input)
            count += 1
        return count / seconds

    new_rates, old_rates = [], []
    for _ in range(rounds):
        new_rates.append(rate(ours))
        old_rates.append(rate(before))
    ours.close()
    before.close()
    return new_rates, old_rates


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    key: str
    server: str
    transport: str  # grpc | rest
    client: str  # h2load | python
    connections: int
    streams: int = 1
    model: str = "iris"
    results: list[Result] = field(default_factory=list)


def _cells(has_h2load: bool) -> list[Cell]:
    cells: list[Cell] = []
    for c in (1, 8):
        if has_h2load:
            for server in ("reference", "ours", "ours+batching"):
                cells.append(Cell(f"grpc-h2-{server}-{c}", server, "grpc", "h2load", c))
            for server in ("reference", "ours"):
                cells.append(Cell(f"rest-h2-{server}-{c}", server, "rest", "h2load", c))
            if c == 8:
                cells.append(Cell(f"grpc-h2-{TWO}-{c}", TWO, "grpc", "h2load", c))
                cells.append(Cell(f"rest-h2-{TWO}-{c}", TWO, "rest", "h2load", c))
        cells.append(Cell(f"grpc-py-ours-{c}", "ours", "grpc", "python", c))
        cells.append(Cell(f"rest-py-ours-{c}", "ours", "rest", "python", c))
    if has_h2load:
        for streams in (1, 4):
            for server in ("ours", "ours+batching"):
                cells.append(Cell(f"cnn-{server}-8x{streams}", server, "grpc", "h2load", 8, streams, "digits"))
    return cells


def _bad_requests(server: Server) -> int:
    """Non-OK statuses our server recorded (its Prometheus request_count): h2load cannot see grpc-status."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics", timeout=10).read().decode()
    bad = 0
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' not in line:
            bad += int(float(line.rsplit(" ", 1)[1]))
    return bad


def run() -> str:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from deployer.protos import ensure_light_protos

    ensure_light_protos()
    from tests.savedmodels import write_model

    h2load = ensure_h2load()
    loads = [os.getloadavg()[0]]
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_model(tmp / "iris", 1, "good")
        write_digits_cnn(tmp / "digits")
        new_rates, old_rates = in_process_rates(tmp / "iris" / "1")
        config = tmp / "models.config"
        config.write_text(
            "model_config_list {\n"
            f'  config {{ name: "iris" base_path: "{tmp / "iris"}" model_platform: "tensorflow" '
            "model_version_policy { all {} } }\n"
            f'  config {{ name: "digits" base_path: "{tmp / "digits"}" model_platform: "tensorflow" }}\n}}\n'
        )
        monitoring = tmp / "monitoring.config"
        monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
        cores = os.cpu_count() or 1
        batching = tmp / "batching.config"
        batching.write_text(
            f"max_batch_size {{ value: 32 }}\nbatch_timeout_micros {{ value: 0 }}\n"
            f"max_enqueued_batches {{ value: 1000 }}\nnum_batch_threads {{ value: {cores} }}\n"
        )
        classify_bytes = classify_request().SerializeToString()
        digits_bytes = digits_request().SerializeToString()
        rest_body = classify_json()
        bodies = {"iris-grpc": tmp / "iris.grpc", "digits-grpc": tmp / "digits.grpc", "iris-rest": tmp / "iris.json"}
        bodies["iris-grpc"].write_bytes(grpc_frame(classify_bytes))
        bodies["digits-grpc"].write_bytes(grpc_frame(digits_bytes))
        bodies["iris-rest"].write_bytes(rest_body)
        common = [
            "-m",
            "deployer.model_server",
            f"--model_config_file={config}",
            f"--monitoring_config_file={monitoring}",
        ]
        try:
            servers["ours"], startup = start_server("ours", common, tmp)
            rss_one = _proc_status(servers["ours"].pid, "VmRSS")
            write_model(tmp / "iris", 2, "good")
            _wait_versions(servers["ours"].grpc_port, 2)
            time.sleep(0.5)
            rss_per_version = (_proc_status(servers["ours"].pid, "VmRSS") - rss_one) / 1024
            servers["ours+batching"], _ = start_server(
                "ours+batching", [*common, "--enable_batching", f"--batching_parameters_file={batching}"], tmp
            )
            servers[TWO], _ = start_server(TWO, [*common, "--num_server_processes=2"], tmp)
            _wait_versions(servers[TWO].grpc_port, 2)
            time.sleep(1.0)  # the follower binds its ports just after the owner
            memory = (_rss_mib(servers["ours"].pid), _rss_mib(servers[TWO].pid))
            # pre-built answers: what ours answers to the same requests
            import grpc

            answers = {}
            with grpc.insecure_channel(f"127.0.0.1:{servers['ours'].grpc_port}") as channel:
                answers["classify"] = channel.unary_unary(CLASSIFY_PATH)(classify_bytes, timeout=30)
                answers["predict"] = channel.unary_unary(PREDICT_PATH)(digits_bytes, timeout=30)
            import urllib.request

            rest_answer = urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{servers['ours'].rest_port}/v1/models/iris:classify",
                    data=rest_body,
                    headers={"Content-Type": "application/json"},
                ),
                timeout=30,
            ).read()
            ref_args = (answers["classify"], answers["predict"], rest_answer)
            grpc_port, rest_port = _free_port(), _free_port()
            workers = max(8, 4 * cores)
            ctx = mp.get_context("spawn")
            reference = ctx.Process(target=reference_main, args=(grpc_port, rest_port, workers, *ref_args), daemon=True)
            ref_started = time.perf_counter()
            reference.start()
            assert reference.pid is not None
            servers["reference"] = Server("reference", _ProcessHandle(reference), grpc_port, rest_port, ref_started)  # type: ignore[arg-type]
            _wait_ready(servers["reference"], tmp / "reference.log")
            _wait_rest(rest_port)

            cells = [cell for cell in _cells(h2load is not None) if re.search(CELLS, cell.key)]
            for server_name, server in servers.items():  # warm every server and path once
                if h2load is None:
                    break
                for cell in cells:
                    if cell.server == server_name and cell.client == "h2load":
                        _measure(cell, server, h2load, bodies, classify_bytes, digits_bytes, rest_body, tmp, warm=True)
            bad_before = {name: _bad_requests(s) for name, s in servers.items() if name != "reference"}
            spread_before = _process_requests(servers[TWO])
            for round_index in range(ROUNDS):
                order = cells[round_index % len(cells) :] + cells[: round_index % len(cells)]
                for cell in order:
                    result = _measure(
                        cell, servers[cell.server], h2load, bodies, classify_bytes, digits_bytes, rest_body, tmp
                    )
                    cell.results.append(result)
                    loads.append(result.load)
            failed = sum(_bad_requests(s) - bad_before[name] for name, s in servers.items() if name != "reference")
            spread_after = _process_requests(servers[TWO])
            spread = {i: spread_after.get(i, 0.0) - spread_before.get(i, 0.0) for i in spread_after}
        finally:
            for server in servers.values():
                server.stop()
    extra = _Extra(startup, rss_per_version, memory, spread)
    return _report(cells, new_rates, old_rates, extra, loads, failed, h2load)


@dataclass
class _Extra:
    startup: float
    rss_per_version: float
    memory: tuple[float, float]  # RSS MiB: ours, ours×2 (both processes)
    spread: dict[int, float]  # ours×2: requests answered per process index during the rounds


def _process_requests(server: Server) -> dict[int, float]:
    """process index -> requests answered (--num_server_processes' line on the merged metrics page)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/metrics", timeout=10).read().decode()
    found = re.findall(r'deployer_model_server_process_requests_total\{pid="\d+",process="(\d+)"\} (\S+)', text)
    return {int(index): float(count) for index, count in found}


class _ProcessHandle:
    """A multiprocessing.Process seen through the few Popen methods Server uses."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return None if self._process.is_alive() else int(self._process.exitcode or 0)

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.is_alive():
            raise subprocess.TimeoutExpired("reference", timeout or 0)
        return int(self._process.exitcode or 0)


def _wait_rest(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("reference REST did not open its port")


def _wait_versions(port: int, count: int) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "iris"
        deadline = time.time() + 60
        while time.time() < deadline:
            states = stub.GetModelStatus(request, timeout=10).model_version_status
            if sum(s.state == 30 for s in states) >= count:
                return
            time.sleep(0.1)
    raise RuntimeError("versions did not become AVAILABLE")


def _measure(
    cell: Cell,
    server: Server,
    h2load: str | None,
    bodies: dict[str, Path],
    classify_bytes: bytes,
    digits_bytes: bytes,
    rest_body: bytes,
    tmp: Path,
    warm: bool = False,
) -> Result:
    global DURATION
    saved = DURATION
    if warm:
        DURATION = 1.0
    try:
        cpu_before = _cpu_seconds(server.pid)
        if cell.client == "h2load":
            assert h2load is not None
            if cell.transport == "grpc":
                path = PREDICT_PATH if cell.model == "digits" else CLASSIFY_PATH
                body = bodies["digits-grpc" if cell.model == "digits" else "iris-grpc"]
                url = f"http://127.0.0.1:{server.grpc_port}{path}"
            else:
                body, url = bodies["iris-rest"], f"http://127.0.0.1:{server.rest_port}/v1/models/iris:classify"
            count, seconds, latencies, bad = h2load_cell(
                h2load, url, body, cell.connections, cell.streams, cell.transport == "rest", tmp
            )
        else:
            if cell.transport == "grpc":
                args: tuple[Any, ...] = (f"127.0.0.1:{server.grpc_port}", CLASSIFY_PATH, classify_bytes)
                count, seconds, latencies = python_cell(_grpc_client, args, cell.connections)
            else:
                args = (server.rest_port, "/v1/models/iris:classify", rest_body)
                count, seconds, latencies = python_cell(_rest_client, args, cell.connections)
            bad = 0
        cpu = _cpu_seconds(server.pid) - cpu_before
    finally:
        DURATION = saved
    return Result(count, seconds, latencies, cpu * 1e6 / max(count, 1), os.getloadavg()[0], bad)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(
    cells: list[Cell],
    new_rates: list[float],
    old_rates: list[float],
    extra: _Extra,
    loads: list[float],
    failed: int,
    h2load: str | None,
) -> str:
    startup, rss_per_version = extra.startup, extra.rss_per_version
    by_key = {cell.key: cell for cell in cells}

    def paired(a: str, b: str, metric: Callable[[Result], float]) -> list[float]:
        if a not in by_key or b not in by_key:
            return []
        return [metric(x) / metric(y) for x, y in zip(by_key[a].results, by_key[b].results, strict=True) if metric(y)]

    def rate(result: Result) -> float:
        return result.rate

    def p99(result: Result) -> float:
        return result.percentile(0.99)

    def span(values: list[float]) -> str:
        if not values:
            return "n/a"
        return f"**{_median(values):.2f}×** ({min(values):.2f}–{max(values):.2f})"

    rows = []
    for cell in cells:
        rs = cell.results
        label = {"iris": "iris Classify", "digits": "digits CNN Predict"}[cell.model]
        conns = f"{cell.connections}" + (f"×{cell.streams}" if cell.streams > 1 else "")
        rows.append(
            f"| {label} | {cell.transport} | {cell.client} | {conns} | {cell.server} | "
            f"{_median([r.rate for r in rs]):,.0f} | {_median([r.percentile(0.5) for r in rs]):.2f} | "
            f"{_median([r.percentile(0.99) for r in rs]):.2f} | {_median([r.cpu_us_per_request for r in rs]):,.0f} | "
            f"{_median([r.load for r in rs]):.1f} |"
        )
    in_process = [n / o for n, o in zip(new_rates, old_rates, strict=True)]
    goals = []

    def verdict(values: list[float], at_least: float | None = None, at_most: float | None = None) -> str:
        if not values:
            return "not measured"
        value = _median(values)
        ok = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
        return "**met**" if ok else "**not met**"

    g_rate = paired("grpc-h2-ours-8", "grpc-h2-reference-8", rate)
    g_p99 = paired("grpc-h2-ours-8", "grpc-h2-reference-8", p99)

    def goal(text: str, values: list[float], at_least: float | None = None, at_most: float | None = None) -> None:
        goals.append(f"| {text} | {span(values)} | {verdict(values, at_least, at_most)} |")

    goal("gRPC, 8 h2load connections: req/s vs do-nothing reference ≥ 0.6×", g_rate, 0.6)
    goal("gRPC, 8 h2load connections: p99 vs do-nothing reference ≤ 2×", g_p99, at_most=2.0)
    for c in (1, 8):
        rest_h2 = paired(f"rest-h2-ours-{c}", f"grpc-h2-ours-{c}", rate)
        goal(f"REST vs gRPC req/s, {c} h2load connection(s) ≥ 0.8×", rest_h2, 0.8)
        rest_py = paired(f"rest-py-ours-{c}", f"grpc-py-ours-{c}", rate)
        goal(f"REST vs gRPC req/s, {c} Python client(s) ≥ 0.8×", rest_py, 0.8)
    goal("In-process signature call vs the closure runner ≥ 3×", in_process, 3.0)
    b8 = paired("grpc-h2-ours+batching-8", "grpc-h2-ours-8", rate)
    goal("--enable_batching vs off, iris, 8 connections ≥ 1× (break even)", b8, 1.0)
    b32 = paired("cnn-ours+batching-8x4", "cnn-ours-8x4", rate)
    goal("--enable_batching vs off, digits CNN, 32 requests in flight > 1× (wins)", b32, 1.0)
    two_rows = []
    for api in ("grpc", "rest"):
        for what, metric in (("req/s", rate), ("p99", p99)):
            for against in ("ours", "reference"):
                values = paired(f"{api}-h2-{TWO}-8", f"{api}-h2-{against}-8", metric)
                name = "one process" if against == "ours" else "do-nothing reference"
                two_rows.append(f"| {api} | {what} vs {name} | {span(values)} |")
    total = sum(extra.spread.values())
    share = (
        ", ".join(f"process {i} {100 * n / total:.0f}%" for i, n in sorted(extra.spread.items()))
        if total
        else "not measured"
    )
    h2 = f"h2load at {h2load}" if h2load else "h2load unavailable: its rows and goals not measured"
    lines = [
        "## server",
        "",
        f"deployer-model-server on loopback, {DURATION:.0f} s per cell, {ROUNDS} rounds with the cells interleaved "
        f"(each round starts one cell later); medians over the rounds. {os.cpu_count()} CPUs shared by the "
        "servers and the load generators. `reference` = a do-nothing server of the same framework (grpcio "
        "thread pool / waitress) answering pre-built bytes: the physical limit. `ours+batching` = "
        "`--enable_batching` with num_batch_threads = cores, batch_timeout_micros 0, max_batch_size 32. "
        "h2load = Debian's nghttp2-client (C, ~50 µs CPU per request); python = client processes (raw-bytes "
        "gRPC stubs, http.client keep-alive). Server CPU is the utime+stime per request of the server's processes "
        f"(both for `{TWO}`).",
        "",
        f"- Load generator: {h2}",
        f"- Requests that failed on our servers during the rounds (their Prometheus request_count): **{failed}**",
        f"- In-process `Servable.classify` (batch 1, one thread): **{_median(new_rates):,.0f} calls/s** with the "
        f"C++ callable, {_median(old_rates):,.0f} with the `Session.make_callable(feed_list=…)` closure it replaced",
        f"- Process start → first version AVAILABLE, port open: **{startup:.1f} s** (includes importing TF)",
        f"- RSS added by a second loaded version (iris): **{rss_per_version:.1f} MiB**",
        f"- RSS with both models loaded: one process **{extra.memory[0]:,.0f} MiB**, "
        f"`--num_server_processes=2` **{extra.memory[1]:,.0f} MiB** (both processes)",
        f"- Machine load (1-min average, after each cell): {min(loads):.1f}–{max(loads):.1f} (other developers' work "
        "shares the CPUs)",
        "",
        "| workload | API | client | connections | server | req/s | p50 ms | p99 ms | server CPU µs/req | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Goals (ratios paired within a round; median, min–max over the rounds):",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
        *goals,
        "",
        f"`{TWO}` (`--num_server_processes=2`) at 8 h2load connections, ratios paired within a round; the kernel "
        f"spread its requests: {share} (SO_REUSEPORT hashes each connection to one process).",
        "",
        "| API | ratio | measured |",
        "|---|---|---|",
        *two_rows,
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
