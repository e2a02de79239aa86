"""`deployer up/smoke/status/down` through the real Docker daemon with the compatible image.

Each test has its own project (container name and labels) and free ports; `down` runs in a finalizer,
and the conftest's ``project`` fixture force-removes anything still labelled with the project.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.runtime.docker import LABEL_MANAGED, LABEL_PROJECT, DockerRuntime, compat_image
from tests import manifests
from tests.savedmodels import write_model

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def deployer(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", "from deployer.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, check=False, cwd=str(ROOT),
    )  # fmt: skip


def write_manifest(root: Path, project: str, image: str, **server: Any) -> Path:
    settings = {"runtime": "docker", "image": image, "grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 120}
    return manifests.write_manifest(
        root,
        project,
        smoke=manifests.smoke_cases(min_score=None),
        server={**settings, "container": {"memory": "1g"}, **server},
    )


@pytest.fixture()
def manifest(tmp_path: Path, project: str, image: str) -> Iterator[Path]:
    write_model(tmp_path / "exports" / "iris", 1, kind="good")
    path = write_manifest(tmp_path, project, image)
    yield path
    deployer("down", "-f", str(path), timeout=120)


def containers(runtime: DockerRuntime, project: str) -> list[Any]:
    # sparse: no per-container inspect, which races with a container being removed meanwhile.
    return list(runtime.client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_PROJECT}={project}"}))


def test_up_smoke_status_reuse_down(manifest: Path, runtime: DockerRuntime, project: str, tmp_path: Path) -> None:
    m = str(manifest)
    up = deployer("up", "-f", m, "--json")
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert report["runtime"] == "docker" and report["action"] == "started"
    assert report["smoke"]["passed"] and report["models"][0]["labels"] == {"stable": 1}
    container_id = report["server"]["id"]
    [container] = containers(runtime, project)
    assert container.id == container_id and container.attrs["Labels"][LABEL_MANAGED] == "true"

    junit = tmp_path / "smoke.xml"
    smoke = deployer("smoke", "-f", m, "--junit", str(junit))
    assert smoke.returncode == 0, smoke.stderr
    assert ET.parse(junit).getroot().get("tests") == "3"
    assert deployer("smoke", "-f", m, "--rest").returncode == 0

    status_run = deployer("status", "-f", m, "--json")
    assert status_run.returncode == 0, status_run.stderr
    status = json.loads(status_run.stdout)
    assert status["running"] and status["runtime"] == "docker" and status["server"]["id"] == container_id
    assert status["models"][0]["versions"][0]["state"] == "AVAILABLE"

    started = time.monotonic()
    again = deployer("up", "-f", m, "--json")
    warm = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["action"] == "reused"
    assert [c.id for c in containers(runtime, project)] == [container_id]
    assert warm < 10, f"a warm `up` took {warm:.1f}s"

    down_run = deployer("down", "-f", m, "--json")
    assert down_run.returncode == 0, down_run.stderr
    down = json.loads(down_run.stdout)
    assert [s["id"] for s in down["stopped"]] == [container_id]
    assert containers(runtime, project) == []
    assert (manifest.parent / "exports" / "iris" / "1").is_dir()
    assert json.loads(deployer("down", "-f", m, "--json").stdout)["stopped"] == []


def test_a_changed_spec_recreates_the_container(manifest: Path, runtime: DockerRuntime, project: str) -> None:
    first = json.loads(deployer("up", "-f", str(manifest), "--json").stdout)
    doc = yaml.safe_load(manifest.read_text())
    doc["server"]["file_system_poll_wait_seconds"] = 2
    manifest.write_text(yaml.safe_dump(doc))
    second = deployer("up", "-f", str(manifest), "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["action"] == "recreated" and report["server"]["id"] != first["server"]["id"]
    assert [c.id for c in containers(runtime, project)] == [report["server"]["id"]]


def test_killed_during_the_health_wait_exits_4_fast(manifest: Path, runtime: DockerRuntime, project: str) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", "from deployer.cli import main; main()", "up", "-f", str(manifest)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        found: list[Any] = []
        while not found and time.monotonic() < deadline and process.poll() is None:
            found = [c for c in containers(runtime, project) if c.status == "running"]
            time.sleep(0.05)
        assert found, f"no running container appeared (up exited {process.poll()})"
        found[0].kill()
        killed = time.monotonic()
        _out, err = process.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 4, err
    assert took <= 5, f"up noticed the dead container after {took:.1f}s"
    assert "exited" in err and "exit code 137" in err
    assert "server log (tail)" in err or "server log: (empty)" in err
    # The failed up removed what it started.
    assert containers(runtime, project) == []


def test_port_in_use_exits_3(tmp_path: Path, project: str, image: str) -> None:
    write_model(tmp_path / "exports" / "iris", 1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        manifest = write_manifest(tmp_path, project, image, grpc_port=port)
        try:
            result = deployer("up", "-f", str(manifest))
        finally:
            deployer("down", "-f", str(manifest))
    assert result.returncode == 3, result.stderr
    assert f"port {port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_image_missing_exits_3_with_the_make_image_hint(tmp_path: Path, project: str, image: str) -> None:
    write_model(tmp_path / "exports" / "iris", 1)
    manifest = write_manifest(tmp_path, project, image)
    missing = f"{compat_image()}-missing-{project}"
    result = deployer("up", "-f", str(manifest), "--image", missing)
    assert result.returncode == 3, result.stderr
    assert missing in result.stderr and "make image" in result.stderr


def test_daemon_unreachable_exits_3(tmp_path: Path, project: str, image: str) -> None:
    write_model(tmp_path / "exports" / "iris", 1)
    manifest = write_manifest(tmp_path, project, image)
    result = deployer("up", "-f", str(manifest), env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 3, result.stderr
    assert "Docker daemon" in result.stderr and "Traceback" not in result.stderr
    # Without a daemon, status still answers: nothing runs (exit 4, the status check's "down"), no traceback.
    status = deployer("status", "-f", str(manifest), env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert status.returncode == 4 and "no server is running" in status.stderr and "Traceback" not in status.stderr


def test_down_leaves_foreign_containers_alone(manifest: Path, runtime: DockerRuntime, project: str, image: str) -> None:
    # Same project label but not managed by deployer, and a managed container of another project.
    foreign = runtime.client.containers.create(image, labels={LABEL_PROJECT: project}, name=f"foreign-{project}")
    other_project = f"{project}-other"
    other = runtime.client.containers.create(
        image, labels={LABEL_PROJECT: other_project, LABEL_MANAGED: "true"}, name=f"deployer-{other_project}"
    )
    try:
        assert deployer("up", "-f", str(manifest)).returncode == 0
        down = deployer("down", "-f", str(manifest), "--json")
        assert down.returncode == 0, down.stderr
        assert len(json.loads(down.stdout)["stopped"]) == 1
        foreign.reload()
        other.reload()
        assert foreign.status == "created" and other.status == "created"
    finally:
        foreign.remove(force=True)
        other.remove(force=True)


def test_logs_after_a_failed_up_show_the_removed_containers_log(
    tmp_path: Path, runtime: DockerRuntime, project: str, image: str
) -> None:
    write_model(tmp_path / "exports" / "iris", 1, kind="broken")
    m = str(write_manifest(tmp_path, project, image))
    try:
        up = deployer("up", "-f", m)
        assert up.returncode == 4, up.stderr
        assert f"deployer logs -f {m}" in up.stderr
        assert containers(runtime, project) == []  # the failed container is removed...
        logs = deployer("logs", "-f", m, "--tail", "200")
        assert logs.returncode == 0, logs.stderr  # ...but its log was kept before the removal
        assert "iris" in logs.stdout and "Failed to start server" in logs.stdout
        assert "no server is running" in logs.stderr and "docker" in logs.stderr
    finally:
        deployer("down", "-f", m, timeout=120)


def test_a_plain_up_keeps_the_running_container_of_an_explicit_runtime_and_image(
    tmp_path: Path, runtime: DockerRuntime, project: str, image: str
) -> None:
    """`up --runtime docker --image X`, then a plain `up` with `runtime: auto` and the manifest's
    (unpullable) tensorflow/serving image: before, auto tried a pull, replaced the container with a
    local process and said no server was running."""
    write_model(tmp_path / "exports" / "iris", 1, kind="good")
    m = str(write_manifest(tmp_path, project, "tensorflow/serving:2.19.1", runtime="auto"))
    try:
        first = deployer("up", "-f", m, "--runtime", "docker", "--image", image, "--json")
        assert first.returncode == 0, first.stderr
        second = deployer("up", "-f", m, "--json")
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        assert report["runtime"] == "docker" and report["action"] == "reused", report["action_reason"]
        assert report["server"]["id"] == json.loads(first.stdout)["server"]["id"]
        assert "keeping the running docker server" in report["runtime_reason"]
        assert "pulling" not in second.stderr
    finally:
        deployer("down", "-f", m, timeout=120)
