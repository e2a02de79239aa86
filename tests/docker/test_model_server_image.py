"""The model-server conformance suite, run against the server inside the compatible image.

The test bodies are not copied: each class below adopts one module of the local (subprocess) suite,

* ``TestApi``       <- ``tests/grpc/test_model_server_api.py``
* ``TestLifecycle`` <- ``tests/grpc/test_model_server_lifecycle.py``
* ``TestBatching``  <- ``tests/grpc/test_model_server_batching.py``
* ``TestFeeds``     <- ``tests/grpc/test_model_server_feeds.py``
* ``TestProcesses`` <- ``tests/grpc/test_model_server_processes.py`` (--num_server_processes=2; processes
  are signalled and checked inside the container, by their in-container pids)

and this module's ``model_server`` fixture replaces the local one: every server is a container of
``deployer/model-server-compat:<version>`` started through the image's entrypoint (flags appended to
its ``--port=8500 --rest_api_port=8501 --model_name --model_base_path``, later flags win), hardened as
our runtime runs it (uid 10001, read-only root, tmpfs /tmp, no capabilities), with 8500/8501 published
on 127.0.0.1. pytest's base temp directory is bind-mounted read-only at the identical path, so config
files with absolute base paths, and versions or configs written after start, are seen unchanged; its
directories are opened to "other" (pytest makes them 0700) so uid 10001 can read them.

Where the local suite shares one server per module, a class here shares one container (the adopted
module-scoped fixtures become class-scoped; containers are removed at the end of each class).

``run_to_exit`` (startup failures) is rebound for the adopted tests to a container that is expected to
exit: the assertions on its exit code and stderr are the local suite's.

Excluded from collection (cannot apply inside the image):

* ``test_bad_command_lines_fail_at_startup[--port=1]`` ("Both server_options.model_base_path and
  server_options.model_config_file are empty!"): the image's entrypoint, like tensorflow/serving's,
  always passes ``--model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME}``, so through the image that
  flag can never be empty.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import stat
import subprocess
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from docker.errors import DockerException, NotFound

from deployer.manifest import ContainerSettings
from deployer.runtime.docker import DockerRuntime
from tests.grpc import test_model_server_api as api_suite
from tests.grpc import test_model_server_batching as batching_suite
from tests.grpc import test_model_server_feeds as feeds_suite
from tests.grpc import test_model_server_lifecycle as lifecycle_suite
from tests.grpc import test_model_server_processes as processes_suite
from tests.grpc.conftest import STARTUP_TIMEOUT

pytestmark = pytest.mark.docker

GRPC_PORT = "8500/tcp"
REST_PORT = "8501/tcp"
# Containers carry this label with a per-module-run value: teardown removes only its own leftovers.
TEST_LABEL = "deployer.test.model-server-image"

# Parametrised cases of the local suite that cannot arise through the image (see the docstring):
# (test name, predicate on the case's parameter values).
EXCLUDED_CASES: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "test_bad_command_lines_fail_at_startup": lambda case: list(case[0]) == ["--port=1"],
}


# -- the container side -------------------------------------------------------------------------------


class _Docker:
    """What a container needs: the daemon, the image, and the directory to share (set per module)."""

    def __init__(self, runtime: DockerRuntime, image: str, shared: Path) -> None:
        self.client = runtime.client
        self.image = image
        self.shared = shared
        self.preexisting = set(shared.iterdir())
        self.settings = ContainerSettings()
        self.run_id = uuid.uuid4().hex[:12]

    def open_shared(self) -> None:
        """Let uid 10001 read this module's temp directories (pytest creates them 0700).

        Only entries created since the module started are opened: other modules' files keep their modes.
        """
        paths = [self.shared]
        for child in self.shared.iterdir():
            if child not in self.preexisting:
                paths += [child, *child.rglob("*")]
        for path in paths:
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            extra = 0o055 if stat.S_ISDIR(mode) else 0o044
            if mode & extra != extra:
                path.chmod(stat.S_IMODE(mode) | extra)

    def create(self, args: list[str], ports: dict[str, Any]) -> Any:
        self.open_shared()
        return self.client.containers.create(
            self.image,
            command=args,
            name=f"dt-msi-{uuid.uuid4().hex[:10]}",
            labels={TEST_LABEL: self.run_id},
            ports=ports,
            volumes={str(self.shared): {"bind": str(self.shared), "mode": "ro"}},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=self.settings.read_only_root,
            tmpfs={"/tmp": ""},
            mem_limit=self.settings.memory,
            pids_limit=self.settings.pids_limit,
        )


_docker: _Docker | None = None


@pytest.fixture(scope="module", autouse=True)
def docker_env(runtime: DockerRuntime, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Docker]:
    global _docker
    env = _docker = _Docker(runtime, image, tmp_path_factory.getbasetemp().resolve())
    yield env
    _docker = None
    for container in runtime.client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={env.run_id}"}):
        with contextlib.suppress(DockerException):
            container.remove(force=True)


class ContainerServer:
    """``tests.grpc.conftest.RunningServer``'s interface, backed by a container."""

    def __init__(self, container: Any, rest: bool | str, config_path: Path | None) -> None:
        self.container = container
        self.config_path = config_path
        self._logs: str | None = None
        self._exit_code: object = None
        container.reload()
        self.grpc_port = _host_port(container, GRPC_PORT)
        self.rest_port = self.grpc_port if rest == "same" else _host_port(container, REST_PORT) if rest else 0
        self.channel = grpc.insecure_channel(self.target)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def log(self) -> str:
        if self._logs is not None:
            return self._logs
        try:
            return bytes(self.container.logs(stdout=True, stderr=True)).decode(errors="replace")
        except NotFound:
            return ""

    def alive(self) -> bool:
        if self._logs is not None:
            return False
        try:
            self.container.reload()
        except NotFound:
            return False
        return str(self.container.status) == "running"

    def exit_code(self) -> object:
        if self._exit_code is not None:
            return self._exit_code
        return self.container.attrs.get("State", {}).get("ExitCode")

    def _in_container(self, code: str) -> int:
        """Run Python in the container as its user (the server's uid: it may signal the server's processes)."""
        result = self.container.exec_run(["python", "-c", code])
        return int(result.exit_code)

    def signal_process(self, pid: int, sig: signal.Signals) -> None:
        assert self._in_container(f"import os; os.kill({pid}, {int(sig)})") == 0, f"cannot signal {pid}"

    def process_alive(self, pid: int) -> bool:
        if not self.alive():
            return False
        code = f"import sys; s = open('/proc/{pid}/stat').read(); sys.exit(s.rsplit(')', 1)[1].split()[0] == 'Z')"
        return self._in_container(code) == 0

    def stop(self) -> None:
        self.channel.close()
        if self._logs is not None:
            return
        with contextlib.suppress(NotFound):
            self.container.stop(timeout=15)
            self.container.reload()
            self._exit_code = self.container.attrs.get("State", {}).get("ExitCode")
        self._logs = self.log()
        with contextlib.suppress(NotFound):
            self.container.remove(force=True)


