"""The promotion ledger: append-only JSON lines, file-locked, readable after a crash mid-write."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from deployer.ledger import Ledger, LedgerEntry, current_user, last_successful


def _entry(
    to: int,
    *,
    frm: int | None = 1,
    result: str = "ok",
    label: str = "stable",
    model: str = "iris",
    kind: str = "promote",
) -> LedgerEntry:
    return LedgerEntry(
        time=1_700_000_000.0 + to,
        user="alice",
        project="demo",
        model=model,
        label=label,
        kind="promote",
        from_version=frm,
        to_version=to,
        result=result,  # type: ignore[arg-type]
        reason="",
        smoke={"passed": True, "cases": 3},
        durations={"load": 1.23456, "total": 2.0},
        pid=123,
    )


def test_entries_round_trip_as_one_json_object_per_line(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(_entry(2))
    ledger.append(_entry(3, frm=2, result="rolled_back"))

    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["from"] == 1 and first["to"] == 2 and first["result"] == "ok"
    assert first["time"] == "2023-11-14T22:13:22Z"
    assert first["durations"] == {"load": 1.235, "total": 2.0}
    entries = ledger.entries()
    assert [(e.from_version, e.to_version, e.result) for e in entries] == [(1, 2, "ok"), (2, 3, "rolled_back")]
    assert entries[0].smoke == {"passed": True, "cases": 3}


def test_a_missing_ledger_is_an_empty_history(tmp_path: Path) -> None:
    history = Ledger(tmp_path / "nope" / "ledger.jsonl").read()
    assert history.entries == [] and history.skipped_lines == []


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append(_entry(2))
    with path.open("a") as handle:
        handle.write('{"time": "2023-11-14T22:13:22Z", "to": 3, "resu')  # a crash mid-write

    history = ledger.read()
    assert [e.to_version for e in history.entries] == [2]
    assert history.skipped_lines == [2]

    ledger.append(_entry(4, frm=2))
    history = ledger.read()
    assert [e.to_version for e in history.entries] == [2, 4]
    assert history.skipped_lines == [2]


def _append_many(path: str, worker: int, count: int) -> None:
    ledger = Ledger(Path(path))
    for i in range(count):
        ledger.append(_entry(worker * 1000 + i, frm=worker))


def test_concurrent_appends_from_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(path), w, 25)) for w in range(1, 4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    history = Ledger(path).read()
    assert history.skipped_lines == []
    assert sorted(e.to_version for e in history.entries) == sorted(w * 1000 + i for w in range(1, 4) for i in range(25))


def test_last_successful_ignores_failures_and_other_labels_and_models() -> None:
    entries = [
        _entry(2, frm=1),
        _entry(3, frm=2),
        _entry(4, frm=3, result="rolled_back"),
        _entry(5, frm=3, result="failed"),
        _entry(9, frm=8, label="canary"),
        _entry(7, frm=6, model="other"),
    ]
    found = last_successful(entries, "iris", "stable")
    assert found is not None and (found.from_version, found.to_version) == (2, 3)
    assert last_successful(entries, "iris", "nope") is None


def test_current_user_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYER_USER", "ci-pipeline")
    assert current_user() == "ci-pipeline"
    monkeypatch.delenv("DEPLOYER_USER")
    assert current_user()  # the login name, or uid:N without a passwd entry


def test_unknown_results_are_skipped_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    good = _entry(2).to_json()
    bad = dict(good, result="maybe")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n" + "[1, 2]\n")
    history = Ledger(path).read()
    assert [e.to_version for e in history.entries] == [2]
    assert history.skipped_lines == [2, 3]


# ---- `deployer history` ------------------------------------------------------------------------------


def _manifest_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployer.yaml"
    path.write_text(
        "project: demo\nstate_dir: state\nmodels:\n  - name: iris\n    trainer: m:train\n    base_path: models/iris\n"
        "    features: [{name: a}]\n    classes: ['0', '1']\n"
    )
    return path


def test_history_json_lists_entries_oldest_first_and_filters_by_label(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deployer.cli import main

    manifest = _manifest_file(tmp_path)
    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")
    ledger.append(_entry(2))
    ledger.append(_entry(9, frm=8, label="canary"))
    ledger.append(_entry(3, frm=2, result="rolled_back"))

    result = CliRunner().invoke(main, ["history", "-f", str(manifest), "--json", "--label", "stable"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["project"] == "demo"
    assert [(e["from"], e["to"], e["result"]) for e in doc["entries"]] == [(1, 2, "ok"), (2, 3, "rolled_back")]


def test_history_table_shows_each_promotion(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deployer.cli import main

    manifest = _manifest_file(tmp_path)
    runner = CliRunner()
    empty = runner.invoke(main, ["history", "-f", str(manifest)])
    assert empty.exit_code == 0 and "no promotions recorded for demo" in empty.output

    Ledger(tmp_path / "state" / "ledger.jsonl").append(_entry(2))
    shown = runner.invoke(main, ["history", "-f", str(manifest), "-o", "wide"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert "1 → 2" in shown.output and "alice" in shown.output and "passed" in shown.output
