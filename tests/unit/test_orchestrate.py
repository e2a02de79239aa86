"""deployer.orchestrate with a fake runtime, a fake gRPC client and a fake trainer (no server, no TF)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from deployer import orchestrate
from deployer.client import ClassifyResult, VersionStatus
from deployer.errors import NotHealthy, RuntimeUnavailable, ServerRequestError, StoreError
from deployer.export import ExportResult
from deployer.manifest import Manifest, load_manifest
from deployer.runtime.base import LaunchSpec, Layout, ProcessState, Replica, ServerHandle, single_replica
from deployer.server_config import ServedModel, parse_models_config, render_models_config
from deployer.state import StateDir
from tests import manifests
from tests.fakes import InferViaClassify

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def write_manifest(tmp_path: Path, **server: Any) -> Path:
    smoke = manifests.smoke_cases(min_score=None, rows=[(5.1, 3.3, 1.7, 0.5), (6.9, 3.1, 5.4, 2.1)])
    smoke[0].update(name="setosa")
    smoke[1].update(name="virginica", expect_class="2", min_score=0.5)
    settings = {"runtime": "local", "grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 2, **server}
    return manifests.write_manifest(
        tmp_path, f"t-{uuid.uuid4().hex[:8]}", state_dir=".deployer", smoke=smoke, server=settings
    )


class World:
    """What the fake server serves: read from models.config when the fake runtime starts."""

    def __init__(self) -> None:
        self.served: dict[str, ServedModel] = {}
        self.wrong = False
        self.exit_after_start = False
        self.silent = False  # the process runs but its gRPC port does not answer
        self.state_checks = 0
        self.reloads: list[str] = []
        self.refuse_reloads = False


class FakeRuntime:
    name: ClassVar[str] = "local"

    def __init__(self, world: World, state: StateDir) -> None:
        self.world, self.state_dir = world, state
        self.started: list[LaunchSpec] = []
        self.stopped: list[str] = []
        self.running: dict[str, ServerHandle] = {}

    def layout(self, model_base_paths: dict[str, Path], config_dir: Path) -> Layout:
        return Layout({n: f"/seen/{n}" for n in model_base_paths}, "/seen/config")

    def start(self, spec: LaunchSpec) -> ServerHandle:
        self.started.append(spec)
        text = self.state_dir.read_models_config() or ""
        self.world.served = {m.name: m for m in parse_models_config(text)}
        ident = str(1000 + len(self.started))
        handle = ServerHandle(
            self.name, ident, "fake", f"fake:{ident}", "http://fake", spec.spec_hash,
            project=spec.project, state_dir=str(spec.state_dir), weakenings=spec.weakenings,
        )  # fmt: skip
        self.running[ident] = handle
        return handle

    def find(self, project: str, state_dir: Path) -> ServerHandle | None:
        return next(iter(self.running.values()), None)

    def recognises(self, handle: ServerHandle) -> bool:
        return True

    def state(self, handle: ServerHandle) -> ProcessState:
        self.world.state_checks += 1
        if self.world.exit_after_start or handle.ident not in self.running:
            return ProcessState(False, 3, "exited")
        return ProcessState(True, None, "running")

    def logs(self, handle: ServerHandle, tail: int = 50) -> str:
        return "fake server log\nE boom\n"

    def replicas(self, handle: ServerHandle) -> list[Replica]:
        return single_replica(handle, self.state(handle))

    def stop(self, handle: ServerHandle) -> None:
        self.stopped.append(handle.ident)
        self.running.pop(handle.ident, None)

    def restart(self, handle: ServerHandle) -> ServerHandle:
        raise AssertionError("not used")


class FakeClient(InferViaClassify):
    world: ClassVar[World]
    runtime: ClassVar[FakeRuntime]

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self.target = target

    def close(self) -> None:
        pass

    def wait_until_reachable(self, timeout: float) -> bool:
        running = {h.grpc_target for h in self.runtime.running.values()}
        return not (self.world.exit_after_start or self.world.silent) and self.target in running

    def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> Any:
        if self.world.exit_after_start:
            raise ServerRequestError("UNAVAILABLE", code="UNAVAILABLE")
        if model not in self.world.served:
            raise ServerRequestError("NOT_FOUND", code="NOT_FOUND")
        return [VersionStatus(v, "AVAILABLE", "OK", "") for v in self.world.served[model].versions]

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None, timeout: Any = None) -> Any:
        if model not in self.world.served:
            raise ServerRequestError("NOT_FOUND", code="NOT_FOUND")
        labels = self.world.served[model].labels
        if (label or "") not in labels:
            raise ServerRequestError("INVALID_ARGUMENT: unknown label", code="INVALID_ARGUMENT")
        return {"model_spec": {"version": str(labels[label or ""])}}

    def reload_config(self, text: str, *, timeout: float) -> None:
        self.world.reloads.append(text)
        if self.world.refuse_reloads:
            raise ServerRequestError("HandleReloadConfigRequest: FAILED_PRECONDITION: no", code="FAILED_PRECONDITION")
        self.world.served = {m.name: m for m in parse_models_config(text)}

    def classify(
        self, model: str, examples: Sequence[Mapping[str, float]], *, version: int | None = None,
        label: str | None = None, signature_name: str = "serving_default", timeout: float | None = None,
    ) -> ClassifyResult:  # fmt: skip
        got = "2" if self.world.wrong or examples[0]["PetalLength"] > 3 else "0"
        served = self.world.served[model].labels[label] if label else max(self.world.served[model].versions)
        return ClassifyResult(model, served, signature_name, [[(c, 0.9 if c == got else 0.05) for c in "012"]], 0.001)


class Env:
    def __init__(self, manifest: Manifest, runtime: FakeRuntime, world: World, trained: list[int]) -> None:
        self.manifest, self.runtime, self.world, self.trained = manifest, runtime, world, trained

    @property
    def base(self) -> Path:
        return self.manifest.base_path(self.manifest.models[0])

    @property
    def state(self) -> StateDir:
        return StateDir(self.manifest.state_path)


def make_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """The fake world, runtime, client and trainer wired into deployer.orchestrate (other test modules reuse it)."""
    manifest = load_manifest(write_manifest(tmp_path))
    world = World()
    runtime = FakeRuntime(world, StateDir(manifest.state_path))
    trained: list[int] = []
    FakeClient.world = world
    FakeClient.runtime = runtime

    def train_and_export(manifest: Manifest, model: Any, *, now: float | None = None, progress: Any = None) -> Any:
        base = manifest.base_path(model)
        version = len(trained) + 1
        (base / str(version)).mkdir(parents=True)
        trained.append(version)
        return ExportResult(
            model=model.name, version=version, path=base / str(version), metrics={"accuracy": 0.97},
            seconds_train=1.5, seconds_export=0.5,
        )  # fmt: skip

    def no_docker(progress: Any) -> Any:
        raise RuntimeUnavailable("no daemon in unit tests")

    monkeypatch.setattr("deployer.export.train_and_export", train_and_export)
    monkeypatch.setattr(orchestrate, "_local", lambda m: runtime)
    monkeypatch.setattr(orchestrate, "_docker", no_docker)
    monkeypatch.setattr(orchestrate, "_swarm", no_docker)
    monkeypatch.setattr(orchestrate, "ServingClient", FakeClient)
    return Env(manifest, runtime, world, trained)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return make_env(tmp_path, monkeypatch)


def test_first_up_trains_serves_latest_with_labels_and_smokes(env: Env) -> None:
    progress: list[str] = []
    report = orchestrate.up(env.manifest, progress=progress.append)
    assert env.trained == [1]
    assert report.action == "started" and report.runtime == "local"
    assert report.smoke_passed and [len(r.cases) for r in report.smoke] == [2]
    assert [(m.name, [s.version for s in m.versions], m.labels) for m in report.models] == [
        ("iris", [1], {"stable": 1})
    ]
    served = parse_models_config(env.state.read_models_config() or "")
    assert served == [ServedModel("iris", "/seen/iris", (1,), {"stable": 1})]
    assert env.state.load_handle() == report.handle
    assert {"runtime", "train", "export", "start", "healthy", "smoke", "total"} <= set(report.timings)
    assert report.timings["train"] == 1.5 and report.timings["export"] == 0.5
    doc = report.to_json()
    assert doc["server"]["grpc"] == "fake:1001" and doc["smoke"]["passed"] is True
    assert doc["exported"][0]["version"] == 1
    assert any("training iris" in line for line in progress)
    # The launch flags point at the config as the server sees it, with the label-at-startup fix.
    args = env.runtime.started[0].args
    assert "--model_config_file=/seen/config/models.config" in args
    assert "--allow_version_labels_for_unavailable_models=true" in args


def test_second_up_reuses_the_server(env: Env) -> None:
    first = orchestrate.up(env.manifest)
    second = orchestrate.up(env.manifest)
    assert second.action == "reused" and second.handle.ident == first.handle.ident
    assert len(env.runtime.started) == 1 and env.runtime.stopped == []
    assert env.trained == [1]


def test_changed_spec_recreates_the_server(env: Env, tmp_path: Path) -> None:
    first = orchestrate.up(env.manifest)
    changed = env.manifest.model_copy(
        update={"server": env.manifest.server.model_copy(update={"file_system_poll_wait_seconds": 5})}
    )
    second = orchestrate.up(changed)
    assert second.action == "recreated"
    assert second.action_reason == "the spec changed: server.file_system_poll_wait_seconds: 1 → 5"
    assert env.runtime.stopped == [first.handle.ident]
    assert "--file_system_poll_wait_seconds=5" in env.runtime.started[-1].args


def test_retrain_exports_a_new_version_but_keeps_the_served_state(env: Env) -> None:
    orchestrate.up(env.manifest)
    report = orchestrate.up(env.manifest, retrain=True)
    assert env.trained == [1, 2]
    # The config on disk is the truth: a new version is served by a promotion, not by `up`.
    assert report.action == "reused"
    assert report.models[0].labels == {"stable": 1}


def test_desired_models_keeps_promoted_labels_and_drops_vanished_versions(env: Env) -> None:
    for v in (1, 2, 3):
        (env.base / str(v)).mkdir(parents=True)
    env.state.write_config_files(
        {"models.config": render_models_config(
            [ServedModel("iris", "/old/place", (1, 2, 4), {"stable": 2, "canary": 4, "previous": 1})]
        )}
    )  # fmt: skip
    layout = Layout({"iris": "/models/iris"}, "/config")
    [served] = orchestrate.desired_models(env.manifest, env.state, layout)
    assert served.base_path == "/models/iris"
    assert served.versions == (1, 2)
    assert served.labels == {"stable": 2, "previous": 1}


def test_desired_models_puts_a_lost_manifest_label_on_the_newest_version(env: Env) -> None:
    for v in (1, 2):
        (env.base / str(v)).mkdir(parents=True)
    env.state.write_config_files(
        {"models.config": render_models_config([ServedModel("iris", "/x", (1, 2, 5), {"stable": 5})])}
    )
    [served] = orchestrate.desired_models(env.manifest, env.state, Layout({"iris": "/x"}, "/c"))
    assert served.versions == (1, 2) and served.labels == {"stable": 2}


def test_desired_models_first_time_serves_the_newest_version_with_every_label(env: Env) -> None:
    for v in (1, 3, 2):
        (env.base / str(v)).mkdir(parents=True)
    [served] = orchestrate.desired_models(env.manifest, env.state, Layout({"iris": "/x"}, "/c"))
    assert served.versions == (3,) and served.labels == {"stable": 3}


def test_desired_models_without_any_version(env: Env) -> None:
    with pytest.raises(StoreError, match="no version under"):
        orchestrate.desired_models(env.manifest, env.state, Layout({"iris": "/x"}, "/c"))


def test_up_stops_what_it_started_when_the_server_dies(env: Env) -> None:
    env.world.exit_after_start = True
    with pytest.raises(NotHealthy) as info:
        orchestrate.up(env.manifest)
    assert "exit code 3" in info.value.message
    assert info.value.details is not None and "E boom" in info.value.details
    assert info.value.hint is not None and "deployer logs" in info.value.hint
    assert env.runtime.stopped == ["1001"]
    assert env.state.load_handle() is None


def test_up_times_out_when_a_label_never_resolves(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(self: FakeClient, model: str, **kwargs: Any) -> Any:
        return {"model_spec": {}}

    monkeypatch.setattr(FakeClient, "metadata", never)
    with pytest.raises(NotHealthy, match="label stable resolves to nothing"):
        orchestrate.up(env.manifest)
    assert env.runtime.stopped == ["1001"]


def test_a_wrong_model_fails_smoke_in_the_report(env: Env) -> None:
    env.world.wrong = True
    report = orchestrate.up(env.manifest)
    assert not report.smoke_passed
    assert [c.name for c in report.smoke[0].failures] == ["setosa"]
    # The server stays: it is healthy, and the user will want to look at it.
    assert env.runtime.stopped == []


def test_status_connect_down(env: Env) -> None:
    assert orchestrate.status(env.manifest).running is False
    with pytest.raises(NotHealthy) as info:
        orchestrate.connect(env.manifest)
    assert info.value.hint is not None and "deployer up" in info.value.hint

    up = orchestrate.up(env.manifest)
    status = orchestrate.status(env.manifest)
    assert status.running and status.handle == up.handle
    assert status.to_json()["models"][0]["labels"] == {"stable": 1}
    assert [s.state for s in status.models[0].versions] == ["AVAILABLE"]
    handle, client = orchestrate.connect(env.manifest)
    assert handle == up.handle and client.target == handle.grpc_target
    assert "E boom" in orchestrate.logs(env.manifest).lines

    report = orchestrate.down(env.manifest)
    assert [h.ident for h in report.stopped] == ["1001"]
    assert env.state.load_handle() is None
    # Idempotent, and the exported models and served config stay.
    assert orchestrate.down(env.manifest).stopped == []
    assert (env.base / "1").is_dir() and env.state.read_models_config()


def test_logs_after_a_failed_up_show_the_log_the_server_left(env: Env) -> None:
    env.world.exit_after_start = True
    with pytest.raises(NotHealthy) as info:
        orchestrate.up(env.manifest)
    assert info.value.hint is not None and "deployer logs" in info.value.hint
    # The server is gone (its container, say, removed), yet its log was kept before the removal.
    env.runtime.running.clear()
    report = orchestrate.logs(env.manifest)
    assert report.lines == ["fake server log", "E boom"] and not report.live and not report.running
    assert report.note is not None and "failed to become healthy: the server exited (exit code 3" in report.note
    assert report.to_json()["source"] == "last-server"
    # Following a server that is not running shows the kept log and ends.
    follow_report, lines = orchestrate.follow_logs(env.manifest)
    assert list(lines) == ["fake server log", "E boom"] and follow_report.note == report.note


def test_logs_after_down_and_without_any_server(env: Env) -> None:
    with pytest.raises(NotHealthy, match="none has left a log"):
        orchestrate.logs(env.manifest)
    orchestrate.up(env.manifest)
    orchestrate.down(env.manifest)
    report = orchestrate.logs(env.manifest, tail=1)
    assert report.lines == ["E boom"] and report.note is not None and "stopped by `deployer down`" in report.note


def test_logs_filter_tensorflow_chatter_and_by_model(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    chatter = "I0000 00:00:1796100376.919593   21602 cudart_stub.cc:31] Could not find cuda drivers on your machine."
    text = f"{chatter}\nloading iris version 1\nloading iris2 version 1\nready\n"
    monkeypatch.setattr(FakeRuntime, "logs", lambda self, handle, tail=50: text)
    orchestrate.up(env.manifest)
    assert orchestrate.logs(env.manifest).lines == ["loading iris version 1", "loading iris2 version 1", "ready"]
    assert orchestrate.logs(env.manifest, raw=True).lines[0] == chatter
    assert orchestrate.logs(env.manifest, model="iris").lines == ["loading iris version 1"]
    assert orchestrate.logs(env.manifest, tail=2).lines == ["loading iris2 version 1", "ready"]


def test_connect_when_the_server_exited(env: Env) -> None:
    up = orchestrate.up(env.manifest)
    env.runtime.running.clear()
    with pytest.raises(NotHealthy, match="not running"):
        orchestrate.connect(env.manifest)
    assert orchestrate.status(env.manifest).running is False
    assert up.handle.ident == "1001"


def test_connect_asks_the_runtime_only_when_the_port_does_not_answer(env: Env) -> None:
    orchestrate.up(env.manifest)
    env.world.state_checks = 0
    handle, _client = orchestrate.connect(env.manifest)
    assert env.world.state_checks == 0
    env.world.silent = True
    with pytest.raises(NotHealthy, match=f"runs but {handle.grpc_target} does not answer"):
        orchestrate.connect(env.manifest, probe_seconds=0.01)
    assert env.world.state_checks == 1


class FakeDocker(FakeRuntime):
    name: ClassVar[str] = "docker"

    def __init__(self, image_ok: bool) -> None:
        self.image_ok = image_ok

    def ensure_image(self, image: str) -> None:
        if not self.image_ok:
            raise RuntimeUnavailable("pull access denied")


def test_auto_picks_docker_only_when_daemon_and_image_work(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, why = orchestrate.choose_runtime(env.manifest, "auto")
    assert runtime.name == "local" and "no Docker engine answers" in why

    monkeypatch.setattr(orchestrate, "_docker", lambda progress: FakeDocker(image_ok=False))
    runtime, why = orchestrate.choose_runtime(env.manifest, "auto", image="some/image:1")
    assert runtime.name == "local" and why == "auto: Docker answers but pull access denied"

    monkeypatch.setattr(orchestrate, "_docker", lambda progress: FakeDocker(image_ok=True))
    runtime, why = orchestrate.choose_runtime(env.manifest, "auto")
    assert runtime.name == "docker" and env.manifest.server.image in why
    assert orchestrate.choose_runtime(env.manifest, "local")[0].name == "local"


def test_explicit_docker_propagates_unavailable(env: Env) -> None:
    with pytest.raises(RuntimeUnavailable):
        orchestrate.choose_runtime(env.manifest, "docker")


def test_spec_hash_covers_runtime_and_image(env: Env) -> None:
    base = orchestrate.spec_hash(env.manifest, "docker", "a:1")
    assert base == orchestrate.spec_hash(env.manifest, "docker", "a:1")
    assert base != orchestrate.spec_hash(env.manifest, "docker", "a:2")
    assert base != orchestrate.spec_hash(env.manifest, "local", "a:1")
    other = replace_port(env.manifest)
    assert orchestrate.spec_hash(other, "docker", "a:1") != base


def replace_port(manifest: Manifest) -> Manifest:
    return manifest.model_copy(update={"server": manifest.server.model_copy(update={"grpc_port": 9999})})


def test_handle_json_round_trip() -> None:
    handle = ServerHandle("local", "1", "n", "h:1", None, "x")
    assert orchestrate.DownReport("p", [handle]).to_json()["stopped"][0]["grpc"] == "h:1"
    assert replace(handle, ident="2").ident == "2"


# ---- the local runtime, with a stand-in server process (no TensorFlow) --------------------------

FAKE_SERVER = """
import signal, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("fake server up", sys.argv[1:], flush=True)
time.sleep(60)
"""


def local_spec(state: StateDir, *extra: str, grpc_port: int = 0) -> LaunchSpec:
    from deployer.manifest import ServerSettings
    from deployer.runtime.local import LocalRuntime
    from deployer.server_config import server_flags

    layout = LocalRuntime().layout({"iris": state.root / "models"}, state.config_dir)
    flags = (*server_flags(ServerSettings(), layout.config_dir), *extra)
    return LaunchSpec("p", "hash", "", "127.0.0.1", grpc_port, 0, flags, layout, state.root)


def test_local_runtime_lifecycle(tmp_path: Path) -> None:
    from deployer.runtime.local import LocalRuntime

    state = StateDir(tmp_path / "state")
    runtime = LocalRuntime(state.root, command=[sys.executable, "-c", FAKE_SERVER], stop_grace_s=0.5)
    handle = runtime.start(local_spec(state, "--ignore-term"))
    try:
        pid = int(handle.ident)
        # Its own session: a Ctrl-C aimed at `deployer up` must not reach the server.
        assert os.getsid(pid) == pid
        # The pid, then its start time: a reused pid has another start time and is never signalled.
        assert state.pid_file.read_text().split() == [handle.ident, str(handle.start_ticks)]
        grpc_port = int(handle.grpc_target.rpartition(":")[2])
        assert grpc_port > 0 and handle.rest_url is not None and not handle.rest_url.endswith(f":{grpc_port}")
        assert runtime.state(handle).running
        state.save_handle(handle)
        assert runtime.find("p", state.root) == handle
        # Without the handle file the server is still found (and its spec is unknown, so `up` recreates it).
        state.clear_handle()
        found = runtime.find("p", state.root)
        assert found is not None and found.ident == handle.ident and found.spec_hash == ""
        assert found.grpc_target == handle.grpc_target
        deadline = time.monotonic() + 10
        while "fake server up" not in runtime.logs(handle) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "fake server up" in runtime.logs(handle, tail=1)
        # It ignores SIGTERM: stop() must escalate to SIGKILL after the grace period.
        runtime.stop(handle)
        gone = runtime.state(handle)
        assert not gone.running and gone.exit_code == -9 and gone.detail == "killed by SIGKILL"
        assert not state.pid_file.exists() and runtime.find("p", state.root) is None
    finally:
        with suppress(ProcessLookupError):
            os.kill(int(handle.ident), 9)


def test_local_runtime_refuses_a_busy_port_and_a_stranger_pid(tmp_path: Path) -> None:
    import socket

    from deployer.runtime.local import LocalRuntime

    state = StateDir(tmp_path / "state")
    runtime = LocalRuntime(state.root, command=[sys.executable, "-c", FAKE_SERVER])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(RuntimeUnavailable, match="already in use"):
            runtime.start(local_spec(state, grpc_port=busy.getsockname()[1]))
    # A pid file naming a process that is not our server (here: pytest itself) is never signalled.
    state.ensure()
    state.pid_file.write_text(f"{os.getpid()}\n")
    assert runtime.find("p", state.root) is None
    runtime.stop(ServerHandle("local", str(os.getpid()), "x", "h:1", None, ""))
    assert not state.pid_file.exists()


def test_local_runtime_reports_a_crash_with_its_exit_code(tmp_path: Path) -> None:
    from deployer.runtime.local import LocalRuntime

    state = StateDir(tmp_path / "state")
    runtime = LocalRuntime(state.root, command=[sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    handle = runtime.start(local_spec(state))
    deadline = time.monotonic() + 10
    while runtime.state(handle).running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.state(handle) == ProcessState(False, 3, "exited")
    assert "boom" in runtime.logs(handle)


class FakeDockerWithImages(FakeRuntime):
    """A docker runtime whose daemon holds ``images`` and records every pull attempt."""

    name: ClassVar[str] = "docker"

    def __init__(self, world: World, state: StateDir, images: set[str]) -> None:
        super().__init__(world, state)
        self.images = images
        self.pulls: list[str] = []

    def start(self, spec: LaunchSpec) -> ServerHandle:
        handle = super().start(spec)
        docker_handle = replace(handle, runtime="docker", ident=f"c{handle.ident}", image=spec.image)
        self.running = {docker_handle.ident: docker_handle}
        return docker_handle

    def image_labels(self, image: str) -> dict[str, str] | None:
        return {} if image in self.images else None

    def ensure_image(self, image: str) -> None:
        self.pulls.append(image)
        if image not in self.images:
            raise RuntimeUnavailable(f"pull access denied for {image}")


def auto(manifest: Manifest) -> Manifest:
    return manifest.model_copy(update={"server": manifest.server.model_copy(update={"runtime": "auto"})})


@pytest.fixture()
def docker(env: Env, monkeypatch: pytest.MonkeyPatch) -> FakeDockerWithImages:
    fake = FakeDockerWithImages(env.world, env.state, {"local/compat:1"})
    monkeypatch.setattr(orchestrate, "_docker", lambda progress: fake)
    FakeClient.runtime = fake
    return fake


def test_auto_keeps_the_running_docker_server_without_a_pull(env: Env, docker: FakeDockerWithImages) -> None:
    manifest = auto(env.manifest)
    first = orchestrate.up(manifest, runtime_choice="docker", image="local/compat:1")
    assert first.runtime == "docker" and first.handle.image == "local/compat:1"
    docker.pulls.clear()
    progress: list[str] = []
    second = orchestrate.up(manifest, progress=progress.append)
    # Before: auto tried to pull the manifest's tensorflow/serving image, fell back to local, replaced
    # the container with a process and said "no server was running".
    assert docker.pulls == []
    assert second.runtime == "docker" and second.action == "reused", second.action_reason
    assert second.handle.ident == first.handle.ident
    assert second.runtime_reason == "auto: keeping the running docker server fake (image local/compat:1)"
    assert env.runtime.started == []  # no local server


def test_auto_remembers_the_last_runtime_and_image_after_down(env: Env, docker: FakeDockerWithImages) -> None:
    manifest = auto(env.manifest)
    orchestrate.up(manifest, runtime_choice="docker", image="local/compat:1")
    orchestrate.down(manifest)
    docker.pulls.clear()
    again = orchestrate.up(manifest)
    assert again.runtime == "docker" and again.action == "started"
    assert again.runtime_reason == "auto: the last `up` ran on docker with image local/compat:1"
    assert again.handle.image == "local/compat:1" and docker.pulls == []
    # A remembered image that is gone is a fresh decision (here: the manifest's image cannot be pulled).
    orchestrate.down(manifest)
    docker.images.clear()
    fresh = orchestrate.up(manifest)
    assert fresh.runtime == "local" and "Docker answers but pull access denied" in fresh.runtime_reason


def test_switching_runtimes_says_what_was_replaced(env: Env, docker: FakeDockerWithImages) -> None:
    manifest = auto(env.manifest)
    first = orchestrate.up(manifest, runtime_choice="docker", image="local/compat:1")
    switched = orchestrate.up(manifest, runtime_choice="local")
    assert switched.action == "recreated"
    assert switched.action_reason == "runtime: docker → local (docker server fake stopped)"
    assert docker.stopped == [first.handle.ident]


def test_a_recreate_names_what_changed(env: Env, docker: FakeDockerWithImages) -> None:
    manifest = auto(env.manifest)
    docker.images.add("local/compat:2")
    orchestrate.up(manifest, runtime_choice="docker", image="local/compat:1")
    batching = manifest.server.batching.model_copy(update={"enabled": True})
    changed = manifest.model_copy(update={"server": manifest.server.model_copy(update={"batching": batching})})
    other = orchestrate.up(changed, image="local/compat:2")
    assert other.action == "recreated"
    assert other.action_reason == (
        "the spec changed: image: local/compat:1 → local/compat:2; server.batching.enabled: False → True"
    )


def test_a_changed_served_config_is_named(env: Env) -> None:
    for v in (1, 2):
        (env.base / str(v)).mkdir(parents=True)
    env.state.write_config_files(
        {"models.config": render_models_config([ServedModel("iris", "/seen/iris", (1, 2), {"stable": 2})])}
    )
    orchestrate.up(env.manifest)
    (env.base / "2").rmdir()
    report = orchestrate.up(env.manifest)
    assert report.action == "recreated"
    assert report.action_reason == (
        "the served config changed: iris versions [1, 2] → [1]; iris labels {'stable': 2} → {'stable': 1}"
    )
