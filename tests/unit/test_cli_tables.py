"""Tables stay readable at 80 columns and in pipes: one line per row, essential columns never cut,
details shortened or hidden (and said so), everything on demand (issue 12 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from deployer.cli import main
from deployer.console import Column, render_table
from deployer.ledger import Ledger, LedgerEntry
from deployer.manifest import load_manifest
from deployer.state import StateDir
from tests.unit.test_orchestrate import write_manifest

OLD, NEW = 1796100522, 1796100600
REASON = (
    f"version {NEW} failed 1 of 8 smoke case(s) (7 passed); setosa-seed: expected class '0', got '2' (score 0.912)"
)


def run(*args: str, columns: int | None = None) -> Result:
    env = {"COLUMNS": str(columns) if columns else ""}
    return CliRunner().invoke(main, list(args), env=env)


@pytest.fixture
def manifest_with_history(tmp_path: Path) -> str:
    path = write_manifest(tmp_path)
    manifest = load_manifest(path)
    ledger = Ledger(StateDir(manifest.state_path).ledger)
    for i, (result, reason) in enumerate([("ok", ""), ("rolled_back", REASON), ("ok", "")]):
        ledger.append(
            LedgerEntry(
                time=1796100000.0 + 3600 * i, user="a-rather-long-user-name", project=manifest.project, model="iris",
                label="stable", kind="promote", from_version=OLD, to_version=NEW, result=result, reason=reason,
                smoke={"passed": result == "ok", "cases": 8, "failed_cases": [] if result == "ok" else ["setosa-seed"],
                       "class_changes": 1, "max_score_delta": 0.41},
                durations={"total": 12.345},
            )
        )  # fmt: skip
    return str(path)


def data_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_history_fits_80_columns_with_whole_versions_and_one_line_per_entry(manifest_with_history: str) -> None:
    result = run("history", "-f", manifest_with_history, columns=80)
    assert result.exit_code == 0, result.output
    lines = data_lines(result)
    assert len(lines) == 1 + 1 + 3  # title, header, one line per entry
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert all(f"{OLD} → {NEW}" in line for line in lines[2:])
    assert "rolled_back" in lines[3]


def test_history_in_a_pipe_keeps_every_character(manifest_with_history: str) -> None:
    result = run("history", "-f", manifest_with_history)
    lines = data_lines(result)
    assert len(lines) == 5
    assert REASON in lines[3]
    assert "a-rather-long-user-name" not in result.stdout  # a detail: -o wide


def test_history_wide_shows_every_column(manifest_with_history: str) -> None:
    result = run("history", "-f", manifest_with_history, "-o", "wide", columns=80)
    lines = data_lines(result)
    assert len(lines) == 5
    assert "a-rather-long-user-name" in lines[2] and "12.3" in lines[2] and REASON in lines[3]
    assert "1 of 8 failed (setosa-seed)" in lines[3] and "passed (8 cases)" in lines[2]
    assert run("history", "-f", manifest_with_history, "-o", "json").stdout.lstrip().startswith("{")


def test_render_table_shortens_then_hides_details_never_essentials() -> None:
    columns = [Column("version"), Column("state"), Column("note", essential=False), Column("more", essential=False)]
    rows = [[str(NEW), "AVAILABLE", "x" * 50, "y" * 30]]
    lines, hidden = render_table(columns, rows, width=60)
    assert hidden == [] and all(len(line) <= 60 for line in lines)
    assert str(NEW) in lines[1] and "AVAILABLE" in lines[1] and "…" in lines[1]
    lines, hidden = render_table(columns, rows, width=30)
    assert hidden == ["note", "more"]
    assert lines[1].split() == [str(NEW), "AVAILABLE"]
    # Essentials wider than the width are printed whole: cut versions are worse than a long line.
    lines, _ = render_table([Column("version")], [["1" * 40]], width=20)
    assert lines[1] == "1" * 40
    lines, hidden = render_table(columns, rows, width=None)
    assert hidden == [] and "x" * 50 in lines[1] and "y" * 30 in lines[1]


def test_a_hidden_column_is_announced(manifest_with_history: str) -> None:
    result = run("history", "-f", manifest_with_history, columns=50)
    assert "column(s) hidden to fit the width: reason; -o wide shows all" in result.stderr
