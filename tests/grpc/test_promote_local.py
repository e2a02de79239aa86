"""`deployer promote/rollback/history` end to end, run as users run them (the CLI in a subprocess).

Each test gets its own deployment: a tmp manifest whose base path holds SavedModels from
tests/savedmodels (v1 good at ``up``; v2 good, v3 wrong, v4 good and v5 corrupt added afterwards,
which a ``specific`` version policy leaves unloaded), brought up with ``deployer up``. The scenarios
are runtime-agnostic: tests/docker/test_promote_docker.py imports them with a docker ``runtime_args``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from deployer.client import ServingClient
from deployer.errors import ServerRequestError
from deployer.ledger import Ledger, LedgerEntry
from deployer.promote import promotion_lock
from deployer.server_config import ServedModel, parse_models_config
from deployer.state import StateDir
from tests import manifests
from tests.conftest import skip_or_fail
from tests.grpc.conftest import classify
from tests.savedmodels import FEATURES, IRIS_ROWS

pytestmark = pytest.mark.grpc

REPO = Path(__file__).resolve().parents[2]
MODEL = "iris"
CLI_TIMEOUT = 300.0


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    env["DEPLOYER_USER"] = "pytest"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # rich wraps long lines at the terminal width; tests match on whole messages.
    env["COLUMNS"] = "400"
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from deployer.cli import main; main()", *args]


def example(row: int = 0) -> dict[str, float]:
    return dict(zip(FEATURES, IRIS_ROWS[row], strict=True))


@pytest.fixture(scope="session")
def models_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (TensorFlow is slow to import); deployments copy the versions they need."""
    from tests.savedmodels import write_model

    base = tmp_path_factory.mktemp("promote-template") / MODEL
    write_model(base, 1, kind="good")
    write_model(base, 2, kind="good")
    write_model(base, 3, kind="wrong")
    write_model(base, 4, kind="good")
    return base


