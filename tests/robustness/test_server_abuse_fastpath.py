"""Abuse of the compatible server's transports (issue 9 items 11, 12 and 23), against a real server.

Every test talks to its own ``deployer-model-server`` over loopback sockets; loops are bounded.

- 9.11: idle and half-open REST connections hold a socket, not a thread, and are closed after the
  idle / whole-request deadlines (shortened here through the server's environment).
- 9.12: a 37-byte Predict request claiming a huge shape is refused before anything is allocated
  (peak RSS stays put), as are requests above the size cap.
- 9.23: ``Content-Length: abc / -1 / 100 GB`` get an HTTP 400/413 answer, never a dropped connection
  and a traceback in the log.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests.grpc.conftest import (
    RunningServer,
    config_text,
    free_port,
    model_entry,
    server_command,
    server_env,
    wait_until_serving,
)
from tests.savedmodels import IRIS_ROWS, write_model

IDLE_SECONDS = 2
READ_SECONDS = 3
ROWS_JSON = [dict(zip(("SepalLength", "SepalWidth", "PetalLength", "PetalWidth"), r, strict=True)) for r in IRIS_ROWS]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("abuse")
    write_model(root / "iris", 1, "good")
    config = root / "models.config"
    config.write_text(config_text(model_entry("iris", root / "iris")))
    grpc_port, rest_port = free_port(), free_port()
    env = server_env()
    env["DEPLOYER_REST_IDLE_SECONDS"] = str(IDLE_SECONDS)
    env["DEPLOYER_REST_READ_SECONDS"] = str(READ_SECONDS)
    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            server_command(f"--model_config_file={config}", f"--port={grpc_port}", f"--rest_api_port={rest_port}"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    running = RunningServer(process, grpc_port, rest_port, log_path, config)
    try:
        wait_until_serving(running)
        yield running
    finally:
        running.stop()


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _classify_ok(server: RunningServer) -> None:
    response = requests.post(f"{server.rest}/v1/models/iris:classify", json={"examples": ROWS_JSON}, timeout=10)
    assert response.status_code == 200, response.text


def _raw_http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` and read until the server closes the connection or a full response arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
        return data


# -- 9.23: lying Content-Length --------------------------------------------------------------------


@pytest.mark.parametrize(("value", "status"), [("abc", 400), ("-1", 400), ("100000000000", 413)])
def test_bad_content_length_gets_an_http_error_not_a_dropped_connection(
    server: RunningServer, value: str, status: int
) -> None:
    request = (
        f"POST /v1/models/iris:classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {value}\r\n\r\n{{}}"
    ).encode()
    response = _raw_http(server.rest_port, request)
    assert response.startswith(f"HTTP/1.1 {status} ".encode()), response[:200]
    body = response.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"]
    assert "Traceback" not in server.log()
    _classify_ok(server)


# -- 9.11: idle, half-open and slow connections ---------------------------------------------------------


def test_a_thousand_idle_half_open_connections_hold_no_threads(server: RunningServer) -> None:
    _classify_ok(server)
    threads_before = _status(server.process.pid, "Threads")
    sockets: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
            if i % 2:
                # half a request: headers never finished
                sock.sendall(b"POST /v1/models/iris:classify HTTP/1.1\r\nContent-Length: 10\r\n")
            sockets.append(sock)
        time.sleep(0.5)
        threads_during = _status(server.process.pid, "Threads")
        assert threads_during <= threads_before + 4, (threads_before, threads_during)
        started = time.monotonic()
        _classify_ok(server)  # a real client is still served while they hang on
        assert time.monotonic() - started < 5
    finally:
        for sock in sockets:
            sock.close()
    assert server.alive()


def _closed_by_server(sock: socket.socket, deadline: float, trickle: bool) -> bool:
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(b"X")  # one more header byte: never idle, never complete
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_idle_connection_is_closed_after_the_idle_timeout(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        started = time.monotonic()
        assert _closed_by_server(sock, started + IDLE_SECONDS + 15, trickle=False)
        assert time.monotonic() - started >= IDLE_SECONDS - 0.5


def test_slow_client_is_closed_after_the_read_deadline(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/iris:classify HTTP/1.1\r\nX-Slow: ")
        started = time.monotonic()
        assert _closed_by_server(sock, started + READ_SECONDS + 15, trickle=True)
    _classify_ok(server)


def test_keep_alive_connection_serves_many_requests(server: RunningServer) -> None:
    body = json.dumps({"examples": ROWS_JSON}).encode()
    request = (
        f"POST /v1/models/iris:classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for _ in range(20):
            sock.sendall(request)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200 "), status
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            assert json.loads(reader.read(length))["results"]


# -- 9.12: a tiny Predict request claiming a huge tensor --------------------------------------------------


def _predict_stub(server: RunningServer) -> object:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _huge_claim(alias: str, dtype: int) -> object:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "predict"
    tensor = tensor_pb2.TensorProto(dtype=dtype)
    tensor.tensor_shape.dim.add(size=2**25)  # x 4 float32 = 512 MiB (1 GiB as double)
    tensor.tensor_shape.dim.add(size=4)
    # one value, filled in across the whole shape by TF's rules
    (tensor.double_val if dtype == 2 else tensor.float_val).append(1.0)
    request.inputs[alias].CopyFrom(tensor)
    return request


@pytest.mark.parametrize(
    ("alias", "dtype", "message"),
    [
        ("features", 1, "tensor parsing error: features"),  # right alias and dtype: the size is what lies
        ("nope", 1, "input tensor alias not found in signature: nope"),
        ("features", 2, "Expects arg[0] to be float but double is provided"),
    ],
)
def test_tiny_request_claiming_a_huge_tensor_is_refused_before_allocation(
    server: RunningServer, alias: str, dtype: int, message: str
) -> None:
    request = _huge_claim(alias, dtype)
    assert request.ByteSize() < 64  # type: ignore[attr-defined]
    # Reset the server's peak RSS (VmHWM) to its current RSS, so each case measures only itself.
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")
    peak_before = _status(server.process.pid, "VmHWM")
    with pytest.raises(grpc.RpcError) as info:
        _predict_stub(server).Predict(request, timeout=30)  # type: ignore[attr-defined]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in info.value.details()  # type: ignore[attr-defined]
    grown_kib = _status(server.process.pid, "VmHWM") - peak_before
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
    _classify_ok(server)


def test_request_above_the_size_cap_is_resource_exhausted(server: RunningServer) -> None:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    from deployer.model_server.limits import MAX_REQUEST_BYTES

    rows = MAX_REQUEST_BYTES // 16 + 1
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "predict"
    tensor = tensor_pb2.TensorProto(dtype=1, tensor_content=np.zeros((rows, 4), np.float32).tobytes())
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=4)
    request.inputs["features"].CopyFrom(tensor)
    # The client accepts messages of any size both ways: only the server may refuse this one.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "larger than max" in info.value.details()  # type: ignore[attr-defined]
    _classify_ok(server)
