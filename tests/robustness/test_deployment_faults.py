"""A real deployment (local runtime, the compatible server) under umask 000, then faults against it.

* permissions: `deployer up` under umask 000 leaves no state file or directory writable by others;
* kill -9 of `deployer promote` at each phase: afterwards models.config, the settled ledger and what
  the server serves agree (after `up`, which repairs a server the kill left behind the file), and
  `rollback` knows the previous version whenever the label had moved (issue 9, item 2);
* the unauthenticated admin API: an outside HandleReloadConfigRequest with an empty config (what
  the hardening review did from a throwaway container) is detected and repaired by `up` (item 10);
* client-reachable abuse through the CLI against the real server: refused before any request, or
  one line with the documented exit code.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from deployer import orchestrate
from deployer import promote as promotion
from deployer.client import ServingClient
from deployer.manifest import Manifest, load_manifest
from deployer.server_config import ServedModel, render_models_config
from deployer.state import StateDir
from tests import manifests
from tests.conftest import skip_or_fail
from tests.robustness.conftest import CaseCounter

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _deployer(*args: str, umask: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (optionally under ``umask``), as a user or CI runs it."""
    command = [sys.executable, "-c", "import sys; from deployer.cli import main; main(sys.argv[1:])", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO, check=False,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )  # fmt: skip


def run(*args: str) -> Result:
    from deployer.cli import main

    return CliRunner().invoke(main, list(args))


@dataclass
class Deployment:
    path: Path
    manifest: Manifest

    @property
    def state(self) -> StateDir:
        return StateDir(self.manifest.state_path, self.manifest.project)

    def client(self) -> ServingClient:
        return orchestrate.connect(self.manifest)[1]

    def served_label(self) -> int:
        with self.client() as client:
            meta = client.metadata("iris", label="stable", timeout=10)
        return int(meta["model_spec"]["version"])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from tests.savedmodels import write_model

    root = tmp_path_factory.mktemp("deployment")
    path = manifests.write_manifest(
        root, "faults", server={"runtime": "local", "grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 180}
    )
    doc = yaml.safe_load(path.read_text())
    # Each promotion then loads version 2 afresh and unloads the other: every phase happens every time.
    doc["models"][0]["version_policy"] = {"keep_previous": False}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    base = root / "exports" / "iris"
    write_model(base, 1, kind="good")
    up = _deployer("up", "-f", str(path), umask=0o000)
    if up.returncode != 0:
        skip_or_fail(f"deployer up failed ({up.returncode}): {up.stderr[-3000:]}")
    write_model(base, 2, kind="good")
    deployment = Deployment(path, load_manifest(path))
    try:
        yield deployment
    finally:
        _deployer("down", "-f", str(path))


# ---- permissions ------------------------------------------------------------------------------


def test_up_under_umask_000_leaves_nothing_writable_by_others(deployment: Deployment) -> None:
    state = deployment.state
    modes = {str(p.relative_to(state.root)): stat.S_IMODE(os.lstat(p).st_mode) for p in state.root.rglob("*")}
    modes["."] = stat.S_IMODE(os.lstat(state.root).st_mode)
    loose = {p: f"{m:04o}" for p, m in modes.items() if m & (stat.S_IWGRP | stat.S_IWOTH)}
    assert loose == {}
    assert modes["."] == 0o700 and modes["config"] == 0o755 and modes["config/models.config"] == 0o644
    for name in ("server.json", "server.log", "server.pid", ".deployer-state"):
        assert modes[name] == 0o600, (name, f"{modes[name]:04o}")


# ---- kill -9 of promote at each phase ---------------------------------------------------------

CHILD = r"""
import os, signal, sys
point, manifest = sys.argv[1], sys.argv[2]
from deployer import console, promote
from deployer.client import ServingClient
from deployer.ledger import Ledger

def die():
    os.kill(os.getpid(), signal.SIGKILL)

counts = {}
def nth(name):
    counts[name] = counts.get(name, 0) + 1
    return counts[name]

real_info = console.info
def info(message):
    real_info(message)
    for label, text in (("load announced", "step 2/5: loading"), ("checked", "smoke: version"),
                        ("verified", "answers with version"), ("unload announced", "step 5/5: unloading")):
        if point == label and text in str(message):
            die()
console.info = info

real_write = promote.write_atomic
def write(path, text, *args):
    real_write(path, text, *args)
    if point == {1: "load written", 2: "switch written", 3: "unload written"}.get(nth("write")):
        die()
promote.write_atomic = write

real_reload = ServingClient.reload_config
def reload(self, text, *, timeout):
    real_reload(self, text, timeout=timeout)
    if point == {1: "load reloaded", 2: "switch reloaded", 3: "unload reloaded"}.get(nth("reload")):
        die()
ServingClient.reload_config = reload

real_append = Ledger.append
def append(self, entry):
    real_append(self, entry)
    if point == ("intent written" if entry.result == "pending" else "final line written"):
        die()
Ledger.append = append

from deployer.cli import main
main(["promote", "2", "-f", manifest])
"""

BEFORE_INTENT = ["load announced", "load written", "load reloaded", "checked"]
MOVED = ["switch written", "switch reloaded", "verified", "unload announced", "unload written", "unload reloaded",
         "final line written"]  # fmt: skip
POINTS = [*BEFORE_INTENT, "intent written", *MOVED]


def _reset(deployment: Deployment) -> None:
    """Back to v1 only, stable → 1, through deployer's own repair path (up reapplies the file)."""
    text = render_models_config([ServedModel("iris", str(deployment.manifest.base_path(deployment.manifest.model())),
                                             (1,), {"stable": 1})])  # fmt: skip
    deployment.state.write_config_files({"models.config": text})
    orchestrate.up(deployment.manifest)
    assert deployment.served_label() == 1


@pytest.mark.parametrize("point", POINTS)
def test_promote_killed_at_any_phase_leaves_config_ledger_and_server_agreeing(
    deployment: Deployment, point: str, cases: CaseCounter
) -> None:
    state = deployment.state
    before = len(promotion.settled_history(state).entries)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, point, str(deployment.path)],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, f"not killed at {point!r}: {child.stderr[-3000:]}"
    moved = point in MOVED
    with cases(f"{point}: models.config"):
        assert promotion.label_in_config(state, "iris", "stable") == (2 if moved else 1)
    with cases(f"{point}: history"):
        entries = promotion.settled_history(state).entries
        new = entries[before:]
        if point in BEFORE_INTENT:
            assert new == []
        else:
            assert [(e.to_version, e.result) for e in new] == [(2, "ok" if moved else "failed")]
    with cases(f"{point}: up repairs the server to the file"):
        report = orchestrate.up(deployment.manifest)
        assert report.action in ("reused", "repaired")
        if point == "switch written":  # the file moved, the server had not: exactly what up must repair
            assert report.action == "repaired"
        assert deployment.served_label() == (2 if moved else 1)
    if moved:
        with cases(f"{point}: rollback knows the previous version"):
            rolled = promotion.rollback(deployment.manifest, deployment.client)
            assert (rolled.from_version, rolled.to_version) == (2, 1)
            assert deployment.served_label() == 1
    _reset(deployment)


