"""A server as a fleet: the promotion protocol replica by replica, the swarm runtime's view of its tasks (with
a fake Docker SDK), the orchestration's fail-fast wait for replicas, and handle files from before fleets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployer import orchestrate
from deployer.errors import NotHealthy, PromoteFailed, RuntimeUnavailable
from deployer.fleet import Fleet, Member
from deployer.promote import promote, rollback
from deployer.runtime import swarm
from deployer.runtime.base import Endpoint, ProcessState, Replica, ServerHandle
from deployer.server_config import parse_models_config
from tests.unit.test_promote import FakeServer, build_setup, good, wrong

# ---- promotion on two replicas ------------------------------------------------------------------------


class Replicated:
    """Two FakeServers reading the same models.config, as two swarm tasks do; ``events`` records the order."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, candidate_on_2: Any = None) -> None:
        self.setup = build_setup(tmp_path, monkeypatch)
        first = self.setup.server
        second = FakeServer(first.config_file, dict(first.behaviours))
        if candidate_on_2 is not None:
            second.behaviours[2] = candidate_on_2
        second.target = "fake:1"
        second.start(first.config_file.read_text())
        self.servers = [first, second]
        self.events: list[tuple[int, str]] = []
        for index, server in enumerate(self.servers):
            self._trace(index + 1, server)
        endpoints = [Endpoint(s.target, None, f"task{i}", i + 1) for i, s in enumerate(self.servers)]
        self.fleet = Fleet([Member(e, s) for e, s in zip(endpoints, self.servers, strict=True)])  # type: ignore[arg-type]

    def _trace(self, slot: int, server: FakeServer) -> None:
        reload, classify = server.reload_config, server.classify

        def traced_reload(text: str, *, timeout: float) -> None:
            labels = parse_models_config(text)[0].labels
            self.events.append((slot, f"reload stable→{labels.get('stable')}"))
            reload(text, timeout=timeout)

        def traced_classify(*args: Any, **kwargs: Any) -> Any:
            answer = classify(*args, **kwargs)
            if kwargs.get("label"):
                self.events.append((slot, f"label answers {answer.version}"))
            return answer

        server.reload_config = traced_reload  # type: ignore[method-assign]
        server.classify = traced_classify  # type: ignore[method-assign]

    def label_versions(self) -> list[int]:
        return [s.models["iris"].labels["stable"] for s in self.servers]


def test_promote_loads_and_smokes_everywhere_then_moves_the_label_replica_by_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Replicated(tmp_path, monkeypatch)
    report = promote(fleet.setup.manifest, fleet.fleet, 2, sleep=lambda s: None)
    assert report.result == "ok" and fleet.label_versions() == [2, 2]
    assert [r["passed"] for r in report.smoke["replicas"]] == [True, True]  # type: ignore[index]
    assert all(not s.violations for s in fleet.servers)
    moves = [e for e in fleet.events if e[1] in ("reload stable→2", "label answers 2")]
    # Replica 1 moves and is verified before replica 2 is touched.
    assert moves[:3] == [(1, "reload stable→2"), (1, "label answers 2"), (2, "reload stable→2")]
    # The candidate loaded on both replicas before any label moved.
    first_move = fleet.events.index((1, "reload stable→2"))
    assert {slot for slot, e in fleet.events[:first_move] if e == "reload stable→1"} == {1, 2}


def test_a_candidate_failing_smoke_on_one_replica_moves_no_label_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Replicated(tmp_path, monkeypatch, candidate_on_2=wrong)
    before = fleet.setup.state.models_config.read_text()
    with pytest.raises(PromoteFailed) as info:
        promote(fleet.setup.manifest, fleet.fleet, 2, sleep=lambda s: None)
    assert info.value.exit_code == 6 and "on replica 2 (fake:1)" in info.value.message
    assert fleet.label_versions() == [1, 1]
    assert not any(e == "reload stable→2" for _, e in fleet.events)
    assert fleet.setup.state.models_config.read_text() == before
    assert all(s.models["iris"].versions == (1,) for s in fleet.servers)  # restored (candidate unloaded) on both


def test_a_failure_on_the_second_replica_after_the_first_moved_restores_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Replicated(tmp_path, monkeypatch)
    second = fleet.servers[1]
    from deployer.errors import ServerRequestError

    second.fail_reload = lambda n, text: (
        ServerRequestError("HandleReloadConfigRequest: UNAVAILABLE", code="UNAVAILABLE")
        if parse_models_config(text)[0].labels.get("stable") == 2
        else None
    )
    with pytest.raises(PromoteFailed) as info:
        promote(fleet.setup.manifest, fleet.fleet, 2, sleep=lambda s: None)
    assert "UNAVAILABLE" in info.value.message
    assert (1, "label answers 2") in fleet.events  # replica 1 had moved ...
    assert fleet.label_versions() == [1, 1]  # ... and was moved back
    assert info.value.report.result == "rolled_back"  # type: ignore[attr-defined]


