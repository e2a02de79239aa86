"""Issue 9, item 1: `down -f B` stopped project A's server when B's state dir held A's handle (a
copied state dir, two manifests sharing a state_dir, or a reused pid), and `status -f B` reported A's
server as B's. Ownership is now checked against the manifest: the handle's project and state dir, the
process's command line and start time (local), the container's labels (docker).

The local servers here are real processes (a stand-in script, no TensorFlow); Docker is faked.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer import orchestrate
from deployer.cli import main
from deployer.errors import RuntimeUnavailable, UsageError
from deployer.manifest import Manifest, load_manifest
from deployer.runtime import docker as docker_runtime
from deployer.runtime.base import ServerHandle
from deployer.runtime.local import LocalRuntime, start_ticks
from deployer.state import StateDir
from tests import manifests
from tests.unit.test_orchestrate import FAKE_SERVER, local_spec


def _no_docker(progress: Any = None) -> Any:
    raise RuntimeUnavailable("no daemon in unit tests")


@dataclass
class Project:
    manifest: Manifest
    path: Path

    @property
    def state(self) -> StateDir:
        return StateDir(self.manifest.state_path, self.manifest.project)


def _project(root: Path, name: str, state_dir: str = "state") -> Project:
    root.mkdir(parents=True, exist_ok=True)
    path = manifests.write_manifest(
        root, name, state_dir=state_dir, server={"runtime": "local", "grpc_port": 0, "rest_port": 0}
    )
    return Project(load_manifest(path), path)


@pytest.fixture
def server_a(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Project, ServerHandle]]:
    """Project a with a running (stand-in) local server, recorded in its state dir like `up` does."""
    monkeypatch.setattr(orchestrate, "_docker", _no_docker)
    a = _project(tmp_path / "a", "a")
    runtime = LocalRuntime(a.state.root, command=[sys.executable, "-c", FAKE_SERVER], stop_grace_s=1)
    spec = replace(local_spec(a.state), project="a")
    handle = runtime.start(spec)
    a.state.save_handle(handle)
    try:
        yield a, handle
    finally:
        with suppress(ProcessLookupError):
            os.kill(int(handle.ident), 9)


def _alive(handle: ServerHandle) -> bool:
    return LocalRuntime().state(handle).running


def _copy_state(src: Project, dst: Project, *names: str) -> None:
    dst.state.ensure()
    for name in names:
        shutil.copy(src.state.root / name, dst.state.root / name)


@pytest.mark.parametrize("legacy", [False, True], ids=["handle with owner", "handle from before owners"])
def test_down_and_status_of_b_leave_a_copied_handle_of_a_alone(
    server_a: tuple[Project, ServerHandle], tmp_path: Path, legacy: bool
) -> None:
    a, handle = server_a
    b = _project(tmp_path / "b", "b")
    _copy_state(a, b, "server.json", "server.pid")
    if legacy:  # a server.json written before ownership fields existed
        data = {k: v for k, v in handle.to_json().items() if k in ("runtime", "ident", "name", "grpc_target",
                                                                    "rest_url", "spec_hash", "image", "started_at")}
        b.state.save_handle(ServerHandle.from_json(data))
    status = orchestrate.status(b.manifest)
    assert status.handle is None and not status.running
    report = orchestrate.down(b.manifest)
    assert report.stopped == []
    assert _alive(handle), "down -f B stopped project A's server"
    assert not b.state.handle_file.exists() and not b.state.pid_file.exists()  # B's stale records are cleaned
    # A's own down still works.
    assert [h.ident for h in orchestrate.down(a.manifest).stopped] == [handle.ident]
    assert not _alive(handle)


def test_a_second_manifest_sharing_the_state_dir_is_refused(
    server_a: tuple[Project, ServerHandle], tmp_path: Path
) -> None:
    a, handle = server_a
    b = _project(tmp_path / "b", "b", state_dir=str(a.state.root))
    for command in ("down", "status", "up"):
        result = CliRunner().invoke(main, [command, "-f", str(b.path)])
        assert result.exit_code == 2, result.output
        assert "belongs to project 'a', not 'b'" in result.stderr
    assert _alive(handle)


def test_a_reused_pid_is_not_our_server(server_a: tuple[Project, ServerHandle]) -> None:
    a, handle = server_a
    assert handle.start_ticks == start_ticks(int(handle.ident))
    # The recorded start time is not the running process's: the pid was reused by another process.
    a.state.save_handle(replace(handle, start_ticks=(handle.start_ticks or 0) - 1))
    a.state.write_pid(int(handle.ident), (handle.start_ticks or 0) - 1)
    assert orchestrate.down(a.manifest).stopped == []
    assert _alive(handle)


def test_the_local_runtime_checks_the_manifests_state_dir_not_the_processes(
    server_a: tuple[Project, ServerHandle], tmp_path: Path
) -> None:
    _a, handle = server_a
    b = _project(tmp_path / "b", "b")
    # B's runtime asked to stop A's process: A's command line names A's config, not B's.
    LocalRuntime(b.state.root).stop(handle)
    assert _alive(handle)
    assert LocalRuntime(b.state.root).find("b", b.state.root) is None


# ---- docker ------------------------------------------------------------------------------------


class FakeContainer:
    def __init__(self, project: str, state_dir: str, spec_hash: str = "h") -> None:
        self.id = f"{project}-container-id"
        self.short_id = self.id[:10]
        self.name = f"deployer-{project}"
        self.status = "running"
        self.labels = {
            docker_runtime.LABEL_PROJECT: project,
            docker_runtime.LABEL_MANAGED: "true",
            docker_runtime.LABEL_SPEC_HASH: spec_hash,
            docker_runtime.LABEL_STATE_DIR: state_dir,
        }
        self.ports = {"8500/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1"}],
                      "8501/tcp": [{"HostIp": "127.0.0.1", "HostPort": "2"}]}  # fmt: skip
        self.attrs: dict[str, Any] = {"HostConfig": {"PortBindings": {"8500/tcp": [{"HostIp": "127.0.0.1"}]}}}
        self.stopped = False

    def stop(self, timeout: int) -> None:
        self.stopped = True

    def logs(self, **kwargs: Any) -> bytes:
        return b"fake container log\n"

    def remove(self, force: bool) -> None:
        pass


class FakeContainers:
    def __init__(self, *containers: FakeContainer) -> None:
        self.by_id = {c.id: c for c in containers}

    def get(self, ident: str) -> FakeContainer:
        return self.by_id[ident]

    def list(self, filters: dict[str, Any]) -> list[FakeContainer]:
        wanted = dict(label.split("=", 1) for label in filters["label"])
        return [c for c in self.by_id.values() if all(c.labels.get(k) == v for k, v in wanted.items())]


class FakeNetworks:
    def get(self, name: str) -> Any:
        raise docker_runtime.NotFound("no network")


class FakeDockerClient:
    def __init__(self, *containers: FakeContainer) -> None:
        self.containers = FakeContainers(*containers)
        self.networks = FakeNetworks()


def _docker_handle(container: FakeContainer, **overrides: Any) -> ServerHandle:
    runtime = docker_runtime.DockerRuntime(FakeDockerClient(container))  # type: ignore[arg-type]
    return replace(runtime._handle(container, 1, 2, "127.0.0.1"), **overrides)


def test_docker_stop_refuses_a_container_of_another_project_spec_or_state_dir(tmp_path: Path) -> None:
    container = FakeContainer("a", str(tmp_path / "a" / "state"))
    runtime = docker_runtime.DockerRuntime(FakeDockerClient(container))  # type: ignore[arg-type]
    own = _docker_handle(container)
    for claimed in (
        replace(own, project="b"),
        replace(own, spec_hash="other"),
        replace(own, state_dir=str(tmp_path / "b" / "state")),
        replace(own, name="deployer-b", project=""),
    ):
        with pytest.raises(UsageError, match="leaving it alone"):
            runtime.stop(claimed)
        assert not container.stopped
    runtime.stop(own)
    assert container.stopped


def test_docker_find_skips_the_same_project_name_from_another_state_dir(tmp_path: Path) -> None:
    container = FakeContainer("a", str(tmp_path / "elsewhere"))
    runtime = docker_runtime.DockerRuntime(FakeDockerClient(container))  # type: ignore[arg-type]
    assert runtime.find("a", tmp_path / "state") is None
    assert runtime.find("a", tmp_path / "elsewhere") is not None


def test_down_of_b_with_a_copied_docker_handle_of_a_leaves_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _project(tmp_path / "a", "a"), _project(tmp_path / "b", "b")
    container = FakeContainer("a", str(a.state.root))
    runtime = docker_runtime.DockerRuntime(FakeDockerClient(container))  # type: ignore[arg-type]
    monkeypatch.setattr(orchestrate, "_docker", lambda progress=None: runtime)
    b.state.ensure()
    b.state.save_handle(_docker_handle(container))
    assert orchestrate.status(b.manifest).handle is None
    assert orchestrate.down(b.manifest).stopped == []
    assert not container.stopped
    # The legacy form of the same handle (no owner fields) is recognised as foreign by its container name.
    b.state.save_handle(_docker_handle(container, project="", state_dir=""))
    assert orchestrate.down(b.manifest).stopped == [] and not container.stopped
    assert [h.ident for h in orchestrate.down(a.manifest).stopped] == [container.id] and container.stopped
