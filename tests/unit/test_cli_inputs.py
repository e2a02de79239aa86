"""Issue 9, items 21, 22 and 6 (exports): what `smoke --junit`, `predict` and an export do with
hostile or broken inputs and environments.

Item 21: `--junit` to a missing dir or /dev/full exited 1 after the run and the report was lost; the
target is now proven writable before any request. Item 22: a 400-digit JSON integer exited 1,
`--input /dev/zero` read without bound, `1e39` passed the finite check as float64 and reached the model
as float32 inf. Item 17 (client half): deep `predict --input` JSON was a RecursionError (exit 1).
Item 6: exported SavedModels were 0777/0666 under umask 000 (a writable SavedModel is code the server runs).
"""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from deployer import apis, orchestrate, store
from deployer.cli import main
from deployer.errors import InputDataError, UsageError
from deployer.export import batch_from_file, batch_from_pairs
from deployer.manifest import ModelSpec
from deployer.smoke import JUnitTarget
from tests.unit.test_cli_serve import HANDLE, FakeClient, fleet_of
from tests.unit.test_orchestrate import write_manifest

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
MODEL = ModelSpec.model_validate(
    {"name": "iris", "base_path": "exports/iris", "api": "classify", "features": [{"name": n} for n in FEATURES],
     "classes": ["0", "1", "2"]}
)  # fmt: skip


def rows_from_file(path: Path, _features: list[str]) -> Any:
    return batch_from_file(path, MODEL, apis.piece("classify"))


def row_from_pairs(pairs: list[str], _features: list[str]) -> Any:
    return batch_from_pairs(pairs, MODEL, apis.piece("classify"))


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


