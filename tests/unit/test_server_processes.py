"""server_processes: the owner's ProcessGroup driving real follower processes that hold fake servables.

The followers are ``tests.unit.fake_server_process`` (the real Follower and control link, no
TensorFlow), so timing that a real model cannot be made to show is forced here: a follower whose
loads wait at a gate, one whose load fails, one that cannot come back after it died.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from deployer.model_server import server_processes
from deployer.model_server.manager import AVAILABLE, END, LOADING, ServerCore
from deployer.model_server.metrics import Metrics, Snapshot, merge
from deployer.model_server.server_processes import ProcessGroup
from deployer.model_server.status import ServingError

REPO = Path(__file__).resolve().parents[2]
FAKE = [sys.executable, "-m", "tests.unit.fake_server_process"]


class OwnerServable:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version
        self.closed = False

    def close(self) -> None:
        self.closed = True


def config(base: Path, versions: tuple[int, ...], labels: dict[str, int] | None = None, name: str = "clf") -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    model = proto.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
    model.model_version_policy.specific.versions.extend(versions)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return proto


@dataclass
class Setup:
    tmp: Path
    env: dict[str, str]
    failed: threading.Event = field(default_factory=threading.Event)
    owner_loads: list[OwnerServable] = field(default_factory=list)
    group: ProcessGroup | None = None
    core: ServerCore | None = None

    @property
    def base(self) -> Path:
        return self.tmp / "clf"

    def start(self, count: int = 2, *, versions: tuple[int, ...] = (1,)) -> tuple[ProcessGroup, ServerCore]:
        for version in versions:
            (self.base / str(version)).mkdir(parents=True, exist_ok=True)
        self.group = group = ProcessGroup(count, FAKE, on_failure=self.failed.set, env=self.env)

        def owner_load(name: str, version: int, _path: str) -> OwnerServable:
            servable = OwnerServable(name, version)
            self.owner_loads.append(servable)
            return servable

        self.core = core = ServerCore(
            group.load, file_system_poll_wait_seconds=0.2, unload=group.unload, on_config=group.on_config
        )
        group.attach(core, owner_load, Metrics())
        group.wait_ready(lambda: True)
        core.reload_config(config(self.base, versions))
        group.serve()
        return group, core

    def follower(self, index: int = 1) -> Any:
        assert self.group is not None
        return next(m for m in self.group._members if m.index == index)

    def replaced(self, pid: int, index: int = 1) -> bool:
        """Follower ``index`` is a new process (not ``pid``), caught up and a member again."""
        assert self.group is not None
        members = [m for m in self.group._members if m.index == index]
        return bool(members) and members[0].pid != pid and not members[0].link.closed

    def lookup(self, name: str = "clf", label: str = "", index: int = 1) -> object:
        """What follower ``index`` would serve: a version, or the status code name of its refusal."""
        return self.follower(index).link.call("lookup", name, label, timeout=10)

    def log(self) -> list[str]:
        path = Path(self.env["FAKE_LOG"])
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["FAKE_LOG"] = str(tmp_path / "follower.log")
    state = Setup(tmp_path, env)
    yield state
    if state.group is not None:
        state.group.stop()
    if state.core is not None:
        state.core.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    event = threading.Event()
    deadline = timeout
    while deadline > 0:
        if predicate():
            return
        event.wait(0.05)
        deadline -= 0.05
    raise AssertionError("timed out")


def state_of(core: ServerCore, version: int, name: str = "clf") -> int:
    found = core.version_states(name).get(version)
    return found.state if found is not None else 0


def test_a_version_is_available_and_labelled_only_once_every_process_has_it(setup: Setup) -> None:
    gate = setup.tmp / "gate"
    gate.touch()
    setup.env["FAKE_GATE"] = str(gate)
    _group, core = setup.start()
    assert setup.lookup() == 1
    gate.unlink()  # from now on the follower's loads wait
    (setup.base / "2").mkdir()
    core.reload_config(config(setup.base, (1, 2), {"stable": 1}))
    wait_until(lambda: any(s.version == 2 for s in setup.owner_loads))  # the owner's own copy is loaded
    assert state_of(core, 2) == LOADING
    with pytest.raises(ServingError) as refused:
        core.reload_config(config(setup.base, (1, 2), {"stable": 2}))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert core.servable_for("clf", None).version == 1  # latest stays 1 in the owner ...
    assert setup.lookup() == 1  # ... and in the follower, which holds no version 2 yet
    gate.touch()
    wait_until(lambda: state_of(core, 2) == AVAILABLE)
    assert setup.lookup() == 2
    core.reload_config(config(setup.base, (1, 2), {"stable": 2}))
    assert setup.lookup(label="stable") == 2  # pushed before reload_config returned


def test_a_load_failing_in_one_process_fails_the_version_everywhere(setup: Setup) -> None:
    setup.env["FAKE_FAIL"] = "clf:2"
    _group, core = setup.start()
    (setup.base / "2").mkdir()
    core.reload_config(config(setup.base, (1, 2)))
    wait_until(lambda: state_of(core, 2) == END)
    error = core.version_states("clf")[2].error
    assert error is not None and error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == "fake load failure"
    owner_v2 = [s for s in setup.owner_loads if s.version == 2]
    assert owner_v2 and all(s.closed for s in owner_v2), "the owner's own copy is released"
    assert core.servable_for("clf", None).version == 1 and setup.lookup() == 1


def test_labels_and_removed_models_reach_followers_before_reload_returns(setup: Setup) -> None:
    _group, core = setup.start()
    core.reload_config(config(setup.base, (1,), {"stable": 1}))
    assert setup.lookup(label="stable") == 1
    other = setup.tmp / "other"
    (other / "7").mkdir(parents=True)
    both = config(setup.base, (1,), {"stable": 1})
    both.model_config_list.config.add().CopyFrom(config(other, (7,), name="other").model_config_list.config[0])
    core.reload_config(both)  # a new model: returns once AVAILABLE everywhere
    assert setup.lookup("other") == 7
    core.reload_config(config(setup.base, (1,), {"stable": 1}))
    assert setup.lookup("other") == "NOT_FOUND"  # hidden at once, as in the owner
    wait_until(lambda: state_of(core, 7, "other") == END)
    assert any(line.endswith("close other 7") for line in setup.log())


def test_a_dead_follower_is_replaced_and_catches_up(setup: Setup) -> None:
    group, core = setup.start(versions=(1, 2))
    wait_until(lambda: state_of(core, 1) == state_of(core, 2) == AVAILABLE)
    core.reload_config(config(setup.base, (1, 2), {"stable": 1}))
    dead = setup.follower().pid
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: setup.replaced(dead))
    new = setup.follower().pid
    loads = sorted(line.split(" ", 1)[1] for line in setup.log() if line.startswith(f"{new} load"))
    assert loads == ["load clf 1", "load clf 2"]
    assert setup.lookup(label="stable") == 1 and setup.lookup() == 2
    assert not setup.failed.is_set() and group.failure is None


def test_a_follower_that_cannot_be_restarted_stops_the_server(setup: Setup) -> None:
    counter = setup.tmp / "exits"
    counter.write_text("0")
    setup.env["FAKE_EXIT_AT_START"] = str(counter)
    group, _core = setup.start()
    counter.write_text("99")  # every replacement exits at once
    os.kill(setup.follower().pid, signal.SIGKILL)
    assert setup.failed.wait(30)
    assert group.failure is not None
    assert "server process 1 could not be restarted (3 attempts)" in group.failure
    assert "exit status 3" in group.failure


def test_processes_exiting_too_often_stop_the_server(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_processes, "RESTART_BUDGET", 1)
    group, _core = setup.start()
    first = setup.follower().pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: setup.replaced(first))
    os.kill(setup.follower().pid, signal.SIGKILL)
    assert setup.failed.wait(30)
    assert group.failure is not None and "exited 2 times within 10 minutes" in group.failure


def test_stop_ends_every_follower(setup: Setup) -> None:
    group, _core = setup.start(count=3)
    members = list(group._members)
    assert [m.index for m in members] == [1, 2]
    group.stop()
    assert [m.process.returncode for m in members] == [0, 0]


def test_metrics_gathered_from_every_process(setup: Setup) -> None:
    group, _core = setup.start()
    metrics = group._metrics
    assert metrics is not None
    metrics.record_request("clf", "Classify", "GRPC", "OK", 100.0)
    page = metrics.exposition().decode()
    assert ':tensorflow:serving:request_count{model_name="clf",status="OK"} 1.0' in page
    assert f'deployer_model_server_process_requests_total{{pid="{os.getpid()}",process="0"}} 1.0' in page
    assert f'deployer_model_server_process_requests_total{{pid="{setup.follower().pid}",process="1"}} 0.0' in page


def test_merge_sums_counters_and_histogram_buckets() -> None:
    one, two = Metrics(), Metrics()
    for metrics, latency in ((one, 15.0), (two, 15.0), (two, 1e6)):
        metrics.record_request("m", "Classify", "GRPC", "OK", latency)
    one.record_load("/m/1", ok=True)
    two.record_load("/m/1", ok=True)
    total = merge([one.snapshot((0, 10)), two.snapshot((1, 11))])
    assert total.counters[":tensorflow:serving:request_count"] == {("m", "OK"): 3}
    assert total.counters[":tensorflow:cc:saved_model:load_attempt_count"] == {("/m/1", "success"): 2}
    counts, total_us = total.latency[("m", "Classify", "GRPC", "OK")]
    assert sum(counts) == 3 and total_us == 15.0 + 15.0 + 1e6
    assert total.processes == [(0, 10, 1.0), (1, 11, 2.0)]
    assert merge([Snapshot()]).processes == []


def test_one_process_keeps_todays_page() -> None:
    """No per-process family without --num_server_processes: the page is TF Serving's families only."""
    metrics = Metrics()
    metrics.record_request("m", "Classify", "GRPC", "OK", 15.0)
    assert b"deployer_model_server" not in metrics.exposition()
