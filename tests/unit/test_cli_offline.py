"""The offline commands at the CLI boundary: one-line errors with exit code 2, and --json shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from deployer.cli import main
from tests.unit.conftest import REPO_ROOT, TrainedExport, iris_manifest_doc, write_manifest

SEED_EXAMPLE = ["SepalLength=5.1", "SepalWidth=3.3", "PetalLength=1.7", "PetalWidth=0.5"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_usage_error(result: Result, *expected: str) -> None:
    """Exit code 2, no traceback, and exactly one error line that says what is wrong."""
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if not line.startswith("  hint:")]
    assert len(error_lines) == 1, result.stderr
    for text in expected:
        assert text in error_lines[0], result.stderr


@pytest.fixture
def fake_version(make_iris_manifest: Callable[..., Path]) -> Path:
    """A manifest whose base path has an (empty) version 7: enough for errors raised before TF runs."""
    manifest = make_iris_manifest()
    (manifest.parent / "exports" / "iris" / "7").mkdir(parents=True)
    return manifest


# ---- bad input -------------------------------------------------------------------------------
def test_missing_manifest(tmp_path: Path) -> None:
    assert_usage_error(run("train", "-f", tmp_path / "nope.yaml"), "manifest not found")


def test_invalid_manifest(tmp_path: Path) -> None:
    doc = iris_manifest_doc()
    doc["models"][0]["smoke"][2]["expect_class"] = "9"
    assert_usage_error(run("versions", "-f", write_manifest(tmp_path, doc)), "models[0].smoke[2].expect_class")


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ("models.nope:train", "cannot import module 'models.nope'"),
        ("models.iris.trainer:nope", "has no attribute 'nope'"),
        ("models.iris.trainer:DATA_FILE", "'DATA_FILE' is not callable"),
    ],
)
def test_trainer_not_importable(make_iris_manifest: Callable[..., Path], trainer: str, expected: str) -> None:
    assert_usage_error(run("train", "-f", make_iris_manifest(trainer=trainer)), expected)


def test_base_path_not_writable(make_iris_manifest: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    manifest = make_iris_manifest(base_path=str(tmp_path / "blocker" / "iris"))
    assert_usage_error(run("train", "-f", manifest), "base path", "is not writable")


@pytest.mark.parametrize("command", ["inspect", "predict"])
def test_version_does_not_exist(fake_version: Path, command: str) -> None:
    extra = ["--local", *(x for pair in SEED_EXAMPLE for x in ("--example", pair))] if command == "predict" else []
    result = run(command, "-f", fake_version, "--version", "3", *extra)
    assert_usage_error(result, "version 3 does not exist")
    assert "hint: available: 7" in result.stderr


def test_no_versions_yet(make_iris_manifest: Callable[..., Path]) -> None:
    assert_usage_error(run("inspect", "-f", make_iris_manifest()), "no exported versions")


def test_csv_missing_feature_column(fake_version: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("SepalLength,SepalWidth,PetalLength\n5.1,3.3,1.7\n")
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--input", csv_file),
                       "missing feature column 'PetalWidth'")


def test_csv_non_numeric_value(fake_version: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("SepalLength,SepalWidth,PetalLength,PetalWidth\n5.1,3.3,1.7,0.5\n5.0,wide,1.4,0.2\n")
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--input", csv_file),
                       "line 3: SepalWidth: 'wide' is not a number")


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        (["SepalLength=5.1", "SepalWidth=3.3", "PetalLength=1.7", "PetalWidth=abc"],
         "PetalWidth: 'abc' is not a number"),
        (["SepalLength=5.1", "SepalWidth=3.3", "PetalLength=1.7"], "missing feature 'PetalWidth'"),
        ([*SEED_EXAMPLE, "Colour=1"], "unknown feature 'Colour'"),
        ([*SEED_EXAMPLE, "SepalLength=2"], "feature 'SepalLength' given twice"),
        (["SepalLength"], "expected NAME=VALUE"),
        (["SepalLength=nan", "SepalWidth=3.3", "PetalLength=1.7", "PetalWidth=0.5"], "not a finite number"),
    ],
)
def test_bad_examples(fake_version: Path, examples: list[str], expected: str) -> None:
    args = [x for pair in examples for x in ("--example", pair)]
    assert_usage_error(run("predict", "-f", fake_version, "--local", *args), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"SepalLength": 5.1, "SepalWidth": 3.3, "PetalLength": 1.7}]', "row 0: missing feature 'PetalWidth'"),
        ('{"instances": [{"SepalLength": 5.1, "SepalWidth": "x", "PetalLength": 1.7, "PetalWidth": 0.5}]}',
         "row 0: SepalWidth: 'x' is not a number"),
        ("[1, 2]", "expected a JSON object or a list of objects"),
        ("{nope", "cannot read"),
    ],
)
def test_bad_json_input(fake_version: Path, tmp_path: Path, text: str, expected: str) -> None:
    json_file = tmp_path / "rows.json"
    json_file.write_text(text)
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--input", json_file), expected)


def test_input_file_missing_or_unsupported(fake_version: Path, tmp_path: Path) -> None:
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--input", tmp_path / "none.csv"),
                       "input file not found")
    (tmp_path / "rows.txt").write_text("x")
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--input", tmp_path / "rows.txt"),
                       "unsupported input file type '.txt'")


SEED_ARGS = [x for pair in SEED_EXAMPLE for x in ("--example", pair)]


def test_predict_needs_exactly_one_input_source(fake_version: Path, tmp_path: Path) -> None:
    assert_usage_error(run("predict", "-f", fake_version, "--local"), "either --input FILE or --example")
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--target", "127.0.0.1:1", *SEED_ARGS),
                       "choose one")  # fmt: skip
    assert_usage_error(run("predict", "-f", fake_version, "--label", "stable", "--version", "1", *SEED_ARGS),
                       "not both")  # fmt: skip


def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    """Through the installed entry point, not CliRunner: the exit status and stderr a shell sees."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("deployer")), "train", "-f", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[0] == f"deployer: error: manifest not found: {tmp_path / 'nope.yaml'}"
    assert "Traceback" not in proc.stderr


