"""Abuse of the compatible server where TF Serving stays up and answers 400 (issue 9 items 9, 17, 23).

Real server on loopback, models written by the test. Each case once took the server down or got 500:

- version directories TF Serving ignores (``²``, a number beyond int64) stopped every load; ``0042`` was
  listed as 42 and then looked for in ``<base>/42``;
- deeply nested REST JSON raised RecursionError (500);
- a version beyond int64 in a REST URL raised OverflowError (500);
- ``deployer up`` on such a base path crashed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests import manifests
from tests.faithful_models import write_half_plus_two
from tests.grpc.conftest import RunningServer, config_text, model_entry, model_server, model_states  # noqa: F401
from tests.grpc.test_promote_local import Deployment, models_template, runtime_args  # noqa: F401

pytestmark = pytest.mark.grpc

NOT_VERSIONS = ("²", "٣", "99999999999999999999", "-99999999999999999999", "0x10", "1_000", "latest", ".tmp-1")


@pytest.fixture(scope="module")
def server(model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory) -> RunningServer:  # noqa: F811
    base = tmp_path_factory.mktemp("abuse") / "hp2"
    write_half_plus_two(base, "0042")
    for name in NOT_VERSIONS:
        (base / name).mkdir()
    return model_server(config_text(model_entry("hp2", base)), "--file_system_poll_wait_seconds=1")


def test_odd_directory_names_do_not_stop_loading(server: RunningServer) -> None:
    assert model_states(server.channel, "hp2") == {42: ("AVAILABLE", 0, "")}
    answer = requests.post(f"{server.rest}/v1/models/hp2/versions/42:predict", json={"instances": [[2.0]]}, timeout=20)
    assert answer.json() == {"predictions": [[3.0]]}
    assert "model manager iteration failed" not in server.log()


@pytest.mark.parametrize("depth", [100_000, 5_000, 600])
@pytest.mark.parametrize(("verb", "key"), [("predict", "instances"), ("classify", "examples"), ("regress", "examples")])
def test_deeply_nested_json_is_400(server: RunningServer, depth: int, verb: str, key: str) -> None:
    body = '{"' + key + '": ' + "[" * depth + "]" * depth + "}"
    response = requests.post(f"{server.rest}/v1/models/hp2:{verb}", data=body, timeout=60)
    assert response.status_code == 400, response.text[:500]
    assert response.headers["Content-Type"] == "application/json"
    assert "error" in json.loads(response.text)
    assert server.alive()


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("version", ["99999999999999999999", "9223372036854775808", "1" + "0" * 400])
def test_version_beyond_int64_in_url_is_400(server: RunningServer, method: str, version: str) -> None:
    suffix = ":predict" if method == "POST" else ""
    response = requests.request(
        method, f"{server.rest}/v1/models/hp2/versions/{version}{suffix}", json={"instances": [[1.0]]}, timeout=20
    )
    assert (response.status_code, response.json()) == (
        400,
        {"error": f"Failed to convert version: {version} to numeric."},
    )


def test_int64_max_version_in_url_is_a_lookup(server: RunningServer) -> None:
    response = requests.get(f"{server.rest}/v1/models/hp2/versions/9223372036854775807", timeout=20)
    assert (response.status_code, response.json()) == (
        404,
        {"error": "Could not find version 9223372036854775807 of model hp2"},
    )


# ---- deployer's own store on the same names ---------------------------------------------------------------


@pytest.fixture
def odd_deploy(tmp_path: Path, models_template: Path, runtime_args: list[str]) -> Iterator[Deployment]:  # noqa: F811
    project = f"odd-{uuid.uuid4().hex[:8]}"
    base = tmp_path / "models" / "iris"
    base.mkdir(parents=True)
    server = {"grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 120, "reload_deadline_seconds": 60}
    manifest = manifests.write_manifest(tmp_path, project, base_path="models/iris", server=server)
    deployment = Deployment(tmp_path, manifest, base, models_template, runtime_args, project)
    shutil.copytree(models_template / "1", base / "0001")
    for name in NOT_VERSIONS:
        (base / name).mkdir()
    try:
        yield deployment
    finally:
        deployment.down()


def test_up_versions_inspect_promote_on_odd_and_padded_names(odd_deploy: Deployment) -> None:
    deploy = odd_deploy
    deploy.up()
    assert deploy.label_version() == 1
    listed = json.loads(deploy.cli("versions", "-f", str(deploy.manifest), "--json").stdout)
    assert [(v["version"], Path(v["path"]).name) for v in listed["versions"]] == [(1, "0001")]
    inspected = deploy.cli("inspect", "-f", str(deploy.manifest), "--version", "1", "--json")
    assert inspected.returncode == 0, deploy.outputs[-1]
    assert Path(json.loads(inspected.stdout)["path"]).name == "0001"
    staging = deploy.base / ".staging-2"
    shutil.copytree(deploy.template / "2", staging)
    os.rename(staging, deploy.base / "000002")
    promoted = deploy.promote("2", "--json")
    assert promoted.returncode == 0, deploy.outputs[-1]
    assert deploy.label_version() == 2