def test_rollback_runs_on_every_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Replicated(tmp_path, monkeypatch)
    promote(fleet.setup.manifest, fleet.fleet, 2, sleep=lambda s: None)
    report = rollback(fleet.setup.manifest, fleet.fleet, sleep=lambda s: None)
    assert (report.from_version, report.to_version) == (2, 1) and fleet.label_versions() == [1, 1]


def test_a_fleet_of_one_keeps_the_single_server_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = build_setup(tmp_path, monkeypatch)
    setup.server.behaviours[2] = wrong
    with pytest.raises(PromoteFailed) as info:
        setup.promote(2)
    assert "replica" not in info.value.message and "smoke case(s) failed (1 passed); " in info.value.message
    assert good  # the shared behaviours stay importable for the fleet tests


# ---- handles ------------------------------------------------------------------------------------------


def test_a_handle_file_from_before_fleets_loads_as_a_fleet_of_one() -> None:
    old = {
        "runtime": "docker", "ident": "abc", "name": "deployer-p", "grpc_target": "127.0.0.1:5000",
        "rest_url": "http://127.0.0.1:5001", "spec_hash": "x", "image": "img", "started_at": 1.0,
    }  # fmt: skip
    handle = ServerHandle.from_json(old)
    assert handle.replicas == 1 and handle.fleet == (Endpoint("127.0.0.1:5000", "http://127.0.0.1:5001", "abc", 1),)
    fleet = handle.with_endpoints((Endpoint("h:1", None, "t1", 1), Endpoint("h:2", None, "t2", 2)))
    assert fleet.grpc_target == "h:1" and fleet.rest_url is None
    assert ServerHandle.from_json(json.loads(json.dumps(fleet.to_json()))) == fleet


# ---- the swarm runtime against a fake Docker SDK -------------------------------------------------------


def task(ident: str, slot: int, state: str, created: str, port: int | None = None, **status: Any) -> dict[str, Any]:
    ports = {} if port is None else {
        "Ports": [{"TargetPort": 8500, "PublishedPort": port}, {"TargetPort": 8501, "PublishedPort": port + 1}]
    }  # fmt: skip
    return {"ID": ident, "Slot": slot, "CreatedAt": created, "Status": {"State": state, "PortStatus": ports, **status}}


class FakeService:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.id, self.name = "svc1", "deployer-p"
        self._tasks = tasks
        self.attrs = {"Spec": {"Labels": {"deployer.project": "p", "deployer.managed": "true"}}}

    def tasks(self) -> list[dict[str, Any]]:
        return self._tasks

    def logs(self, **kwargs: Any) -> list[bytes]:
        details = "com.docker.swarm.node.id=n1,com.docker.swarm.service.id=svc1,com.docker.swarm.task.id="
        return [
            f"2026-01-01T00:00:02Z {details}t2 second\n".encode(),
            f"2026-01-01T00:00:01Z {details}t1 first\n".encode(),
        ]


class FakeServices:
    def __init__(self, service: FakeService | None) -> None:
        self.service = service

    def get(self, ident: str) -> FakeService:
        from docker.errors import NotFound

        if self.service is None:
            raise NotFound("gone")
        return self.service


def runtime_with(tasks: list[dict[str, Any]] | None) -> swarm.SwarmRuntime:
    runtime = swarm.SwarmRuntime.__new__(swarm.SwarmRuntime)
    runtime.services = FakeServices(FakeService(tasks) if tasks is not None else None)
    runtime.dial_host = "127.0.0.1"
    return runtime


HANDLE = ServerHandle("swarm", "svc1", "deployer-p", "", None, "x", replicas=2)


def test_replicas_are_the_newest_task_per_slot_with_its_published_port() -> None:
    runtime = runtime_with([
        task("t1", 1, "running", "2026-01-01T00:00:01Z", 32001),
        task("old", 2, "failed", "2026-01-01T00:00:01Z", None, Err="task: non-zero exit (137)"),
        task("t2", 2, "starting", "2026-01-01T00:00:09Z"),
    ])  # fmt: skip
    one, two = runtime.replicas(HANDLE)
    assert one == Replica(1, "t1", "running", Endpoint("127.0.0.1:32001", "http://127.0.0.1:32002", "t1", 1), "", None)
    assert (two.ident, two.state, two.endpoint) == ("t2", "starting", None)
    assert runtime.state(HANDLE) == ProcessState(running=True, detail="1/2 replicas running")


def test_a_replica_whose_newest_task_failed_is_not_running_and_a_removed_service_is_gone() -> None:
    failed = task("t2", 2, "failed", "2026-01-01T00:00:09Z", ContainerStatus={"ExitCode": 1}, Err="non-zero exit (1)")
    runtime = runtime_with([task("t1", 1, "running", "2026-01-01T00:00:01Z", 32001), failed])
    state = runtime.state(HANDLE)
    assert not state.running and state.exit_code == 1
    assert "replica 2 (task t2) failed: non-zero exit (1)" in state.detail
    assert runtime_with(None).state(HANDLE) == ProcessState(running=False, exit_code=None, detail="removed")