# ---- --json shapes ---------------------------------------------------------------------------
TINY_TRAINER = textwrap.dedent(
    """
    import keras
    from deployer.trainer import TrainContext, TrainResult

    def train(context: TrainContext) -> TrainResult:
        keras.utils.set_random_seed(context.seed)
        model = keras.Sequential([
            keras.Input((len(context.feature_names),)),
            keras.layers.Dense(len(context.classes), activation="softmax"),
        ])
        return TrainResult(model=model, metrics={"accuracy": 0.5}, data_hash="0" * 64, extra={"tiny": True})
    """
)


@pytest.mark.slow
def test_train_json_with_project_trainer(tmp_path: Path) -> None:
    """A trainer from the manifest's project root (not the repo), exported and reported as JSON."""
    (tmp_path / "tiny_project_trainer.py").write_text(TINY_TRAINER)
    doc = iris_manifest_doc()
    doc["project_root"] = "."
    doc["models"][0]["trainer"] = "tiny_project_trainer:train"
    manifest = write_manifest(tmp_path, doc)
    result = run("train", "-f", manifest, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"model", "version", "path", "metrics", "seconds_train", "seconds_export"}
    assert payload["model"] == "iris"
    assert payload["path"] == str(tmp_path / "exports" / "iris" / str(payload["version"]))
    assert payload["metrics"] == {"accuracy": 0.5}
    assert Path(payload["path"], "saved_model.pb").is_file()

    listed = json.loads(run("versions", "-f", manifest, "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == [payload["version"]]


@pytest.mark.slow
def test_versions_json(iris_export: TrainedExport) -> None:
    result = run("versions", "-f", iris_export.manifest_path, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model"] == "iris"
    (entry,) = payload["versions"]
    assert entry["version"] == iris_export.version
    assert entry["path"] == str(iris_export.path)
    assert entry["metrics"]["accuracy"] >= 0.93
    assert entry["created_at"]


@pytest.mark.slow
def test_inspect_json_and_table(iris_export: TrainedExport) -> None:
    result = run("inspect", "-f", iris_export.manifest_path, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["version"] == iris_export.version
    (sig,) = payload["signatures"]
    assert sig["name"] == "serving_default"
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert [(t["name"], t["dtype"], t["shape"]) for t in sig["inputs"]] == [("inputs", "DT_STRING", [-1])]
    assert [(t["name"], t["dtype"], t["shape"]) for t in sig["outputs"]] == [
        ("classes", "DT_STRING", [-1, 3]),
        ("scores", "DT_FLOAT", [-1, 3]),
    ]
    table = run("inspect", "-f", iris_export.manifest_path, "--version", str(iris_export.version))
    assert table.exit_code == 0
    assert "serving_default" in table.stdout and "DT_FLOAT" in table.stdout and "(-1, 3)" in table.stdout


@pytest.mark.slow
def test_predict_json_and_table(iris_export: TrainedExport, tmp_path: Path) -> None:
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text(
        "Id,SepalLength,SepalWidth,PetalLength,PetalWidth\n"
        "a,5.1,3.3,1.7,0.5\nb,5.9,3.0,4.2,1.5\nc,6.9,3.1,5.4,2.1\n"
    )
    result = run("predict", "-f", iris_export.manifest_path, "--local", "--input", csv_file, "--json")
    assert result.exit_code == 0, result.stderr
    payload: dict[str, Any] = json.loads(result.stdout)
    assert payload["version"] == iris_export.version
    assert [p["class"] for p in payload["predictions"]] == ["0", "1", "2"]
    assert all(p["probability"] == max(p["scores"].values()) for p in payload["predictions"])

    args = [x for pair in SEED_EXAMPLE for x in ("--example", pair)]
    table = run("predict", "-f", iris_export.manifest_path, "--local", *args)
    assert table.exit_code == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "ClassID" in line)
    assert header.split() == [
        "SepalLength", "SepalWidth", "PetalLength", "PetalWidth", "ClassID", "Probability",
    ]


def test_offline_commands_do_not_import_tensorflow_for_listing(tmp_path: Path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from deployer.cli import main;"
        f"r = CliRunner().invoke(main, ['versions', '-f', {str(REPO_ROOT / 'manifests/iris.yaml')!r}]);"
        "assert r.exit_code == 0, r.output; assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_predict_refuses_an_incomplete_version(fake_version: Path) -> None:
    args = [x for pair in SEED_EXAMPLE for x in ("--example", pair)]
    # Without --version an incomplete directory is never the default; asked for by number it is refused.
    assert_usage_error(run("predict", "-f", fake_version, "--local", *args), "no usable version")
    assert_usage_error(run("predict", "-f", fake_version, "--local", "--version", "7", *args), "is incomplete")