# ---- the unauthenticated admin API ------------------------------------------------------------


def test_an_outside_reload_that_unloads_everything_is_repaired_by_up(deployment: Deployment) -> None:
    with deployment.client() as client:
        client.reload_config("model_config_list {}\n", timeout=30)
    status = json.loads(run("status", "-f", str(deployment.path), "--json").stdout)
    assert not any(v["state"] == "AVAILABLE" for v in status["models"][0]["versions"])  # stable is gone
    said: list[str] = []
    report = orchestrate.up(deployment.manifest, progress=said.append)
    # Reapplied in place, or (when the server refuses the reapply: the compatible server does after an
    # empty config, see the report to the lead) recreated from the file; either way it says so.
    assert report.action in ("repaired", "recreated") and "diverged" in report.action_reason, said
    assert report.smoke_passed and any("does not serve" in line for line in said)
    assert deployment.served_label() == 1


# ---- client-reachable abuse through the CLI ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["smoke", "--timeout", "inf"], 2, "is not a finite number"),
        (["smoke", "--rest", "--timeout", "nan"], 2, "is not a finite number"),
        (["smoke", "--version", "99999999999999999999"], 2, "--version"),
        (["smoke", "--version", "7"], 2, "7"),
        (["smoke", "--label", "nosuchlabel"], 2, "nosuchlabel"),
        (["smoke", "--rest", "--label", "nosuchlabel"], 2, "nosuchlabel"),
        (["promote", "99999999999999999999"], 2, "VERSION"),
        (["promote", "1", "--max-score-delta", "nan"], 2, "is not a finite number"),
        (["promote", "7"], 2, "does not exist"),
        (["smoke", "--junit", "/dev/full"], 2, "cannot write the JUnit report"),
    ],
)
def test_hostile_cli_input_against_the_real_server(
    deployment: Deployment, args: list[str], code: int, text: str
) -> None:
    result = run(*args, "-f", str(deployment.path))
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("deployer: error: ")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert deployment.served_label() == 1  # nothing moved


def test_extreme_but_valid_float32_inputs_are_answered(deployment: Deployment) -> None:
    extreme = {"SepalLength": 3.4e38, "SepalWidth": -3.4e38, "PetalLength": 1e-45, "PetalWidth": 0.0}
    with deployment.client() as client:
        answer = client.classify("iris", [extreme], label="stable", timeout=30)
    assert answer.version == 1 and len(answer.results[0]) == 3
