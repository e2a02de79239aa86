"""A --num_server_processes follower without TensorFlow: ``python -m tests.unit.fake_server_process``.

The real ``server_processes.Follower`` (control link, ReplicaCore) with fake servables, for
tests/unit/test_server_processes.py. Behaviour comes from the environment:

- ``FAKE_LOG``: a file each load appends ``<pid> load <name> <version>`` to (and close: ``close``).
- ``FAKE_GATE``: loads wait until this path exists.
- ``FAKE_FAIL``: ``name:version`` whose load fails with FAILED_PRECONDITION "fake load failure".
- ``FAKE_EXIT_AT_START``: a file holding a number; while it is above 0 a start decrements it and
  exits with status 3 before saying hello (a replacement that cannot come up).

One op beyond the real ones, answered here: ``lookup(name, label)`` → the version this process would
serve for the name (and label, if given), or the gRPC status code name of its refusal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from deployer.model_server.metrics import Metrics
from deployer.model_server.server_processes import Follower, follower_role
from deployer.model_server.status import ServingError


class FakeServable:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version

    def close(self) -> None:
        _log(f"close {self.name} {self.version}")


def _log(line: str) -> None:
    path = os.environ.get("FAKE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {line}\n")


def load(name: str, version: int, _path: str) -> FakeServable:
    gate = os.environ.get("FAKE_GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
    if os.environ.get("FAKE_FAIL") == f"{name}:{version}":
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "fake load failure")
    _log(f"load {name} {version}")
    return FakeServable(name, version)


def main() -> int:
    counter = os.environ.get("FAKE_EXIT_AT_START")
    if counter and int(Path(counter).read_text() or "0") > 0:
        Path(counter).write_text(str(int(Path(counter).read_text()) - 1))
        return 3
    role = follower_role()
    assert role is not None, "started without the control socket"
    stopping = threading.Event()
    follower = Follower(role[0], role[1], load, Metrics(), stopping)
    real = follower._handle

    def handle(op: str, args: tuple[Any, ...], cancelled: threading.Event) -> Any:
        if op != "lookup":
            return real(op, args, cancelled)
        name, label = args
        try:
            version = follower.core.version_for_label(name, label) if label else None
            return follower.core.servable_for(name, version).version
        except ServingError as exc:
            return exc.code.name

    follower.link._handler = handle
    follower.start()
    if follower.wait_for_serve():
        follower.serving()
    while not stopping.wait(0.05):
        pass
    follower.core.stop()
    follower.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
