"""The swarm runtime for real: a single-node swarm, the compatible image, two replicas.

The module initialises a single-node swarm (``--advertise-addr 127.0.0.1``) when the daemon has none,
and leaves it afterwards only if it created it. One deployment is shared by the ordered scenarios
(up → kill a task → a failing candidate → promote and rollback under load → down), as a user would run
them; a separate project checks that a model that cannot load fails ``up`` fast.

Load is batch-1 Classify on the label from a gRPC client with the ``round_robin`` policy over every
replica's endpoint (``ipv4:127.0.0.1:p1,127.0.0.1:p2``), paced at 300 req/s from 8 threads (a thread
skips the slots a slow answer made it miss, so many threads keep the achieved rate above the 200 req/s
the scenario asks for on a busy machine).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployer.client import ServingClient
from deployer.errors import ServerRequestError
from deployer.runtime.docker import LABEL_PROJECT, DockerRuntime
from deployer.runtime.swarm import HEALTHCHECK_TEST, service_name
from deployer.state import StateDir
from tests import manifests
from tests.conftest import skip_or_fail
from tests.docker.test_cli_docker import deployer
from tests.savedmodels import FEATURES, IRIS_ROWS, write_model

pytestmark = pytest.mark.docker

MODEL = "iris"
TARGET_RPS = 300
MIN_RPS = 200


@pytest.fixture(scope="module")
def swarm(runtime: DockerRuntime) -> Iterator[None]:
    """An active swarm manager; created here (and left afterwards) only when the daemon has none."""
    client = runtime.client
    info = client.info().get("Swarm") or {}
    created = False
    if info.get("LocalNodeState") != "active":
        try:
            client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        except Exception as exc:  # any daemon refusal means the tier cannot run
            skip_or_fail(f"cannot initialise a single-node swarm: {exc}")
        created = True
    elif not info.get("ControlAvailable"):
        skip_or_fail("this Docker engine is a swarm worker, not a manager")
    try:
        yield
    finally:
        if created:
            client.swarm.leave(force=True)


def leftovers(runtime: DockerRuntime, project: str) -> dict[str, list[str]]:
    client = runtime.client
    label = f"{LABEL_PROJECT}={project}"
    return {
        "services": [s.name for s in client.services.list(filters={"label": label})],
        "configs": [c.name for c in client.configs.list(filters={"label": label})],
        "containers": [c.id for c in client.containers.list(all=True, sparse=True, filters={"label": label})],
    }


def remove_everything(runtime: DockerRuntime, project: str) -> None:
    client = runtime.client
    label = f"{LABEL_PROJECT}={project}"
    for service in client.services.list(filters={"label": label}):
        service.remove()
    for config in client.configs.list(filters={"label": label}):
        config.remove()
    deadline = time.monotonic() + 60
    while leftovers(runtime, project)["containers"] and time.monotonic() < deadline:
        time.sleep(0.5)


@dataclass
class Fleet:
    root: Path
    manifest: Path
    base: Path
    template: Path
    project: str
    outputs: list[str] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 300) -> Any:
        result = deployer(*args, timeout=timeout)
        self.outputs.append(f"$ deployer {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
        return result

    def add_version(self, version: int) -> None:
        staging = self.base / f".staging-{version}"
        shutil.copytree(self.template / str(version), staging)
        staging.rename(self.base / str(version))

    def endpoints(self) -> list[str]:
        handle = StateDir(self.root / "state").load_handle()
        assert handle is not None
        return [e.grpc_target for e in handle.fleet]

    def label_versions(self, label: str = "stable") -> list[int]:
        """The version each replica answers the label with, asked replica by replica."""
        status = json.loads(self.cli("status", "-f", str(self.manifest), "--json").stdout)
        versions = []
        for replica in status["replicas"]:
            with ServingClient(replica["grpc"], timeout=10.0) as client:
                answer = client.classify(MODEL, [dict(zip(FEATURES, IRIS_ROWS[0], strict=True))], label=label)
                versions.append(answer.version)
        return versions

    def wait_all_serving(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = json.loads(self.cli("status", "-f", str(self.manifest), "--json").stdout)
            replicas = status.get("replicas", [])
            if len(replicas) == 2 and all(r["state"] == "running" and r["grpc"] for r in replicas):
                return status
            time.sleep(2)
        raise AssertionError(f"not every replica serves after {timeout} s: {status}")


class Load:
    """Paced batch-1 Classify on a label, spread over the replicas by the round_robin policy."""

    def __init__(self, endpoints: list[str], rps: float = TARGET_RPS, threads: int = 8) -> None:
        self.target = "ipv4:" + ",".join(endpoints)
        self.rps, self.threads = rps, threads
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.started = self.stopped = 0.0

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    @property
    def rate(self) -> float:
        return self.total / max(1e-9, self.stopped - self.started)

    def _run(self, offset: float) -> None:
        interval = self.threads / self.rps
        example = [dict(zip(FEATURES, IRIS_ROWS[1], strict=True))]
        next_send = time.perf_counter() + offset
        with ServingClient(self.target, timeout=10.0, lb_policy="round_robin") as client:
            while not self._stop.is_set():
                delay = next_send - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_send = max(next_send + interval, time.perf_counter())
                try:
                    answer = client.classify(MODEL, example, label="stable")
                except ServerRequestError as exc:
                    with self._lock:
                        self.failures.append(exc.message)
                    continue
                with self._lock:
                    self.ok += 1
                    self.versions.add(answer.version)

    def __enter__(self) -> Load:
        self.started = time.perf_counter()
        interval = self.threads / self.rps
        self._workers = [
            threading.Thread(target=self._run, args=(i * interval / self.threads,), daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        time.sleep(1.0)  # the load is on before the command starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # and still on after it returned
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        self.stopped = time.perf_counter()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("swarm-template") / MODEL
    write_model(base, 1, kind="good")
    write_model(base, 2, kind="good")
    write_model(base, 3, kind="wrong")
    return base


@pytest.fixture(scope="module")
def fleet(
    swarm: None, runtime: DockerRuntime, image: str, template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("swarm")
    project = f"sw-{uuid.uuid4().hex[:8]}"
    server = {
        "runtime": "swarm",
        "image": image,
        "replicas": 2,
        "grpc_port": 0,
        "rest_port": 0,
        "health_deadline_seconds": 180,
        "container": {"memory": "1g", "pids_limit": 256},
    }
    path = manifests.write_manifest(root, project, base_path=f"models/{MODEL}", server=server)
    base = root / "models" / MODEL
    base.mkdir(parents=True)
    deployment = Fleet(root, path, base, template, project)
    deployment.add_version(1)
    try:
        yield deployment
    finally:
        deployment.cli("down", "-f", str(path))
        remove_everything(runtime, project)


def test_up_serves_two_replicas_each_healthy_and_smoked(fleet: Fleet, runtime: DockerRuntime) -> None:
    result = fleet.cli("up", "-f", str(fleet.manifest), "--json")
    assert result.returncode == 0, fleet.outputs[-1]
    report = json.loads(result.stdout)
    assert report["runtime"] == "swarm" and report["server"]["replicas"] == 2
    endpoints = report["server"]["endpoints"]
    assert len(endpoints) == 2 and len({e["grpc_target"] for e in endpoints}) == 2
    smoke = report["smoke"]
    targets = sorted(e["grpc_target"] for e in endpoints)
    assert smoke["passed"] and sorted(r["target"] for r in smoke["reports"]) == targets
    # Added after up: the specific version policy keeps them off the server until a promotion.
    fleet.add_version(2)
    fleet.add_version(3)

    [service] = runtime.client.services.list(filters={"name": service_name(fleet.project)})
    spec = service.attrs["Spec"]
    container_spec = spec["TaskTemplate"]["ContainerSpec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    assert container_spec["ReadOnly"] is True and container_spec["CapabilityDrop"] == ["ALL"]
    assert container_spec["Healthcheck"]["Test"] == HEALTHCHECK_TEST
    assert all(m["ReadOnly"] for m in container_spec["Mounts"] if m["Type"] == "bind")
    assert spec["TaskTemplate"]["Resources"]["Limits"]["Pids"] == 256
    assert {p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]} == {"host"}
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    # The task containers belong to the service: the docker runtime must not take them for its own.
    assert runtime.find(fleet.project, fleet.root / "state") is None

    smoke_run = fleet.cli("smoke", "-f", str(fleet.manifest), "--json")
    assert smoke_run.returncode == 0, fleet.outputs[-1]
    assert len(json.loads(smoke_run.stdout)["reports"]) == 2
    one = fleet.cli("smoke", "-f", str(fleet.manifest), "--replica", "2", "--json")
    assert one.returncode == 0
    assert [r["target"] for r in json.loads(one.stdout)["reports"]] == [endpoints[1]["grpc_target"]]

    status = fleet.wait_all_serving()
    assert [r["slot"] for r in status["replicas"]] == [1, 2]
    assert all(r["models"][0]["labels"] == {"stable": 1} for r in status["replicas"])
    logs = fleet.cli("logs", "-f", str(fleet.manifest), "--tail", "20")
    assert logs.returncode == 0 and "replica 1 (" in logs.stdout and "replica 2 (" in logs.stdout


def test_a_killed_task_is_replaced_and_reported_healthy_again(fleet: Fleet, runtime: DockerRuntime) -> None:
    before = fleet.wait_all_serving()
    victim = before["replicas"][1]
    [container] = [
        c
        for c in runtime.client.containers.list(filters={"label": f"{LABEL_PROJECT}={fleet.project}"})
        if c.labels.get("com.docker.swarm.task.id") == victim["id"]
    ]
    container.kill()
    after = fleet.wait_all_serving()
    replaced = after["replicas"][1]
    assert replaced["id"] != victim["id"] and replaced["grpc"] != victim["grpc"]
    assert replaced["models"][0]["labels"] == {"stable": 1}
    smoke = fleet.cli("smoke", "-f", str(fleet.manifest), "--json")
    assert smoke.returncode == 0, fleet.outputs[-1]
    assert replaced["grpc"] in [r["target"] for r in json.loads(smoke.stdout)["reports"]]


def test_a_candidate_failing_smoke_is_refused_on_every_replica_and_no_request_fails(fleet: Fleet) -> None:
    fleet.wait_all_serving()
    with Load(fleet.endpoints()) as load:
        result = fleet.cli("promote", "3", "-f", str(fleet.manifest), "--json")
    assert result.returncode == 6, fleet.outputs[-1]
    assert "failed" in result.stderr and "smoke case" in result.stderr
    assert json.loads(result.stdout)["result"] == "rolled_back"
    assert load.failures == [] and load.versions == {1}, load.failures[:3]
    assert load.rate >= MIN_RPS, f"{load.rate:.0f} req/s"
    assert fleet.label_versions() == [1, 1]


def test_promote_under_load_survives_restarts_and_rolls_back_under_load(fleet: Fleet, runtime: DockerRuntime) -> None:
    fleet.wait_all_serving()
    with Load(fleet.endpoints()) as load:
        result = fleet.cli("promote", "2", "-f", str(fleet.manifest), "--json")
    assert result.returncode == 0, fleet.outputs[-1]
    report = json.loads(result.stdout)
    assert (report["from"], report["to"], report["result"]) == (1, 2, "ok")
    assert [r["passed"] for r in report["smoke"]["replicas"]] == [True, True]
    assert load.failures == [], load.failures[:3]
    assert load.versions == {1, 2} and load.rate >= MIN_RPS, (load.versions, f"{load.rate:.0f} req/s")
    assert fleet.label_versions() == [2, 2]

    # The promoted models.config is what a replacement task reads at its start ...
    for container in runtime.client.containers.list(filters={"label": f"{LABEL_PROJECT}={fleet.project}"}):
        container.kill()
    fleet.wait_all_serving()
    assert fleet.label_versions() == [2, 2]
    # ... and what a new service reads after down/up.
    assert fleet.cli("down", "-f", str(fleet.manifest)).returncode == 0
    up = fleet.cli("up", "-f", str(fleet.manifest), "--json")
    assert up.returncode == 0, fleet.outputs[-1]
    assert json.loads(up.stdout)["models"][0]["labels"] == {"stable": 2}
    assert fleet.label_versions() == [2, 2]

    with Load(fleet.endpoints()) as load:
        result = fleet.cli("rollback", "-f", str(fleet.manifest), "--json")
    assert result.returncode == 0, fleet.outputs[-1]
    assert (json.loads(result.stdout)["to"], load.failures) == (1, [])
    assert load.versions == {1, 2} and load.rate >= MIN_RPS, (load.versions, f"{load.rate:.0f} req/s")
    assert fleet.label_versions() == [1, 1]


def test_down_leaves_no_service_config_or_container(fleet: Fleet, runtime: DockerRuntime) -> None:
    result = fleet.cli("down", "-f", str(fleet.manifest), "--json")
    assert result.returncode == 0, fleet.outputs[-1]
    assert [s["runtime"] for s in json.loads(result.stdout)["stopped"]] == ["swarm"]
    assert leftovers(runtime, fleet.project) == {"services": [], "configs": [], "containers": []}
    again = fleet.cli("down", "-f", str(fleet.manifest))
    assert again.returncode == 0 and "nothing was running" in again.stdout


def test_a_model_that_cannot_load_fails_up_with_exit_4_and_the_task_log(
    swarm: None, runtime: DockerRuntime, image: str, template: Path, tmp_path: Path
) -> None:
    project = f"sw-{uuid.uuid4().hex[:8]}"
    base = tmp_path / "models" / MODEL
    shutil.copytree(template / "1", base / "1")
    shutil.rmtree(base / "1" / "variables")  # a SavedModel without its variables cannot load
    server = {
        "runtime": "swarm", "image": image, "replicas": 2, "grpc_port": 0, "rest_port": 0,
        "health_deadline_seconds": 90,
    }  # fmt: skip
    path = manifests.write_manifest(tmp_path, project, base_path=f"models/{MODEL}", server=server)
    try:
        result = deployer("up", "-f", str(path), timeout=300)
        assert result.returncode == 4, result.stderr[-3000:]
        # Failed fast on the task's exit, not at the deadline; the merged task logs name each replica.
        assert "the server exited" in result.stderr and "not healthy after" not in result.stderr, result.stderr[-3000:]
        assert "server log (tail):\nreplica " in result.stderr
        # up stops what it started: nothing of the project is left.
        assert leftovers(runtime, project)["services"] == []
    finally:
        deployer("down", "-f", str(path))
        remove_everything(runtime, project)
