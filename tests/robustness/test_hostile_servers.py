"""deployer's clients against hostile servers: what a REST or gRPC peer can do to `deployer smoke`.

A smoke run talks to whatever answers at the recorded address. Whatever it says (an endless body, a
garbled status line, JSON nested 100k deep, a number beyond float, silence), each case becomes a
failed case with a reason within its timeout: no exception escapes, memory stays bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from deployer.client import ServingClient
from deployer.manifest import ModelSpec
from deployer.smoke import run_smoke, run_smoke_rest
from tests.robustness.conftest import CaseCounter
from tests.savedmodels import FEATURES, IRIS_ROWS

MODEL = ModelSpec.model_validate(
    {
        "name": "iris",
        "trainer": "models.iris.trainer:train",
        "base_path": "/nowhere",
        "features": [{"name": f} for f in FEATURES],
        "classes": ["0", "1", "2"],
        "smoke": [
            {"name": f"row{i}", "features": dict(zip(FEATURES, row, strict=True)), "expect_class": str(i)}
            for i, row in enumerate(IRIS_ROWS)
        ],
    }
)

Behaviour = Callable[[socket.socket], None]


def _http(status: str, body: bytes, headers: str = "") -> Behaviour:
    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}\r\n".encode() + body)

    return answer


def _endless(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b"[" * 65536
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conn.sendall(chunk)


def _silent(conn: socket.socket) -> None:
    time.sleep(5)


def _garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"\x00\xff garbage that is neither HTTP nor HTTP/2 \r\n\r\n" * 10)


BEHAVIOURS: dict[str, Behaviour] = {
    "endless body": _endless,
    "garbled status line": _garbage,
    "deeply nested JSON": _http("200 OK", b"[" * 100_000 + b"]" * 100_000),
    "not JSON": _http("200 OK", b"<html>surprise</html>"),
    "number beyond float": _http("200 OK", b'{"results": [[["0", 1' + b"0" * 400 + b']]]}'),
    "wrong shape": _http("200 OK", b'{"results": "everything is fine"}'),
    "huge error body": _http("500 Internal Server Error", b'{"error": "' + b"x" * 5_000_000 + b'"}'),
    "lying content length": _http("200 OK", b"{}", headers="Content-Length: 99999999999\r\n"),
    "silence": _silent,
}


@pytest.fixture
def hostile() -> Iterator[Callable[[Behaviour], str]]:
    """Start a TCP server answering every connection with ``behaviour``; returns host:port."""
    sockets: list[socket.socket] = []

    def start(behaviour: Behaviour) -> str:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        sockets.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=_handle, args=(conn, behaviour), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in sockets:
        server.close()


def _handle(conn: socket.socket, behaviour: Behaviour) -> None:
    try:
        behaviour(conn)
    except OSError:
        pass
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_rest_smoke_against_hostile_servers_fails_cases_not_the_command(
    hostile: Callable[[Behaviour], str], cases: CaseCounter
) -> None:
    for name, behaviour in BEHAVIOURS.items():
        with cases(f"REST: {name}"):
            address = hostile(behaviour)
            started = time.monotonic()
            report = run_smoke_rest(f"http://{address}", MODEL, label="stable", timeout=2.0)
            assert not report.passed and len(report.failures) == len(MODEL.smoke), name
            assert all(c.error for c in report.failures), name
            assert all(len(c.reason) < 1000 for c in report.failures), name
            # Bounded: each case within its timeout (plus reading at most the response limit).
            assert time.monotonic() - started < 60, name


@pytest.mark.timeout(300)
def test_grpc_smoke_against_hostile_servers_fails_cases_not_the_command(
    hostile: Callable[[Behaviour], str], cases: CaseCounter
) -> None:
    for name in ("garbled status line", "silence", "endless body", "not JSON"):
        with cases(f"gRPC: {name}"):
            client = ServingClient(hostile(BEHAVIOURS[name]), timeout=2.0)
            try:
                started = time.monotonic()
                report = run_smoke(client, MODEL, label="stable", timeout=2.0)
            finally:
                client.close()
            assert not report.passed and all(c.error for c in report.failures), name
            assert time.monotonic() - started < 30, name