# ---- item 21: --junit ---------------------------------------------------------------------------


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts connections to the (fake) server: a refused report must not cost a single request."""
    calls: list[int] = []

    def connect_fleet(manifest: Any) -> Any:
        calls.append(1)
        return HANDLE, fleet_of(FakeClient(wrong=False))

    monkeypatch.setattr(orchestrate, "connect_fleet", connect_fleet)
    return calls


def test_a_full_junit_target_fails_before_any_request(tmp_path: Path, connects: list[int]) -> None:
    result = run("smoke", "-f", str(write_manifest(tmp_path)), "--junit", "/dev/full")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("deployer: error: cannot write the JUnit report to /dev/full: ")
    assert "No space left on device" in result.stderr
    assert connects == [] and result.stdout == ""


def test_a_junit_target_under_a_file_or_a_directory_fails_before_any_request(
    tmp_path: Path, connects: list[int]
) -> None:
    manifest = str(write_manifest(tmp_path))
    (tmp_path / "plain").write_text("x")
    nested = run("smoke", "-f", manifest, "--junit", str(tmp_path / "plain" / "report.xml"))
    assert nested.exit_code == 2 and "cannot write the JUnit report" in nested.stderr
    directory = run("smoke", "-f", manifest, "--junit", str(tmp_path))
    assert directory.exit_code == 2 and "is a directory" in directory.stderr
    assert connects == []


def test_a_missing_junit_directory_is_created_and_the_report_written_atomically(
    tmp_path: Path, connects: list[int]
) -> None:
    target = tmp_path / "build" / "reports" / "smoke.xml"
    result = run("smoke", "-f", str(write_manifest(tmp_path)), "--junit", str(target))
    assert result.exit_code == 0, result.output
    assert ET.parse(target).getroot().get("tests") == "2"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(target.parent)) == ["smoke.xml"]  # no temp file left behind


def test_a_junit_target_that_is_a_device_gets_the_whole_report(tmp_path: Path) -> None:
    target = JUnitTarget.open("/dev/null")
    assert target.write([]) == Path("/dev/null")
    with pytest.raises(UsageError, match="No space left on device"):
        JUnitTarget.open("/dev/full")


# ---- item 22 and 17: predict inputs -------------------------------------------------------------


def _json_input(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(text)
    return path


ROW = {"SepalLength": 5.1, "SepalWidth": 3.3, "PetalLength": 1.7, "PetalWidth": 0.5}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1" * 400, "too large for the feature's float"),
        ("1e39", "outside the float32 range"),
        ("-3.5e38", "outside the float32 range"),
        ("1e400", "is not a finite number"),
        ('"NaN"', "is not a finite number"),
        ('"1e39"', "outside the float32 range"),
    ],
)
def test_predict_json_values_must_be_finite_float32(tmp_path: Path, value: str, expected: str) -> None:
    text = json.dumps(ROW).replace("5.1", value)
    with pytest.raises(InputDataError, match=expected) as info:
        rows_from_file(_json_input(tmp_path, text), FEATURES)
    assert len(info.value.message) < 200  # a 400-digit number is not echoed in full


def test_predict_csv_and_example_values_must_be_finite_float32(tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("SepalLength,SepalWidth,PetalLength,PetalWidth\n1e39,3.3,1.7,0.5\n")
    with pytest.raises(InputDataError, match="line 2: SepalLength: '1e39' is outside the float32 range"):
        rows_from_file(csv_file, FEATURES)
    with pytest.raises(InputDataError, match="outside the float32 range"):
        row_from_pairs(["SepalLength=1e39", "SepalWidth=1", "PetalLength=1", "PetalWidth=1"], FEATURES)
    assert row_from_pairs(["SepalLength=3.4e38", "SepalWidth=1", "PetalLength=1", "PetalWidth=1"], FEATURES)


def test_deeply_nested_predict_json_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="nested too deeply"):
        rows_from_file(_json_input(tmp_path, "[" * 200_000), FEATURES)


@pytest.mark.timeout(30)
def test_predict_reads_only_bounded_regular_files(tmp_path: Path) -> None:
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    with pytest.raises(InputDataError, match="not a regular file"):
        rows_from_file(zero, FEATURES)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputDataError, match="not a regular file"):
        rows_from_file(fifo, FEATURES)
    big = tmp_path / "big.json"
    with big.open("w") as handle:
        handle.truncate(65 * 1024 * 1024)
    with pytest.raises(InputDataError, match="larger than 64 MiB"):
        rows_from_file(big, FEATURES)


def test_predict_input_errors_through_the_cli_are_one_line_exit_2(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    (tmp_path / "exports" / "iris" / "1").mkdir(parents=True)
    rows = _json_input(tmp_path, json.dumps(ROW).replace("5.1", "1" * 400))
    result = run("predict", "-f", str(manifest), "--local", "--input", str(rows))
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and "too large for the feature's float" in result.stderr


# ---- item 6: exported SavedModels ---------------------------------------------------------------


@pytest.mark.usefixtures("umask_000")
def test_an_export_is_published_read_only_whatever_the_umask(tmp_path: Path) -> None:
    base = tmp_path / "exports" / "iris"
    store.ensure_base_path(base)
    tmp = store.make_temp_dir(base, 1)
    # What TensorFlow does: plain mkdir/open, i.e. 0777/0666 under umask 000.
    (tmp / "variables").mkdir()
    (tmp / "saved_model.pb").write_bytes(b"pb")
    (tmp / "variables" / "variables.index").write_bytes(b"ix")
    final = store.publish(tmp, base, 1)
    modes = {str(p.relative_to(base)): stat.S_IMODE(p.stat().st_mode) for p in [final, *final.rglob("*")]}
    assert modes == {"1": 0o755, "1/variables": 0o755, "1/saved_model.pb": 0o644, "1/variables/variables.index": 0o644}
    assert stat.S_IMODE(base.stat().st_mode) == 0o755 and stat.S_IMODE((tmp_path / "exports").stat().st_mode) == 0o755


def test_an_existing_base_path_keeps_its_mode(tmp_path: Path) -> None:
    base = tmp_path / "shared-models"
    base.mkdir()
    base.chmod(0o2775)
    store.ensure_base_path(base)
    assert stat.S_IMODE(base.stat().st_mode) == 0o2775
