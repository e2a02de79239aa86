"""promote/rollback through the CLI when no server runs: the disk checks come first."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from deployer.cli import main

MANIFEST = """\
project: nopromote
state_dir: state
models:
  - name: iris
    trainer: models.iris.trainer:train
    base_path: exports/iris
    features: [{name: a}, {name: b}]
    classes: ["0", "1"]
server:
  grpc_port: 0
  rest_port: 0
"""


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    return path


def test_a_corrupt_version_is_refused_with_exit_6_even_when_no_server_runs(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    corrupt = tmp_path / "exports" / "iris" / "7"
    corrupt.mkdir(parents=True)
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf")
    result = CliRunner().invoke(main, ["promote", "7", "-f", str(manifest)])
    assert result.exit_code == 6, result.stderr
    assert "refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_version_is_a_usage_error_even_when_no_server_runs(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    (tmp_path / "exports" / "iris").mkdir(parents=True)
    result = CliRunner().invoke(main, ["promote", "9", "-f", str(manifest)])
    assert result.exit_code == 2, result.stderr
    assert "9" in result.stderr.splitlines()[0]


def test_a_valid_request_with_no_server_says_not_healthy_and_how_to_start_one(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    result = CliRunner().invoke(main, ["rollback", "--to", "1", "-f", str(manifest)])
    assert result.exit_code == 4, result.stderr
    assert "deployer up" in result.stderr
