"""Defaults follow what is served (issue 12 item 2): `inspect` and `predict --local` use the label's
version, never a refused or broken newest directory; `versions` shows labels, load state and each
directory's problems."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from deployer import served
from deployer.cli import main
from deployer.manifest import load_manifest
from deployer.server_config import ServedModel, render_models_config
from deployer.state import StateDir
from tests import manifests
from tests.savedmodels import write_model
from tests.unit.test_orchestrate import FakeRuntime

pytestmark = pytest.mark.slow

EXAMPLE = ["--example", "SepalLength=5.1", "--example", "SepalWidth=3.3", "--example", "PetalLength=1.7",
           "--example", "PetalWidth=0.5"]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 and 2 good, 3 incomplete (a killed copy), 4 corrupt (garbage saved_model.pb): 4 is the newest."""
    base = tmp_path_factory.mktemp("exports") / "iris"
    write_model(base, 1, kind="good")
    write_model(base, 2, kind="good")
    write_model(base, 3, kind="broken")
    shutil.copytree(base / "2", base / "4")
    (base / "4" / "saved_model.pb").write_bytes(b"\x08garbage")
    return base


@pytest.fixture
def manifest(tmp_path: Path, models: Path) -> Path:
    return manifests.write_manifest(tmp_path, "defaults", server={"runtime": "local"}, base_path=str(models))


def deploy(manifest_path: Path, versions: tuple[int, ...], labels: dict[str, int]) -> None:
    state = StateDir(load_manifest(manifest_path).state_path)
    state.write_config_files({"models.config": render_models_config([ServedModel("iris", "/m", versions, labels)])})


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_without_a_deployment_the_newest_complete_version_and_why(manifest: Path) -> None:
    m = load_manifest(manifest)
    choice = served.default_version(m, m.model())
    assert choice.version == 2
    assert choice.why.startswith("the newest complete version (nothing deployed yet); skipped 4 (corrupt: ")
    assert "3 (incomplete: variables/variables.index is missing)" in choice.why


def test_with_a_deployment_the_labels_version(manifest: Path) -> None:
    deploy(manifest, (1, 2), {"stable": 1})
    result = run("inspect", "-f", str(manifest), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == 1
    assert "version 1: the version label stable points at in the deployed config" in result.stderr
    predicted = run("predict", "-f", str(manifest), "--local", *EXAMPLE, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["version"] == 1
    # Asked for by number, the newest is still reachable (and refused when broken).
    assert json.loads(run("inspect", "-f", str(manifest), "--version", "2", "--json").stdout)["version"] == 2
    broken = run("predict", "-f", str(manifest), "--local", "--version", "4", *EXAMPLE)
    assert broken.exit_code == 2 and "corrupt" in broken.stderr


def test_versions_shows_labels_load_state_and_problems(manifest: Path) -> None:
    deploy(manifest, (1, 2), {"stable": 1, "canary": 2})
    doc = json.loads(run("versions", "-f", str(manifest), "--json").stdout)
    by_version = {e["version"]: e for e in doc["versions"]}
    assert by_version[1]["labels"] == ["stable"] and by_version[2]["labels"] == ["canary"]
    assert by_version[1]["state"] == "configured" and by_version[3]["state"] == "-"
    assert doc["server"] == "no server is running"
    assert by_version[1]["problem"] is None
    assert by_version[3]["problem"] == "incomplete: variables/variables.index is missing"
    assert by_version[4]["problem"].startswith("corrupt: saved_model.pb is corrupt")

    table = run("versions", "-f", str(manifest))
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line[:1].isdigit()}
    assert rows["1"].split()[:4] == ["1", "stable", "configured", "ok"]
    assert "incomplete:" in rows["3"] and "corrupt:" in rows["4"]
    assert "(load state: no server is running)" in table.stderr


@pytest.fixture
def fake_server(manifest: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    from deployer import orchestrate
    from tests.unit.test_orchestrate import FakeClient, FakeRuntime, World

    world = World()
    runtime = FakeRuntime(world, StateDir(load_manifest(manifest).state_path))
    FakeClient.world, FakeClient.runtime = world, runtime
    monkeypatch.setattr(orchestrate, "_local", lambda m: runtime)
    monkeypatch.setattr(orchestrate, "ServingClient", FakeClient)
    return runtime


def test_the_first_up_skips_a_broken_newest_version_and_up_version_picks(
    manifest: Path, fake_server: FakeRuntime
) -> None:
    from deployer import orchestrate
    from deployer.errors import UsageError, VersionNotFound

    m = load_manifest(manifest)
    progress: list[str] = []
    first = orchestrate.up(m, progress=progress.append)
    assert [(v.name, [s.version for s in v.versions], v.labels) for v in first.models] == [("iris", [2], {"stable": 2})]
    assert any(line.startswith("iris: skipping version 4 (corrupt: ") for line in progress)
    assert "iris: skipping version 3 (incomplete: variables/variables.index is missing)" in progress

    # A running server is never switched by `up --version`: that is promote's job, with its checks.
    with pytest.raises(UsageError, match="would switch it without checks") as info:
        orchestrate.up(m, version=1)
    assert info.value.hint is not None and "deployer promote 1" in info.value.hint
    assert orchestrate.up(m, version=2).action == "reused"  # already what is served

    orchestrate.down(m)
    chosen = orchestrate.up(m, version=1)
    assert chosen.models[0].labels == {"stable": 1} and [s.version for s in chosen.models[0].versions] == [1]
    orchestrate.down(m)
    with pytest.raises(UsageError, match="version 4 of iris cannot be served: corrupt"):
        orchestrate.up(m, version=4)
    with pytest.raises(VersionNotFound, match="version 9 does not exist"):
        orchestrate.up(m, version=9)


def test_up_version_flags(manifest: Path) -> None:
    assert run("up", "-f", str(manifest), "--model", "iris").exit_code == 2
    assert run("up", "-f", str(manifest), "--version", "0").exit_code == 2
    missing = run("up", "-f", str(manifest), "--version", "9")
    assert missing.exit_code == 2 and "available: 1, 2, 3, 4" in missing.stderr
