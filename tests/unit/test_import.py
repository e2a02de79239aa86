"""`deployer import` and the saved_model/external sources: validation before publishing, one-line errors
with exit code 2, nothing half-published, content-hash idempotence, metadata and warmup records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from deployer.cli import main
from deployer.errors import StoreError
from deployer.importer import tree_sha256
from deployer.manifest import load_manifest
from deployer.orchestrate import _ensure_versions
from tests.savedmodels import FEATURES, IRIS_ROWS

pytestmark = pytest.mark.slow

REGRESS = {
    "signature_name": "regression",
    "features": [{"name": n} for n in FEATURES],
    "smoke": [{"features": dict(zip(FEATURES, IRIS_ROWS[0], strict=True)), "expect_value": 3.4, "tolerance": 0.01}],
}
PREDICT = {"signature_name": "predict", "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.savedmodels import write_model

    root = tmp_path_factory.mktemp("import-sources")
    return {kind: write_model(root / kind, 1, kind=kind) for kind in ("good", "broken")}


def manifest(root: Path, model: dict[str, Any], **source: Any) -> Path:
    doc = {
        "project": "imp",
        "state_dir": "state",
        "models": [{"name": "m", "base_path": "models/m", **source, **model}],
        "server": {"grpc_port": 0, "rest_port": 0},
    }
    path = root / "deployer.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def published(root: Path) -> list[str]:
    base = root / "models" / "m"
    return sorted(os.listdir(base)) if base.exists() else []


def assert_refused(result: Result, root: Path, *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("  hint:")]
    assert len(lines) == 1 and lines[0].startswith("deployer: error: "), result.stderr
    for text in expected:
        assert text in lines[0], result.stderr
    assert [name for name in published(root) if not name.startswith(".tmp-probe")] == []


def test_import_publishes_with_metadata_and_warmup_and_is_idempotent(tmp_path: Path, built: dict[str, Path]) -> None:
    path = manifest(tmp_path, REGRESS, saved_model="unused")
    result = run("import", "-f", path, built["good"], "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"model", "version", "path"}
    version = Path(payload["path"])
    assert published(tmp_path) == [version.name]
    metadata = json.loads((version / "assets.extra" / "deployer_metadata.json").read_text())
    assert metadata["source"] == "import" and metadata["api"] == "regress"
    assert metadata["source_path"] == str(built["good"]) and metadata["source_sha256"] == tree_sha256(built["good"])
    assert metadata["deployer_version"] and metadata["created_at"].endswith("+00:00")

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(version / "assets.extra" / "tf_serving_warmup_requests")))
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    assert log.WhichOneof("log_type") == "regress_log"
    assert log.regress_log.request.model_spec.signature_name == "regression"
    # The same content again is the same version; nothing new is written.
    again = run("import", "-f", path, built["good"], "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["version"] == payload["version"]
    assert published(tmp_path) == [version.name]
    # An explicit version that exists with other content is refused, never overwritten.
    changed = tmp_path / "changed"
    shutil.copytree(built["good"], changed)
    (changed / "extra.txt").write_text("x")
    assert_refused_version = run("import", "-f", path, changed, "--version", version.name)
    assert assert_refused_version.exit_code == 2 and "already exists" in assert_refused_version.stderr
    assert published(tmp_path) == [version.name]


def _symlink_out(tmp_path: Path, built: dict[str, Path]) -> Path:
    copy = tmp_path / "src-link"
    shutil.copytree(built["good"], copy)
    (copy / "assets.extra").mkdir(exist_ok=True)
    (copy / "assets.extra" / "leak").symlink_to("/etc/hostname")
    return copy


def _not_saved_model(tmp_path: Path, built: dict[str, Path]) -> Path:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "model.h5").write_bytes(b"x")
    return folder


BAD: list[tuple[str, Any, dict[str, Any], str]] = [
    ("missing", lambda t, b: t / "nope", REGRESS, "does not exist"),
    ("a file", lambda t, b: b["good"] / "saved_model.pb", REGRESS, "is not a directory"),
    ("not a SavedModel", _not_saved_model, REGRESS, "is not a SavedModel: no saved_model.pb"),
    ("corrupt", lambda t, b: b["broken"], REGRESS, "corrupt"),
    ("no such signature", lambda t, b: b["good"], {**REGRESS, "signature_name": "nope"}, "no signature 'nope'"),
    ("wrong API", lambda t, b: b["good"], {**REGRESS, "api": "classify", "smoke": []}, "expected outputs"),
    ("mismatching inputs", lambda t, b: b["good"],
     {**PREDICT, "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 5]}]}, "has shape [-1, 4]"),
    ("undeclared input", lambda t, b: b["good"],
     {**PREDICT, "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 4]}]}, "'pixels' is not in the"),
    ("wrong dtype", lambda t, b: b["good"],
     {**PREDICT, "inputs": [{"name": "features", "dtype": "int64", "shape": [-1, 4]}]}, "is DT_FLOAT"),
    ("symlink leaving", _symlink_out, REGRESS, "contains a symlink leaving it: assets.extra/leak"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "model", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_sources_are_refused_in_one_line(
    tmp_path: Path, built: dict[str, Path], source: Any, model: dict[str, Any], expected: str
) -> None:
    model = {k: v for k, v in model.items() if v is not None}
    path = manifest(tmp_path, model, saved_model="unused")
    assert_refused(run("import", "-f", path, source(tmp_path, built)), tmp_path, expected)


def test_a_smoke_input_the_model_rejects_fails_the_import(tmp_path: Path, built: dict[str, Path]) -> None:
    # Declared [-1, -1]: the manifest accepts 3 values, the graph's matmul does not.
    model = {**PREDICT, "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, -1]}],
             "smoke": [{"inputs": {"features": [1.0, 2.0, 3.0]}}]}  # fmt: skip
    path = manifest(tmp_path, model, saved_model="unused")
    assert_refused(run("import", "-f", path, built["good"]), tmp_path, "smoke cases' inputs fail")


def test_an_external_model_is_never_written_to(tmp_path: Path, built: dict[str, Path]) -> None:
    path = manifest(tmp_path, REGRESS)
    assert_refused(run("import", "-f", path, built["good"]), tmp_path, "another pipeline", "never writes")
    assert not (tmp_path / "models").exists()
    loaded = load_manifest(path)
    with pytest.raises(StoreError) as info:
        _ensure_versions(loaded, False, lambda _: None, {})
    assert "has no version under" in info.value.message and "another pipeline" in (info.value.hint or "")
    assert not (tmp_path / "models").exists()


def test_up_imports_a_saved_model_source_once_per_content(tmp_path: Path, built: dict[str, Path]) -> None:
    source = tmp_path / "src"
    shutil.copytree(built["good"], source)
    loaded = load_manifest(manifest(tmp_path, REGRESS, saved_model="src"))
    first = _ensure_versions(loaded, False, lambda _: None, {})
    assert len(first) == 1 and published(tmp_path) == [str(first[0].version)]
    assert _ensure_versions(loaded, False, lambda _: None, {}) == []
    (source / "assets.extra").mkdir(exist_ok=True)
    (source / "assets.extra" / "notes.txt").write_text("changed")
    second = _ensure_versions(loaded, False, lambda _: None, {})
    assert len(second) == 1 and second[0].version > first[0].version
