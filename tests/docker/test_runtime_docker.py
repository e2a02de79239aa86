"""deployer.runtime.docker against the real daemon and the compatible image."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import RuntimeUnavailable, UsageError
from deployer.image import BASE_IMAGE, INPUTS_LABEL, build_context
from deployer.runtime.base import ServerHandle
from deployer.runtime.docker import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    LABEL_SPEC_HASH,
    DockerRuntime,
    compat_image,
    connect,
    container_name,
)
from tests.docker.conftest import LaunchFactory

pytestmark = pytest.mark.docker


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A host port held by a listening socket for the test's duration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def foreign_container(docker_client: Any, image: str) -> Iterator[Any]:
    """A container deployer did not start (no labels), alive for the test."""
    container = docker_client.containers.run(BASE_IMAGE, ["sleep", "120"], detach=True)
    yield container
    container.remove(force=True)


def _wait_available(target: str, model: str, deadline_seconds: float = 90.0) -> str:
    """GetModelStatus until the model's version is AVAILABLE; return the last state seen."""
    import grpc

    from deployer.protos import ensure_light_protos

    ensure_light_protos()
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    seen = "no answer"
    deadline = time.monotonic() + deadline_seconds
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.GetModelStatus(request, timeout=5)
            except grpc.RpcError as exc:
                seen = f"{exc.code().name}: {exc.details()}"
            else:
                names = get_model_status_pb2.ModelVersionStatus.State.Name
                states = [names(v.state) for v in reply.model_version_status]
                seen = ",".join(states)
                if states and all(s == "AVAILABLE" for s in states):
                    return "AVAILABLE"
            time.sleep(0.5)
    return seen


def _started(runtime: DockerRuntime, launch: LaunchFactory, **overrides: Any) -> ServerHandle:
    return runtime.start(launch(**overrides))


def test_start_publishes_a_hardened_running_container(
    runtime: DockerRuntime, launch: LaunchFactory, project: str
) -> None:
    handle = _started(runtime, launch)

    host, _, grpc_port = handle.grpc_target.rpartition(":")
    assert host == "127.0.0.1" and int(grpc_port) > 0
    assert handle.rest_url is not None and handle.rest_url.startswith("http://127.0.0.1:")
    assert handle.name == container_name(project) and handle.spec_hash == "test-spec"
    assert runtime.state(handle).running

    attrs = runtime.client.containers.get(handle.ident).attrs
    host_config = attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["ReadonlyRootfs"] is True
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["AutoRemove"] is False
    bindings = [b for port in ("8500/tcp", "8501/tcp") for b in host_config["PortBindings"][port]]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
    published = [b for port in ("8500/tcp", "8501/tcp") for b in attrs["NetworkSettings"]["Ports"][port]]
    assert {b["HostIp"] for b in published} == {"127.0.0.1"}
    assert attrs["Config"]["Labels"][LABEL_PROJECT] == project
    assert attrs["Config"]["Labels"][LABEL_SPEC_HASH] == "test-spec"
    assert attrs["Config"]["Labels"][LABEL_MANAGED] == "true"
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/models/clf"]["RW"] is False and mounts["/config"]["RW"] is False
    # The process itself, not just the image's USER line, must be unprivileged.
    uid = runtime.client.containers.get(handle.ident).exec_run(["id", "-u"]).output.decode().strip()
    assert uid not in ("", "0")

    # Found by its project and state directory (the same project name from another state dir is not it).
    state_dir = launch().state_dir
    found = runtime.find(project, state_dir)
    assert found is not None and found.ident == handle.ident and found.grpc_target == handle.grpc_target
    assert found.project == project and found.state_dir == str(state_dir)
    assert runtime.find(project, Path("/nonexistent")) is None

    assert _wait_available(handle.grpc_target, "clf") == "AVAILABLE", runtime.logs(handle)
    assert "clf" in runtime.logs(handle, tail=200)

    runtime.stop(handle)
    assert runtime.find(project, state_dir) is None
    assert runtime.client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={project}"}) == []
    assert not runtime.state(handle).running


def test_entrypoint_serves_the_model_at_models_model_name(
    runtime: DockerRuntime, launch: LaunchFactory, model_base: Path
) -> None:
    # No flags at all: the entrypoint alone must find /models/$MODEL_NAME (default "model").
    spec = launch(models={"model": model_base}, args=())
    assert spec.layout.model_paths == {"model": "/models/model"}
    handle = runtime.start(spec)

    state = _wait_available(handle.grpc_target, "model")

    assert state == "AVAILABLE", runtime.logs(handle)