@pytest.fixture
def runtime_args() -> list[str]:
    # find_spec, not import: the server module pulls in TensorFlow, which only the server process needs.
    for module in ("deployer.model_server.main", "deployer.runtime.local", "deployer.store"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail(f"the local runtime is not available: {module} is missing")
    return ["--runtime", "local"]


@dataclass
class Deployment:
    root: Path
    manifest: Path
    base: Path
    template: Path
    runtime_args: list[str]
    project: str
    outputs: list[str] = field(default_factory=list)

    @property
    def state(self) -> StateDir:
        return StateDir(self.root / "state")

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cli_command(*args), capture_output=True, text=True, env=cli_env(), cwd=self.root, timeout=timeout
        )
        self.outputs.append(f"$ deployer {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
        return result

    def promote(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("promote", *args, "-f", str(self.manifest))

    def up(self) -> None:
        result = self.cli("up", "-f", str(self.manifest), *self.runtime_args)
        # The tier's prerequisites are checked by runtime_args; past that, a failing `up` is a failure.
        assert result.returncode == 0, f"deployer up failed ({result.returncode}):\n{result.stderr[-4000:]}"

    def down(self) -> None:
        self.cli("down", "-f", str(self.manifest))

    def add_version(self, version: int, *, corrupt: bool = False) -> Path:
        source = self.template / str(4 if corrupt else version)
        staging = self.base / f".staging-{version}"
        shutil.copytree(source, staging)
        if corrupt:
            shutil.rmtree(staging / "variables")
        final = self.base / str(version)
        os.rename(staging, final)  # atomic: nothing polls a half-copied version dir
        return final

    def client(self) -> ServingClient:
        handle = self.state.load_handle()
        assert handle is not None, "no server handle in the state dir"
        return ServingClient(handle.grpc_target, timeout=10.0)

    def label_version(self, label: str = "stable") -> int:
        with self.client() as client:
            return client.classify(MODEL, [example()], label=label).version

    def config(self) -> ServedModel:
        return parse_models_config(self.state.models_config.read_text())[0]

    def ledger(self) -> list[LedgerEntry]:
        return Ledger(self.state.ledger).entries()


def write_manifest(root: Path, project: str, **server_settings: Any) -> Path:
    server = {
        "grpc_port": 0,
        "rest_port": 0,
        "health_deadline_seconds": 120,
        "reload_deadline_seconds": 60,
        "container": {"memory": "1g", "pids_limit": 256},
        **server_settings,
    }
    return manifests.write_manifest(root, project, base_path=f"models/{MODEL}", server=server)


@pytest.fixture
def deploy(tmp_path: Path, models_template: Path, runtime_args: list[str]) -> Iterator[Deployment]:
    yield from _deployment(tmp_path, models_template, runtime_args)


@pytest.fixture
def deploy_two_processes(tmp_path: Path, models_template: Path, runtime_args: list[str]) -> Iterator[Deployment]:
    """A deployment whose server runs --num_server_processes=2 (passed through server.extra_args)."""
    yield from _deployment(
        tmp_path,
        models_template,
        runtime_args,
        extra_args=["--num_server_processes=2"],
        container={"memory": "2g", "pids_limit": 256},  # each process holds its own TensorFlow (~600 MiB)
    )


def _deployment(
    tmp_path: Path, models_template: Path, runtime_args: list[str], **server_settings: Any
) -> Iterator[Deployment]:
    project = f"promo-{uuid.uuid4().hex[:8]}"
    base = tmp_path / "models" / MODEL
    base.mkdir(parents=True)
    manifest = write_manifest(tmp_path, project, **server_settings)
    deployment = Deployment(tmp_path, manifest, base, models_template, runtime_args, project)
    deployment.add_version(1)
    try:
        deployment.up()
        # Added after `up`: the specific version policy keeps them off the server until a promotion.
        for version in (2, 3, 4):
            deployment.add_version(version)
        deployment.add_version(5, corrupt=True)
        yield deployment
    finally:
        deployment.down()


class Load:
    """Batch-1 Classify on a label from a few threads, bounded in count and time; counts every failure.

    Threads share one connection (grpc pools a process's identical channels), unless ``channels`` gives
    each thread its own channel (with its own connection) to use instead.
    """

    def __init__(
        self,
        target: str,
        label: str = "stable",
        *,
        threads: int = 3,
        max_requests: int = 4000,
        channels: list[grpc.Channel] | None = None,
    ) -> None:
        self.target, self.label, self.max_requests = target, label, max_requests
        self.channels = channels or []
        self.threads = len(self.channels) or threads
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _run_on(self, channel: grpc.Channel) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self.total >= self.max_requests:
                    return
            try:
                response = classify(channel, MODEL, [IRIS_ROWS[1]], label=self.label)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
                continue
            with self._lock:
                self.ok += 1
                self.versions.add(response.model_spec.version.value)  # type: ignore[attr-defined]
            time.sleep(0.005)

    def _run(self) -> None:
        with ServingClient(self.target, timeout=10.0) as client:
            while not self._stop.is_set():
                with self._lock:
                    if self.total >= self.max_requests:
                        return
                try:
                    answer = client.classify(MODEL, [example(1)], label=self.label)
                except ServerRequestError as exc:
                    with self._lock:
                        self.failures.append(exc.message)
                    continue
                with self._lock:
                    self.ok += 1
                    self.versions.add(answer.version)
                time.sleep(0.005)

    def __enter__(self) -> Load:
        if self.channels:
            self._workers = [threading.Thread(target=self._run_on, args=(c,), daemon=True) for c in self.channels]
        else:
            self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)


# ---- scenarios ---------------------------------------------------------------------------------------


def test_promotion_succeeds_survives_a_restart_and_rolls_back(deploy: Deployment) -> None:
    assert deploy.label_version() == 1

    result = deploy.promote("2", "--json")
    assert result.returncode == 0, deploy.outputs[-1]
    report = json.loads(result.stdout)
    assert (report["from"], report["to"], report["result"]) == (1, 2, "ok")
    assert report["smoke"]["passed"] is True and report["class_changes"] == 0
    assert deploy.label_version() == 2
    assert deploy.config().labels == {"stable": 2} and deploy.config().versions == (1, 2)

    # The file on disk is the truth: a fresh server (down, then up) comes back promoted.
    deploy.down()
    deploy.up()
    assert deploy.label_version() == 2

    result = deploy.cli("rollback", "-f", str(deploy.manifest))
    assert result.returncode == 0, deploy.outputs[-1]
    assert "rolled back" in result.stderr
    assert deploy.label_version() == 1

    history = json.loads(deploy.cli("history", "-f", str(deploy.manifest), "--json").stdout)
    rows = [(e["kind"], e["from"], e["to"], e["result"], e["user"]) for e in history["entries"]]
    assert rows == [("promote", 1, 2, "ok", "pytest"), ("rollback", 2, 1, "ok", "pytest")]
    assert {"load", "smoke", "switch", "total"} <= set(history["entries"][0]["durations"])


def test_a_candidate_that_fails_smoke_is_rolled_back_and_no_request_fails(deploy: Deployment) -> None:
    before = deploy.state.models_config.read_text()
    with deploy.client() as client:
        target = client.target
    with Load(target) as load:
        result = deploy.promote("3")
        time.sleep(0.5)  # a few requests after the restore, too
    assert result.returncode == 6, deploy.outputs[-1]
    assert "2 of 3 smoke case(s) failed (1 passed)" in result.stderr
    assert "still points at version 1" in result.stderr
    # The comparison explains the refusal, so it is shown on failure too.
    assert "stable version 1 vs candidate 3" in result.stdout and "changed" in result.stdout
    assert deploy.label_version() == 1
    assert deploy.state.models_config.read_text() == before
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0 and load.versions == {1}
    (entry,) = deploy.ledger()
    assert entry.result == "rolled_back" and entry.smoke["passed"] is False


def test_unusable_versions_are_refused_before_the_server_is_touched(deploy: Deployment) -> None:
    before = deploy.state.models_config.read_text()

    corrupt = deploy.promote("5")
    assert corrupt.returncode == 6, deploy.outputs[-1]
    assert "refused" in corrupt.stderr and "version 5" in corrupt.stderr

    missing = deploy.promote("42")
    assert missing.returncode == 2, deploy.outputs[-1]
    assert "42" in missing.stderr and "Traceback" not in missing.stderr

    assert deploy.state.models_config.read_text() == before
    with deploy.client() as client:
        assert [s.version for s in client.model_status(MODEL)] == [1]
    (entry,) = deploy.ledger()  # the refusal is recorded; the typo is not
    assert entry.to_version == 5 and entry.result == "failed"


def test_concurrent_promotions_are_serialized_and_the_ledger_stays_consistent(deploy: Deployment) -> None:
    logs = [deploy.root / f"promote-{v}.log" for v in (2, 4)]
    with promotion_lock(deploy.state, deploy.project, wait=False, progress=lambda m: None):
        refused = deploy.promote("2", "--no-wait")
        assert refused.returncode == 6, deploy.outputs[-1]
        assert f"another promotion of {deploy.project} is running (pid {os.getpid()})" in refused.stderr

        procs = []
        for version, log in zip((2, 4), logs, strict=True):
            with log.open("w") as handle:
                procs.append(
                    subprocess.Popen(
                        cli_command("promote", str(version), "-f", str(deploy.manifest)),
                        stdout=subprocess.DEVNULL,
                        stderr=handle,
                        env=cli_env(),
                        cwd=deploy.root,
                    )
                )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all("waiting for another promotion" in log.read_text() for log in logs):
                break
            time.sleep(0.2)
        else:
            pytest.fail("both promotions should be waiting for the lock:\n" + "\n".join(p.read_text() for p in logs))
        assert deploy.ledger() == []  # nothing ran while the lock was held
    codes = [proc.wait(timeout=CLI_TIMEOUT) for proc in procs]
    assert codes == [0, 0], "\n".join(log.read_text() for log in logs)

    entries = deploy.ledger()
    assert [e.result for e in entries] == ["ok", "ok"]
    assert entries[0].from_version == 1 and entries[1].from_version == entries[0].to_version
    assert deploy.label_version() == entries[1].to_version
    assert deploy.config().labels == {"stable": entries[1].to_version}


def test_requests_on_the_label_never_fail_during_promotion_and_rollback(deploy: Deployment) -> None:
    with deploy.client() as client:
        target = client.target
    with Load(target, threads=3) as load:
        promoted = deploy.promote("2")
        rolled_back = deploy.cli("rollback", "-f", str(deploy.manifest))
        time.sleep(0.5)
    assert promoted.returncode == 0, deploy.outputs[-2]
    assert rolled_back.returncode == 0, deploy.outputs[-1]
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 50  # the load really overlapped the promotion
    assert load.versions == {1, 2}  # and saw the label switch both ways
    assert deploy.label_version() == 1


def _process_requests(rest_url: str) -> dict[int, float]:
    """process index -> requests it answered (--num_server_processes' line on the merged metrics page)."""
    with urllib.request.urlopen(f"{rest_url}/monitoring/prometheus/metrics", timeout=30) as response:
        page = response.read().decode()
    found = re.findall(r'deployer_model_server_process_requests_total\{pid="\d+",process="(\d+)"\} (\S+)', page)
    return {int(index): float(count) for index, count in found}


def _channels_on_every_process(target: str, rest_url: str, per_process: int = 2) -> list[grpc.Channel]:
    """Channels with a connection each, at least ``per_process`` on every server process (SO_REUSEPORT
    spreads connections at random: open them until it has)."""
    by_process: dict[int, list[grpc.Channel]] = {}
    spare: list[grpc.Channel] = []
    for _ in range(64):
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        before = _process_requests(rest_url)
        classify(channel, MODEL, [IRIS_ROWS[1]], label="stable")
        after = _process_requests(rest_url)
        (index,) = [i for i in after if after[i] != before.get(i, 0.0)]
        if len(by_process.setdefault(index, [])) < per_process:
            by_process[index].append(channel)
        else:
            spare.append(channel)
        if len(by_process) >= 2 and all(len(c) == per_process for c in by_process.values()):
            break
    for channel in spare:
        channel.close()
    assert len(by_process) == 2, f"64 connections all landed on process {list(by_process)}"
    return [channel for channels in by_process.values() for channel in channels]


def test_requests_never_fail_during_promotion_with_two_server_processes(deploy_two_processes: Deployment) -> None:
    """deployer knows nothing of the flag: server.extra_args passes it; labels move fleet-wide."""
    deploy = deploy_two_processes
    handle = deploy.state.load_handle()
    assert handle is not None and handle.rest_url is not None
    channels = _channels_on_every_process(handle.grpc_target, handle.rest_url)
    before = _process_requests(handle.rest_url)
    try:
        with Load(handle.grpc_target, channels=channels) as load:
            promoted = deploy.promote("2")
            rolled_back = deploy.cli("rollback", "-f", str(deploy.manifest))
            time.sleep(0.5)
    finally:
        for channel in channels:
            channel.close()
    after = _process_requests(handle.rest_url)
    assert promoted.returncode == 0, deploy.outputs[-2]
    assert rolled_back.returncode == 0, deploy.outputs[-1]
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 50 and load.versions == {1, 2}
    assert all(after[i] - before[i] >= 20 for i in (0, 1)), (before, after)  # both processes took load
    assert deploy.label_version() == 1


def test_promote_and_rollback_with_target_drive_a_server_this_manifest_did_not_start(deploy: Deployment) -> None:
    """Another checkout (no server handle, its own state dir) holding the served models.config promotes
    the running server by address; a label typo is exit 2 naming the labels."""
    with deploy.client() as client:
        target = client.target
    other_root = deploy.root / "ci-checkout"
    server = {"grpc_port": 0, "rest_port": 0}
    other = manifests.write_manifest(other_root, deploy.project, base_path=str(deploy.base), server=server)
    other_state = StateDir(other_root / "state")
    other_state.write_config_files({"models.config": deploy.state.models_config.read_text()})

    typo = deploy.cli("promote", "2", "-f", str(other), "--target", target, "--label", "stabel")
    assert typo.returncode == 2, deploy.outputs[-1]
    assert "no label 'stabel'" in typo.stderr and "stable" in typo.stderr

    promoted = deploy.cli("promote", "2", "-f", str(other), "--target", target, "--json")
    assert promoted.returncode == 0, deploy.outputs[-1]
    assert json.loads(promoted.stdout)["to"] == 2
    assert deploy.label_version() == 2
    rolled = deploy.cli("rollback", "-f", str(other), "--target", target)
    assert rolled.returncode == 0, deploy.outputs[-1]
    assert deploy.label_version() == 1
    assert deploy.cli("promote", "2", "-f", str(other), "--target", "127.0.0.1:1").returncode == 4
