"""``--num_server_processes`` checks that need the host's process table and network namespace, so the image
tier does not adopt them (tests/grpc/test_model_server_processes.py is the adopted conformance suite)."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.grpc.conftest import RunningServer, config_text, free_port, model_entry, run_to_exit, wait_for
from tests.grpc.test_model_server_processes import per_process
from tests.savedmodels import write_model

pytestmark = pytest.mark.grpc


def test_a_port_another_server_shares_is_refused_not_joined(tmp_path: Path) -> None:
    """SO_REUSEPORT would let the fleet join a port another server (same user, SO_REUSEPORT too) listens
    on, splitting its traffic: the owner must fail as a plain bind would."""
    write_model(tmp_path / "clf", 1, "good")
    port = free_port()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        result = run_to_exit(
            f"--port={port}", "--rest_api_port=0", f"--model_base_path={tmp_path / 'clf'}", "--num_server_processes=2"
        )
    assert result.returncode == 255, result.stderr[-3000:]  # as any failed start (main.cc returns -1)
    assert f"Failed to start server. Error: INVALID_ARGUMENT: cannot listen on 127.0.0.1:{port}" in result.stdout
    started = re.findall(r"Started server process 1 \(pid (\d+)\)", result.stderr)
    assert started and all(_gone(int(pid)) for pid in started), "no follower outlives a failed start"


def test_followers_stop_when_the_owner_is_killed(
    model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("models")
    write_model(root / "clf", 1, "good")
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    config = config_text(model_entry("clf", root / "clf"))
    server = model_server(config, "--num_server_processes=2", f"--monitoring_config_file={monitoring}")
    wait_for(lambda: len(per_process(server)) == 2, what="two processes")
    follower = per_process(server)[1][0]
    server.process.send_signal(signal.SIGKILL)  # no clean-up at all in the owner
    server.process.wait(10)
    wait_for(lambda: _gone(follower), timeout=60, what="the follower to exit")
    for port in (server.grpc_port, server.rest_port):  # nothing holds the ports any more
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False
