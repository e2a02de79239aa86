"""Fixtures that run ``deployer-model-server`` as a real subprocess on free ports.

``model_server`` is a factory: ``model_server(config_text_or_None, *flags)`` starts a server, waits until
its gRPC port answers (ports open only after every initial model is AVAILABLE) and returns a
``RunningServer``. Every server started is terminated in the fixture's finalizer. If a server cannot
start at all (e.g. the package is not installed), the test skips locally and fails under CI=true.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.conftest import skip_or_fail

STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    # The server must be importable from this checkout even if the venv install is stale.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def server_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "deployer.model_server", *flags]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log_path: Path
    config_path: Path | None
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def exit_code(self) -> int | None:
        return self.process.returncode

    # Processes of the server's own tree, by pid (--num_server_processes tests); the image tier's
    # ContainerServer does the same inside the container.
    def signal_process(self, pid: int, sig: signal.Signals) -> None:
        os.kill(pid, sig)

    def process_alive(self, pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def run_to_exit(*flags: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to exit (bad flags, failed load)."""
    return subprocess.run(
        server_command(*flags), env=server_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def start(config: str | None = None, *flags: str, rest: bool | str = True, wait: bool = True) -> RunningServer:
        """rest: True = a free REST port, False = no REST, "same" = the gRPC port (TF Serving skips REST)."""
        workdir = tmp_path_factory.mktemp("server")
        config_path = None
        args = list(flags)
        if config is not None:
            config_path = workdir / "models.config"
            config_path.write_text(config)
            args.append(f"--model_config_file={config_path}")
        grpc_port = free_port()
        rest_port = grpc_port if rest == "same" else free_port() if rest else 0
        args += [f"--port={grpc_port}", f"--rest_api_port={rest_port}"]
        log_path = workdir / "server.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                server_command(*args), stdout=log_file, stderr=subprocess.STDOUT, env=server_env()
            )
        server = RunningServer(process, grpc_port, rest_port, log_path, config_path)
        started.append(server)
        if wait:
            wait_until_serving(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until_serving(server: RunningServer, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            skip_or_fail(f"model server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            grpc.channel_ready_future(server.channel).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            continue
    server.stop()
    skip_or_fail(f"model server did not open its port within {timeout}s:\n{server.log()[-3000:]}")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def config_text(*models: str) -> str:
    return "model_config_list {\n" + "\n".join(models) + "\n}\n"


def model_entry(name: str, base: Path, policy: str = "", labels: dict[str, int] | None = None) -> str:
    parts = [f'name: "{name}"', f'base_path: "{base}"', 'model_platform: "tensorflow"']
    if policy:
        parts.append(f"model_version_policy {{ {policy} }}")
    for label, version in (labels or {}).items():
        parts.append(f'version_labels {{ key: "{label}" value: {version} }}')
    return "  config { " + " ".join(parts) + " }"


# -- client helpers (public API only: tensorflow-serving-api stubs over a real channel) -------------


def classify(
    channel: grpc.Channel,
    model: str,
    rows: list[tuple[float, ...]] | list[bytes],
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
    timeout: float = 10.0,
) -> object:
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    from tests.savedmodels import example_bytes

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.input.example_list.SetInParent()
    for row in rows:
        raw = row if isinstance(row, bytes) else example_bytes(row)
        request.input.example_list.examples.add().ParseFromString(raw)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Classify(request, timeout=timeout)


def top_classes(response: object) -> list[str]:
    return [max(c.classes, key=lambda k: k.score).label for c in response.result.classifications]  # type: ignore[attr-defined]


def model_states(channel: grpc.Channel, model: str) -> dict[int, tuple[str, int, str]]:
    """version -> (state name, error_code, error_message); {} when the model is unknown."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return {}
        raise
    names = get_model_status_pb2.ModelVersionStatus.State.Name
    return {
        s.version: (names(s.state), s.status.error_code, s.status.error_message) for s in response.model_version_status
    }


def reload_config(channel: grpc.Channel, config: str, timeout: float = 60.0) -> object:
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(text_format.Parse(config, model_server_config_pb2.ModelServerConfig()))
    return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=timeout)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value