def test_logs_are_merged_by_time_with_a_replica_prefix() -> None:
    runtime = runtime_with([task("t1", 1, "running", "a", 32001), task("t2", 2, "running", "b", 32003)])
    assert runtime.logs(HANDLE) == "replica 1 (t1) | first\nreplica 2 (t2) | second\n"


def test_follow_logs_prefixes_each_line_even_when_a_chunk_splits_it(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = runtime_with([task("t1", 1, "running", "a", 32001), task("t2", 2, "running", "b", 32003)])
    details = "com.docker.swarm.node.id=n1,com.docker.swarm.service.id=svc1,com.docker.swarm.task.id="
    text = f"2026-01-01T00:00:01Z {details}t1 first\n2026-01-01T00:00:02Z {details}t2 second\n"
    chunks = [text[:50].encode(), text[50:].encode()]
    monkeypatch.setattr(FakeService, "logs", lambda self, **kwargs: chunks)
    assert list(runtime.follow_logs(HANDLE)) == ["replica 1 (t1) | first", "replica 2 (t2) | second"]


def test_up_needs_an_active_swarm_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    class Client:
        def __init__(self, swarm_info: dict[str, Any]) -> None:
            self.swarm_info = swarm_info

        def info(self) -> dict[str, Any]:
            return {"Swarm": self.swarm_info}

    class Docker:
        def __init__(self, client: Client) -> None:
            self.client = client

    for info, why in (
        ({"LocalNodeState": "inactive"}, "swarm state inactive"),
        ({"LocalNodeState": "active", "ControlAvailable": False}, "a worker, not a manager"),
    ):
        monkeypatch.setattr(swarm.docker_runtime, "connect", lambda progress, timeout=60, i=info: Docker(Client(i)))
        with pytest.raises(RuntimeUnavailable) as raised:
            swarm.connect()
        assert raised.value.exit_code == 3 and why in raised.value.message
        assert "docker swarm init" in (raised.value.hint or "")


# ---- the orchestration's wait for every replica ---------------------------------------------------------


class StepRuntime:
    """A runtime whose replicas follow a script, one step per replicas() call."""

    name = "swarm"

    def __init__(self, script: list[list[Replica]]) -> None:
        self.script, self.calls = script, 0

    def replicas(self, handle: ServerHandle) -> list[Replica]:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return step

    def state(self, handle: ServerHandle) -> ProcessState:
        return ProcessState(running=True)

    def logs(self, handle: ServerHandle, tail: int = 50) -> str:
        return "replica 2 (t2b) | E model failed to load\n"


def ready(slot: int, ident: str) -> Replica:
    return Replica(slot, ident, "running", Endpoint(f"127.0.0.1:{32000 + slot}", None, ident, slot))


def test_wait_endpoints_returns_the_handle_once_every_replica_serves() -> None:
    starting = [ready(1, "t1"), Replica(2, "t2", "starting", None)]
    runtime = StepRuntime([starting, starting, [ready(1, "t1"), ready(2, "t2")]])
    said: list[str] = []
    handle = orchestrate.wait_endpoints(
        runtime, HANDLE, deadline_s=30, server_state=lambda: ProcessState(True), progress=said.append,  # type: ignore[arg-type]
        sleep=lambda s: None,
    )  # fmt: skip
    assert [e.grpc_target for e in handle.fleet] == ["127.0.0.1:32001", "127.0.0.1:32002"]
    assert said == ["replicas: replica 1 running, replica 2 starting"]


def test_a_replica_restarted_during_the_wait_fails_fast_with_the_log_tail() -> None:
    before = [ready(1, "t1"), Replica(2, "t2", "starting", None)]
    after = [ready(1, "t1"), Replica(2, "t2b", "starting", None)]
    runtime = StepRuntime([before, before, after])  # the wait and the watch each look once per round
    watch = orchestrate.FleetWatch(runtime, HANDLE)  # type: ignore[arg-type]
    with pytest.raises(NotHealthy) as info:
        orchestrate.wait_endpoints(
            runtime, HANDLE, deadline_s=5, server_state=watch, progress=lambda line: None, sleep=lambda s: None,  # type: ignore[arg-type]
        )  # fmt: skip
    assert "replica 2 was restarted during the wait (t2 → t2b)" in info.value.message
    assert "E model failed to load" in (info.value.details or "")
    assert info.value.exit_code == 4


def test_replicas_need_the_swarm_runtime(tmp_path: Path) -> None:
    from deployer.errors import UsageError
    from deployer.manifest import load_manifest
    from tests.unit.test_orchestrate import write_manifest

    path = write_manifest(tmp_path, replicas=3)

    manifest = load_manifest(path)
    assert manifest.replicas_for("local") == 1 and manifest.replicas_for("swarm") == 3
    with pytest.raises(UsageError, match=r"server\.replicas: 3 needs the swarm runtime"):
        orchestrate.up(manifest, runtime_choice="local")
    assert not (tmp_path / "exports").exists()  # refused before training anything
