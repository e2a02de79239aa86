"""Health and smoke against a real deployer-model-server, and `deployer up --runtime local` end to end.

Servers listen on free ports only; every server this module starts is stopped in a finalizer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.client import ServingClient
from deployer.errors import NotHealthy
from deployer.health import wait_healthy, wait_versions_available
from deployer.manifest import ModelSpec, ServerSettings
from deployer.runtime.base import LaunchSpec
from deployer.runtime.local import LocalRuntime
from deployer.server_config import ServedModel, render_files, render_models_config, server_flags
from deployer.smoke import run_smoke, run_smoke_rest
from deployer.state import StateDir
from tests import manifests
from tests.grpc.conftest import RunningServer
from tests.savedmodels import FEATURES, write_model

pytestmark = pytest.mark.grpc

ROOT = Path(__file__).resolve().parents[2]


def model_spec() -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "iris",
            "trainer": "models.iris.trainer:train",
            "base_path": "unused",
            "features": [{"name": n} for n in FEATURES],
            "classes": ["0", "1", "2"],
            "smoke": manifests.smoke_cases(),
        }
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris/1 answers right, iris/2 always answers "2", broken/1 cannot load."""
    base = tmp_path_factory.mktemp("models")
    write_model(base / "iris", 1, kind="good")
    write_model(base / "iris", 2, kind="wrong")
    write_model(base / "broken", 1, kind="broken")
    return base


@pytest.fixture(scope="module")
def server(models: Path, model_server: Callable[..., RunningServer]) -> RunningServer:
    config = render_models_config([ServedModel("iris", str(models / "iris"), (1, 2), {"stable": 1, "canary": 2})])
    return model_server(config, "--allow_version_labels_for_unavailable_models=true")


@pytest.fixture()
def client(server: RunningServer) -> Iterator[ServingClient]:
    with ServingClient(server.target) as c:
        yield c


def test_healthy_with_versions_and_labels(client: ServingClient) -> None:
    report = wait_healthy(client, {"iris": [1, 2]}, {"iris": {"stable": 1, "canary": 2}}, deadline_s=30)
    assert [(s.version, s.state) for s in report.models["iris"]] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
    assert report.checks == 1


def test_a_label_on_the_wrong_version_is_not_healthy(client: ServingClient) -> None:
    started = time.monotonic()
    with pytest.raises(NotHealthy, match="label stable resolves to 1, want 2"):
        wait_healthy(client, {"iris": [1, 2]}, {"iris": {"stable": 2}}, deadline_s=1.0)
    assert time.monotonic() - started < 5


def test_an_unserved_version_times_out(client: ServingClient) -> None:
    with pytest.raises(NotHealthy, match="waiting for version"):
        wait_versions_available(client, "iris", [7], deadline_s=0.5)


def test_nothing_listening_is_a_timeout_not_a_crash() -> None:
    from tests.grpc.conftest import free_port

    with ServingClient(f"127.0.0.1:{free_port()}") as nobody, pytest.raises(NotHealthy, match="does not answer yet"):
        wait_healthy(nobody, {"iris": [1]}, {}, deadline_s=0.5)


def test_smoke_good_and_wrong_over_grpc(client: ServingClient) -> None:
    good = run_smoke(client, model_spec(), label="stable")
    assert good.passed, [c.reason for c in good.failures]
    assert {c.served_version for c in good.cases} == {1}
    wrong = run_smoke(client, model_spec(), version=2)
    assert [c.passed for c in wrong.cases] == [False, False, True]
    assert wrong.cases[0].got == "2" and wrong.cases[0].served_version == 2
    missing = run_smoke(client, model_spec(), label="nope")
    assert not missing.passed and "nope" in (missing.cases[0].error or "")


def test_smoke_over_rest(server: RunningServer) -> None:
    assert run_smoke_rest(server.rest, model_spec(), label="stable").passed
    wrong = run_smoke_rest(server.rest, model_spec(), version=2)
    assert [c.passed for c in wrong.cases] == [False, False, True]


def test_local_runtime_failed_load_is_not_healthy_with_the_log(models: Path, tmp_path: Path) -> None:
    """An initial load failure makes the server exit: health says so at once, with exit code and log tail."""
    state = StateDir(tmp_path / "state")
    runtime = LocalRuntime(state.root, stop_grace_s=5)
    layout = runtime.layout({"broken": models / "broken"}, state.config_dir)
    settings = ServerSettings(grpc_port=0, rest_port=0)
    served = ServedModel("broken", layout.model_paths["broken"], (1,))
    state.write_config_files(render_files(settings, [served]))
    flags = tuple(server_flags(settings, layout.config_dir))
    spec = LaunchSpec("t", "h", "", "127.0.0.1", 0, 0, flags, layout, state.root)
    handle = runtime.start(spec)
    try:
        with ServingClient(handle.grpc_target) as c, pytest.raises(NotHealthy) as info:
            wait_healthy(
                c, {"broken": [1]}, {}, deadline_s=60,
                server_state=lambda: runtime.state(handle), log_tail=lambda: runtime.logs(handle),
            )  # fmt: skip
        assert "the server exited (exit code" in info.value.message
        assert info.value.details is not None and "broken" in info.value.details
    finally:
        runtime.stop(handle)
    assert runtime.find("t", state.root) is None


