"""Issue 9 through `up`, `status` and the local runtime: items 7, 10 and 18's runtime half.

Item 10: `up` did not repair a running server whose live config had diverged from models.config
(after any outside reload): it waited the whole health deadline, exited 4 and left it broken.
Item 7: the manifest could switch hardening off silently; now each weakening is warned by `up` and
shown by `status`. Item 18: `server.host: 0.0.0.0` was silently ignored by the local runtime.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from click.testing import CliRunner

from deployer import orchestrate
from deployer.cli import main
from deployer.manifest import load_manifest
from deployer.runtime.local import LocalRuntime
from deployer.server_config import ServedModel
from deployer.state import StateDir
from tests.unit.test_orchestrate import Env, FakeRuntime, local_spec, make_env


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return make_env(tmp_path, monkeypatch)

# ---- item 10 ------------------------------------------------------------------------------------


def test_up_reapplies_the_config_after_an_outside_reload_emptied_the_server(fake_env: Env) -> None:
    orchestrate.up(fake_env.manifest)
    fake_env.world.served = {}  # someone sent HandleReloadConfigRequest with an empty config
    progress: list[str] = []
    report = orchestrate.up(fake_env.manifest, progress=progress.append)
    assert report.action == "repaired"
    assert "diverged" in report.action_reason and "model iris is not served" in report.action_reason
    assert any("does not serve" in line and "reapplying it" in line for line in progress)
    assert fake_env.world.reloads == [fake_env.state.read_models_config()]
    assert fake_env.world.served["iris"].labels == {"stable": 1} and report.smoke_passed
    assert len(fake_env.runtime.started) == 1 and fake_env.runtime.stopped == []  # repaired in place


def test_up_repairs_a_moved_label_and_an_extra_version(fake_env: Env) -> None:
    orchestrate.up(fake_env.manifest)
    (fake_env.base / "2").mkdir()
    fake_env.world.served = {"iris": ServedModel("iris", "/seen/iris", (1, 2), {"stable": 2})}
    report = orchestrate.up(fake_env.manifest)
    assert report.action == "repaired" and "served but not in the config" in report.action_reason
    assert fake_env.world.served["iris"] == ServedModel("iris", "/seen/iris", (1,), {"stable": 1})


def test_up_recreates_the_server_when_it_refuses_the_config(fake_env: Env) -> None:
    first = orchestrate.up(fake_env.manifest)
    fake_env.world.served = {}
    fake_env.world.refuse_reloads = True
    report = orchestrate.up(fake_env.manifest)
    assert report.action == "recreated" and "reapplying it failed" in report.action_reason
    assert fake_env.runtime.stopped == [first.handle.ident] and len(fake_env.runtime.started) == 2
    assert fake_env.world.served["iris"].labels == {"stable": 1}  # the new server read the file


def test_an_unchanged_server_is_reused_without_a_reload(fake_env: Env) -> None:
    orchestrate.up(fake_env.manifest)
    assert orchestrate.up(fake_env.manifest).action == "reused"
    assert fake_env.world.reloads == []


# ---- item 7 -------------------------------------------------------------------------------------


def _weakened_manifest(env: Env, **server: Any) -> Path:
    assert env.manifest.source is not None
    doc = yaml.safe_load(env.manifest.source.read_text())
    doc["server"].update(server)
    env.manifest.source.write_text(yaml.safe_dump(doc))
    return env.manifest.source


def test_up_warns_about_each_weakening_and_status_shows_it(fake_env: Env) -> None:
    path = _weakened_manifest(fake_env, host="0.0.0.0", weakenings=["listen_beyond_loopback"])
    manifest = load_manifest(path)
    progress: list[str] = []
    report = orchestrate.up(manifest, progress=progress.append)
    assert list(report.weakenings) == ["listen_beyond_loopback"]
    assert any(line.startswith("warning: hardening weakened (listen_beyond_loopback)") for line in progress)
    assert report.handle.weakenings == ("listen_beyond_loopback",)
    status = orchestrate.status(manifest)
    assert list(status.weakenings) == ["listen_beyond_loopback"]
    doc = json.loads(CliRunner().invoke(main, ["status", "-f", str(path), "--json"]).stdout)
    assert list(doc["weakenings"]) == ["listen_beyond_loopback"]
    text = CliRunner().invoke(main, ["status", "-f", str(path)]).stdout
    assert "hardening: WEAKENED listen_beyond_loopback" in text


def test_status_says_default_hardening_when_nothing_is_weakened(fake_env: Env) -> None:
    orchestrate.up(fake_env.manifest)
    assert fake_env.manifest.source is not None
    text = CliRunner().invoke(main, ["status", "-f", str(fake_env.manifest.source)]).stdout
    assert "hardening: default" in text


class _Docker(FakeRuntime):
    name: ClassVar[str] = "docker"


def test_container_weakenings_count_only_where_there_is_a_container(fake_env: Env) -> None:
    path = _weakened_manifest(
        fake_env,
        container={"memory": None, "pids_limit": None, "read_only_root": False},
        weakenings=["no_memory_limit", "no_pids_limit", "writable_root_filesystem"],
    )
    manifest = load_manifest(path)
    docker = _Docker(fake_env.world, fake_env.state)
    assert set(orchestrate.weakenings_in_effect(manifest, docker)) == {
        "no_memory_limit", "no_pids_limit", "writable_root_filesystem",
    }  # fmt: skip
    assert orchestrate.weakenings_in_effect(manifest, LocalRuntime(manifest.state_path, command=[sys.executable])) == {}


def test_the_real_tensorflow_model_server_always_listens_beyond_loopback(fake_env: Env) -> None:
    local = LocalRuntime(fake_env.manifest.state_path, command=["/usr/bin/tensorflow_model_server"])
    found = orchestrate.weakenings_in_effect(fake_env.manifest, local)
    assert list(found) == ["listen_beyond_loopback"] and "no bind-address flag" in found["listen_beyond_loopback"]


# ---- item 18: the local runtime passes server.host to the server ---------------------------------

PRINT_HOST = "import os, time; print('host', os.environ.get('DEPLOYER_MODEL_SERVER_HOST'), flush=True); time.sleep(30)"


def test_the_local_runtime_binds_the_manifest_host(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state", "p")
    runtime = LocalRuntime(state.root, command=[sys.executable, "-c", PRINT_HOST], stop_grace_s=1)
    handle = runtime.start(replace(local_spec(state), project="p", host="0.0.0.0"))
    try:
        deadline = time.monotonic() + 10
        while "host" not in runtime.logs(handle) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "host 0.0.0.0" in runtime.logs(handle)
        assert handle.grpc_target.startswith("127.0.0.1:")  # clients still dial loopback
    finally:
        with suppress(Exception):
            runtime.stop(handle)