def test_a_killed_container_is_reported_with_exit_code_and_logs(runtime: DockerRuntime, launch: LaunchFactory) -> None:
    handle = _started(runtime, launch)
    # Kill it once it has served (and so logged) something: the logs must survive its death.
    assert _wait_available(handle.grpc_target, "clf") == "AVAILABLE", runtime.logs(handle)
    runtime.client.containers.get(handle.ident).kill()
    runtime.client.containers.get(handle.ident).wait(timeout=30)

    state = runtime.state(handle)

    assert not state.running
    assert state.exit_code == 137
    assert state.detail == "exited"
    assert "clf" in runtime.logs(handle, tail=200)


def test_stale_exited_container_of_the_project_is_replaced(runtime: DockerRuntime, launch: LaunchFactory) -> None:
    first = _started(runtime, launch)
    runtime.client.containers.get(first.ident).kill()

    second = _started(runtime, launch)

    assert second.ident != first.ident
    assert runtime.state(second).running


def test_port_in_use_is_runtime_unavailable_naming_the_port(
    runtime: DockerRuntime, launch: LaunchFactory, listening_port: int, project: str
) -> None:
    with pytest.raises(RuntimeUnavailable) as info:
        _started(runtime, launch, grpc_port=listening_port)

    assert str(listening_port) in info.value.message
    assert info.value.hint is not None and "grpc_port: 0" in info.value.hint
    # The failed start must not leave a "created" container behind to block the next attempt.
    assert runtime.client.containers.list(all=True, filters={"name": container_name(project)}) == []


def test_missing_image_points_to_make_image(runtime: DockerRuntime, launch: LaunchFactory) -> None:
    reports: list[str] = []
    with_progress = connect(reports.append)

    with pytest.raises(RuntimeUnavailable) as info:
        with_progress.start(launch(image="deployer/no-such-image:0"))

    assert info.value.hint is not None and "make image" in info.value.hint and compat_image() in info.value.hint
    assert reports, "the pull attempt should be reported through the progress callback"


def test_unreachable_daemon_is_runtime_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")

    with pytest.raises(RuntimeUnavailable) as info:
        connect()

    assert info.value.exit_code == 3 and info.value.hint is not None


def test_stop_never_touches_a_container_it_did_not_start(
    runtime: DockerRuntime, launch: LaunchFactory, foreign_container: Any
) -> None:
    ours = _started(runtime, launch)
    forged = ServerHandle(
        runtime="docker",
        ident=foreign_container.id,
        name=ours.name,
        grpc_target=ours.grpc_target,
        rest_url=ours.rest_url,
        spec_hash=ours.spec_hash,
    )

    with pytest.raises(UsageError):
        runtime.stop(forged)
    runtime.stop(ours)

    foreign_container.reload()
    assert foreign_container.status == "running"
    assert not runtime.state(ours).running


def test_a_foreign_container_holding_the_name_is_left_alone(
    runtime: DockerRuntime, launch: LaunchFactory, docker_client: Any, project: str, image: str
) -> None:
    squatter = docker_client.containers.run(BASE_IMAGE, ["sleep", "120"], detach=True, name=container_name(project))
    try:
        with pytest.raises(RuntimeUnavailable):
            _started(runtime, launch)
        squatter.reload()
        assert squatter.status == "running"
    finally:
        squatter.remove(force=True)


def test_image_build_is_skipped_when_inputs_are_unchanged(runtime: DockerRuntime, image: str) -> None:
    from deployer import image as image_builder

    # Engineers editing deployer/ while this runs change the inputs between two builds: retry until
    # two back-to-back builds saw the same inputs, then the second must have been a no-op.
    for _ in range(3):
        first = image_builder.build(runtime)
        second = image_builder.build(runtime)
        if first.inputs_hash == second.inputs_hash:
            break

    assert first.inputs_hash == second.inputs_hash and not second.built
    labels = runtime.image_labels(image)
    assert labels is not None and labels[INPUTS_LABEL] == second.inputs_hash


def test_inputs_hash_follows_sources_not_the_ca_bundle(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    ca_a, ca_b = tmp_path / "a.crt", tmp_path / "b.crt"
    ca_a.write_text("one")
    ca_b.write_text("two")
    context, digest = build_context(root, ca_a)
    _, same = build_context(root, ca_b)
    assert digest == same
    assert b".venv" not in context.split(b"\0", 1)[0]

    copy = tmp_path / "repo"
    for rel in ("pyproject.toml", "docker/model-server/Dockerfile", "docker/model-server/entrypoint.sh"):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((root / rel).read_bytes())
    (copy / "deployer").mkdir()
    (copy / "deployer" / "__init__.py").write_text("x = 1\n")
    _, before = build_context(copy, ca_a)
    (copy / "deployer" / "__init__.py").write_text("x = 2\n")
    _, after = build_context(copy, ca_a)
    assert before != after