# ---- `deployer up --runtime local` end to end ------------------------------------------------------


def deployer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", "from deployer.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=str(ROOT),
    )  # fmt: skip


def write_manifest(root: Path, project: str) -> Path:
    server = {"runtime": "local", "grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 90}
    return manifests.write_manifest(root, project, server=server)


@pytest.fixture()
def project_dir(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    manifest = write_manifest(tmp_path, f"g-{uuid.uuid4().hex[:8]}")
    yield tmp_path, manifest
    deployer("down", "-f", str(manifest), timeout=60)


def test_up_smoke_status_down_end_to_end(project_dir: tuple[Path, Path]) -> None:
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="good")
    m = str(manifest)

    up = deployer("up", "-f", m, "--runtime", "local", "--json")
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert report["runtime"] == "local" and report["action"] == "started"
    assert report["models"][0]["labels"] == {"stable": 1}
    assert report["smoke"]["passed"] and report["smoke"]["reports"][0]["total"] == 3
    assert report["exported"] == []  # a version existed: no training
    pid = report["server"]["id"]

    junit = root / "smoke.xml"
    smoke = deployer("smoke", "-f", m, "--junit", str(junit))
    assert smoke.returncode == 0, smoke.stderr
    assert ET.parse(junit).getroot().get("failures") == "0"
    assert deployer("smoke", "-f", m, "--rest", "--version", "1").returncode == 0

    status = json.loads(deployer("status", "-f", m, "--json").stdout)
    assert status["running"] and status["server"]["id"] == pid
    assert status["models"][0]["versions"][0]["state"] == "AVAILABLE"
    assert status["server"]["grpc"].startswith("127.0.0.1:")

    again = json.loads(deployer("up", "-f", m, "--json").stdout)
    assert again["action"] == "reused" and again["server"]["id"] == pid

    logs = deployer("logs", "-f", m, "--tail", "5")
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) <= 5

    down = json.loads(deployer("down", "-f", m, "--json").stdout)
    assert [s["id"] for s in down["stopped"]] == [pid]
    assert not Path(f"/proc/{pid}").exists() or b"deployer" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert json.loads(deployer("down", "-f", m, "--json").stdout)["stopped"] == []
    assert (root / "exports" / "iris" / "1").is_dir()
    after = deployer("smoke", "-f", m)
    assert after.returncode == 4 and "deployer up" in after.stderr


def test_a_wrong_model_fails_up_and_smoke_with_exit_5(project_dir: tuple[Path, Path]) -> None:
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="wrong")
    up = deployer("up", "-f", str(manifest), "--runtime", "local")
    assert up.returncode == 5, up.stderr
    assert "smoke failed: iris label stable: 2 of 3 case(s) failed; row0: expected class '0', got '2'" in up.stderr
    smoke = deployer("smoke", "-f", str(manifest), "--json")
    assert smoke.returncode == 5
    assert json.loads(smoke.stdout)["reports"][0]["failed"] == 2


def test_logs_after_a_failed_up_show_the_log_of_the_server_that_failed(project_dir: tuple[Path, Path]) -> None:
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="broken")
    m = str(manifest)
    up = deployer("up", "-f", m, "--runtime", "local")
    assert up.returncode == 4, up.stderr
    assert f"hint: `deployer logs -f {manifest}` shows the server log" in up.stderr
    logs = deployer("logs", "-f", m)
    assert logs.returncode == 0, logs.stderr
    assert "no server is running" in logs.stderr and "failed to become healthy" in logs.stderr
    assert "iris" in logs.stdout and "Traceback" not in logs.stderr
    # TensorFlow's start-up chatter is left out unless asked for.
    assert "cudart_stub.cc" not in logs.stdout and "All log messages before absl" not in logs.stdout
    raw = deployer("logs", "-f", m, "--raw", "--json")
    doc = json.loads(raw.stdout)
    assert doc["source"] == "last-server" and len(doc["lines"]) >= len(logs.stdout.splitlines())


