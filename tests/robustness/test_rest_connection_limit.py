"""The REST server bounds its open connections (issue 9, item 11: 1,000 idle connections were 1,017 threads).

test_server_abuse_fastpath checks that idle and slow connections hold no thread and are closed after the
idle / read deadlines; this checks the bound itself. It is lowered to 16 and exceeded with idle
connections: a new client is not served while they are open (it waits in the listen backlog) and is
served once they close.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from deployer.model_server import rest_api


class _Api:
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        return 200, "application/json", b"{}"


def _get(port: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET /v1/models/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(64)


def test_connections_beyond_the_limit_wait_until_one_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rest_api, "REST_MAX_CONNECTIONS", 16)
    server = rest_api.start_rest_server(_Api(), "127.0.0.1", 0, threads=2)  # type: ignore[arg-type]
    idle: list[socket.socket] = []
    try:
        assert _get(server.port, 5).startswith(b"HTTP/1.1 200")
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
        time.sleep(0.5)  # let the server accept what it will
        with pytest.raises(TimeoutError):
            _get(server.port, 1.5)  # at the limit: not accepted, so never answered
        for sock in idle:
            sock.close()
        idle = []
        deadline = time.monotonic() + 10
        answer: Any = b""
        while time.monotonic() < deadline and not answer:
            try:
                answer = _get(server.port, 2)
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