def _host_port(container: Any, port: str) -> int:
    bindings = (container.ports or {}).get(port) or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "0.0.0.0", ""):
            return int(binding["HostPort"])
    raise AssertionError(f"container {container.name} did not publish {port}: {container.ports}")


def _wait_until_serving(server: ContainerServer, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            pytest.fail(f"the image's model server exited with {server.exit_code()}:\n{server.log()[-3000:]}")
        try:
            grpc.channel_ready_future(server.channel).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            continue
    logs = server.log()
    server.stop()
    pytest.fail(f"the image's model server did not open its port within {timeout}s:\n{logs[-3000:]}")


@pytest.fixture(scope="class")
def model_server(
    docker_env: _Docker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ContainerServer]]:
    """The local ``model_server`` factory's contract; the server is a container of the image."""
    started: list[ContainerServer] = []

    def start(config: str | None = None, *flags: str, rest: bool | str = True, wait: bool = True) -> ContainerServer:
        workdir = tmp_path_factory.mktemp("server")
        config_path = None
        args = list(flags)
        if config is not None:
            config_path = workdir / "models.config"
            config_path.write_text(config)
            args.append(f"--model_config_file={config_path}")
        # The entrypoint already passes --port=8500 --rest_api_port=8501; only deviations are added.
        ports: dict[str, Any] = {GRPC_PORT: ("127.0.0.1", None)}
        if rest == "same":
            args.append("--rest_api_port=8500")
        elif rest:
            ports[REST_PORT] = ("127.0.0.1", None)
        else:
            args.append("--rest_api_port=0")
        container = docker_env.create(args, ports)
        try:
            container.start()
            server = ContainerServer(container, rest, config_path)
        except BaseException:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
            raise
        started.append(server)
        if wait:
            _wait_until_serving(server)
        return server

    yield start
    for server in started:
        server.stop()