def test_logs_follow_streams_until_the_server_stops(project_dir: tuple[Path, Path]) -> None:
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="good")
    m = str(manifest)
    assert deployer("up", "-f", m, "--runtime", "local").returncode == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    follower = subprocess.Popen(
        [sys.executable, "-c", "from deployer.cli import main; main()", "logs", "-f", m, "--follow", "--tail", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )  # fmt: skip
    try:
        time.sleep(3)
        assert follower.poll() is None, "--follow ended while the server runs"
        assert deployer("down", "-f", m).returncode == 0
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert out.strip(), "nothing was printed"


@pytest.mark.parametrize("when", ["importing", "starting the local server", "waiting for"])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_server(project_dir: tuple[Path, Path], when: str) -> None:
    """Whatever `up` is doing (importing its modules, starting the server, waiting for health), Ctrl-C
    ends it with one line and exit 130, and the server it started is stopped."""
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="good")
    script = Path(sys.executable).parent / "deployer"  # the console script users run
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")

    def default_sigint() -> None:
        # A test runner may start children with SIGINT ignored; Python only turns SIGINT into
        # KeyboardInterrupt when it is not ignored.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    up = subprocess.Popen(
        [str(script), "up", "-f", str(manifest), "--runtime", "local"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT), preexec_fn=default_sigint,
    )  # fmt: skip
    assert up.stderr is not None
    seen = []
    if when == "importing":
        time.sleep(0.3)  # after the interpreter started, before the CLI's imports are done
    else:
        for line in up.stderr:
            seen.append(line)
            if line.startswith(when):
                break
    up.send_signal(signal.SIGINT)
    _out, rest = up.communicate(timeout=120)
    err = "".join(seen) + rest
    assert up.returncode == 130, err
    assert "Traceback" not in err and err.rstrip().endswith("deployer: interrupted"), err
    status = deployer("status", "-f", str(manifest), "--json")
    assert json.loads(status.stdout)["running"] is False


def test_predict_smoke_status_through_the_server_and_against_any_target(project_dir: tuple[Path, Path]) -> None:
    """predict without --local goes through the server; smoke/status --target work against a server
    named by address; typos in --label/--version are exit 2 naming what the server has."""
    root, manifest = project_dir
    write_model(root / "exports" / "iris", 1, kind="good")
    m = str(manifest)
    up = deployer("up", "-f", m, "--runtime", "local", "--json")
    assert up.returncode == 0, up.stderr
    grpc_target = json.loads(up.stdout)["server"]["grpc"]
    rest_url = json.loads(up.stdout)["server"]["rest"]
    row = ["--example", "SepalLength=5.1", "--example", "SepalWidth=3.3", "--example", "PetalLength=1.7",
           "--example", "PetalWidth=0.5"]  # fmt: skip

    predicted = deployer("predict", "-f", m, *row, "--json")
    assert predicted.returncode == 0, predicted.stderr
    doc = json.loads(predicted.stdout)
    assert doc["version"] == 1 and doc["via"] == f"served at {grpc_target}"
    assert doc["predictions"][0]["class"] == "0"

    # A manifest in another directory with no state at all: only --target says where the server is.
    elsewhere = manifests.write_manifest(root / "elsewhere", "other-project", server={"runtime": "local"},
                                         base_path=str(root / "exports" / "iris"))  # fmt: skip
    assert deployer("smoke", "-f", str(elsewhere)).returncode == 4  # no server of its own
    smoke = deployer("smoke", "-f", str(elsewhere), "--target", grpc_target, "--json")
    assert smoke.returncode == 0, smoke.stderr
    assert json.loads(smoke.stdout)["reports"][0]["target"] == grpc_target
    rest = deployer("smoke", "-f", str(elsewhere), "--target", grpc_target, "--rest", "--rest-url", rest_url)
    assert rest.returncode == 0, rest.stderr
    status = deployer("status", "-f", str(elsewhere), "--target", grpc_target, "--json")
    assert status.returncode == 0, status.stderr
    status_doc = json.loads(status.stdout)
    assert status_doc["models"][0]["labels"] == {"stable": 1}
    assert status_doc["models"][0]["versions"][0]["state"] == "AVAILABLE"
    via_target = deployer("predict", "-f", str(elsewhere), *row, "--target", grpc_target, "--json")
    assert via_target.returncode == 0 and json.loads(via_target.stdout)["predictions"][0]["class"] == "0"

    typo = deployer("smoke", "-f", m, "--label", "stabel")
    assert typo.returncode == 2, typo.stderr
    assert "model iris has no label 'stabel' on the server; labels: stable → 1" in typo.stderr
    unloaded = deployer("smoke", "-f", m, "--version", "5")
    assert unloaded.returncode == 2 and "the server has: 1 (AVAILABLE)" in unloaded.stderr
    assert deployer("status", "-f", str(elsewhere), "--target", "127.0.0.1:1").returncode == 4
