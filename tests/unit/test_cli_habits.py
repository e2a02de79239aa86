"""kubectl/compose habits (issue 12 item 9): a default manifest, -f always the manifest, --help with
examples, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from deployer.cli import main
from tests.unit.test_orchestrate import write_manifest

COMMANDS = ["train", "import", "versions", "inspect", "predict", "up", "smoke", "status", "logs", "down", "promote",
            "rollback", "history"]  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"DEPLOYER_MANIFEST": "", **(env or {})})


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_deployer_yaml_in_the_working_directory_is_the_default(cwd: Path) -> None:
    write_manifest(cwd)  # writes ./deployer.yaml
    result = run("history")
    assert result.exit_code == 0, result.output
    assert "using manifest deployer.yaml (deployer.yaml in the working directory)" in result.stderr


def test_the_only_manifest_in_manifests_is_the_default(cwd: Path) -> None:
    (cwd / "manifests").mkdir()
    write_manifest(cwd / "manifests")
    (cwd / "manifests" / "deployer.yaml").rename(cwd / "manifests" / "iris.yaml")
    result = run("history")
    assert result.exit_code == 0, result.output
    assert "using manifest manifests/iris.yaml (the only manifest in manifests/)" in result.stderr
    (cwd / "manifests" / "other.yaml").write_text((cwd / "manifests" / "iris.yaml").read_text())
    several = run("history")
    assert several.exit_code == 2
    assert "manifests/ holds several manifests: manifests/iris.yaml, manifests/other.yaml" in several.stderr
    assert "choose one with -f" in several.stderr


def test_deployer_manifest_wins_and_minus_f_wins_over_everything(cwd: Path, tmp_path: Path) -> None:
    write_manifest(cwd)
    (tmp_path / "elsewhere").mkdir()
    elsewhere = write_manifest(tmp_path / "elsewhere")
    result = run("history", env={"DEPLOYER_MANIFEST": str(elsewhere)})
    assert result.exit_code == 0 and f"using manifest {elsewhere} ($DEPLOYER_MANIFEST)" in result.stderr
    explicit = run("history", "-f", str(elsewhere), env={"DEPLOYER_MANIFEST": "missing.yaml"})
    assert explicit.exit_code == 0 and "using manifest" not in explicit.stderr


def test_no_manifest_anywhere_is_a_usage_error(cwd: Path) -> None:
    result = run("status")
    assert result.exit_code == 2
    assert result.stderr.startswith("deployer: error: no manifest: no -f given")
    assert "hint: pass -f MANIFEST" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_f_means_the_manifest(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:\n" in result.output
    examples = result.output.split("Examples:\n", 1)[1]
    assert all(line.strip().startswith(("deployer ", "--")) for line in examples.splitlines() if line.strip())
    assert "-f, --file" in result.output and "always means the manifest" in " ".join(result.output.split())


def test_logs_follow_is_long_only() -> None:
    help_text = CliRunner().invoke(main, ["logs", "--help"]).output
    assert "--follow" in help_text and "-F" not in help_text


def test_shell_completion_scripts_and_answers() -> None:
    script = Path(sys.executable).parent / "deployer"
    env = {**os.environ, "_DEPLOYER_COMPLETE": "bash_source"}
    source = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert source.returncode == 0 and "_deployer_completion" in source.stdout
    env.update(_DEPLOYER_COMPLETE="bash_complete", COMP_WORDS="deployer logs --fo", COMP_CWORD="2")
    answer = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert answer.returncode == 0 and answer.stdout.split() == ["plain,--follow"]
    assert answer.stderr == ""  # completion never looks for a manifest