def run_to_exit(*flags: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """``tests.grpc.conftest.run_to_exit`` for the image: a container expected to exit on its own."""
    assert _docker is not None, "docker_env fixture not active"
    container = _docker.create(list(flags), {})
    try:
        container.start()
        try:
            code = int(container.wait(timeout=timeout)["StatusCode"])
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:  # docker-py's read timeout
            raise subprocess.TimeoutExpired(list(flags), timeout) from exc
        stdout = bytes(container.logs(stdout=True, stderr=False)).decode(errors="replace")
        stderr = bytes(container.logs(stdout=False, stderr=True)).decode(errors="replace")
    finally:
        with contextlib.suppress(DockerException):
            container.remove(force=True)
    return subprocess.CompletedProcess(list(flags), code, stdout, stderr)


# -- adopting the local suite ---------------------------------------------------------------------------

# Globals of the adopted tests that must mean the container, not a local process.
_REBOUND: dict[str, object] = {"run_to_exit": run_to_exit}


def _rebind(fn: types.FunctionType) -> types.FunctionType:
    """A copy of ``fn`` whose module globals in ``_REBOUND`` point here; marks are kept."""
    clone = types.FunctionType(
        fn.__code__, {**fn.__globals__, **_REBOUND}, fn.__name__, fn.__defaults__, fn.__closure__
    )
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__qualname__ = fn.__qualname__
    clone.__dict__.update(fn.__dict__)
    excluded = EXCLUDED_CASES.get(fn.__name__)
    if excluded is not None:
        marks = []
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                argnames, cases = mark.args[0], mark.args[1]
                kept = [c for c in cases if not excluded(c if isinstance(c, tuple) else (c,))]
                assert len(kept) < len(cases), f"{fn.__name__}: the excluded case no longer exists"
                mark = pytest.mark.parametrize(argnames, kept, **mark.kwargs).mark
            marks.append(mark)
        clone.pytestmark = marks  # type: ignore[attr-defined]
    return clone


_FIXTURE_TYPE = type(api_suite.server)


def _adopt(module: types.ModuleType, name: str) -> type:
    """A test class holding ``module``'s tests, test classes and (class-scoped) module fixtures."""
    namespace: dict[str, object] = {"__module__": __name__, "__doc__": f"{module.__name__}, inside the image."}
    for attr, obj in vars(module).items():
        if isinstance(obj, _FIXTURE_TYPE):
            # Module-scoped there (one server per module), class-scoped here (one container per class).
            namespace[attr] = pytest.fixture(scope="class", name=attr)(staticmethod(inspect.unwrap(obj)))
        elif inspect.isfunction(obj) and attr.startswith("test_") and obj.__module__ == module.__name__:
            namespace[attr] = staticmethod(_rebind(obj))
        elif inspect.isclass(obj) and attr.startswith("Test") and obj.__module__ == module.__name__:
            namespace[attr] = obj
    return type(name, (), namespace)


TestApi = _adopt(api_suite, "TestApi")
TestLifecycle = _adopt(lifecycle_suite, "TestLifecycle")
TestBatching = _adopt(batching_suite, "TestBatching")
TestFeeds = _adopt(feeds_suite, "TestFeeds")
TestProcesses = _adopt(processes_suite, "TestProcesses")


def test_adopted_suites_are_complete() -> None:
    """Nothing of the local suite is silently dropped: every local test has its image counterpart."""
    adopted = (
        (api_suite, TestApi),
        (lifecycle_suite, TestLifecycle),
        (batching_suite, TestBatching),
        (feeds_suite, TestFeeds),
        (processes_suite, TestProcesses),
    )
    for module, cls in adopted:
        local = {a for a, o in vars(module).items() if a.startswith(("test_", "Test")) and callable(o)}
        assert local == {a for a in vars(cls) if a.startswith(("test_", "Test"))}, module.__name__
