"""Any model, any TF Serving API, end to end on a real server (the local runtime), as users run it.

For each of Classify, Regress and Predict: a SavedModel built outside deployer (tests/savedmodels,
through the signature of that API) is the manifest's ``saved_model`` source → ``deployer up`` imports
and serves it → ``deployer smoke`` over gRPC and REST → ``deployer import`` of a second build →
``deployer promote`` (smoke + diff) → ``deployer rollback``. The Keras 3 ``model.export()`` walk of the
README runs too. tests/docker/test_any_model_docker.py runs the predict scenario on the docker runtime.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.grpc.test_promote_local import cli_command, cli_env
from tests.savedmodels import FEATURES, IRIS_ROWS

pytestmark = pytest.mark.grpc

CLI_TIMEOUT = 300.0
ROWS = [dict(zip(FEATURES, row, strict=True)) for row in IRIS_ROWS]

# What the manifest says about each API's signature of the tests/savedmodels models.
API_MODELS: dict[str, dict[str, Any]] = {
    "classify": {
        "signature_name": "classification",
        "features": [{"name": n} for n in FEATURES],
        "classes": ["0", "1", "2"],
        "smoke": [
            {"name": f"row{i}", "features": row, "expect_class": str(i), "min_score": 0.5}
            for i, row in enumerate(ROWS)
        ],
    },
    "regress": {
        # No api and no classes: the signature's method name (tensorflow/serving/regress) and the
        # expect_value cases say Regress.
        "signature_name": "regression",
        "features": [{"name": n} for n in FEATURES],
        "smoke": [
            {"name": f"row{i}", "features": row, "expect_value": row["PetalLength"] * 2, "tolerance": 1e-4}
            for i, row in enumerate(ROWS)
        ],
    },
    "predict": {
        "signature_name": "predict",
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]},
            {"name": "class_ids", "dtype": "int64", "shape": [-1]},
        ],
        "smoke": [
            *({"name": f"row{i}", "inputs": {"features": list(row)}, "expect": {"probabilities": {"argmax": i}}}
              for i, row in enumerate(IRIS_ROWS)),
            {"name": "ids", "inputs": {"features": list(IRIS_ROWS[2])}, "expect": {"class_ids": {"values": 2}}},
            {"name": "file", "inputs_file": "rows.json", "expect": {"probabilities": {"shape": [3]}}},
        ],
    },
}  # fmt: skip


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SavedModels built elsewhere: v1 and v2 answer alike (different bytes), wrong answers "2"."""
    from tests.savedmodels import write_model

    root = tmp_path_factory.mktemp("byo")
    return {
        "v1": write_model(root / "v1", 1, kind="good"),
        "v2": write_model(root / "v2", 1, kind="good", warmup=True),
        "wrong": write_model(root / "wrong", 1, kind="wrong"),
    }


class Project:
    def __init__(self, root: Path, manifest: Path) -> None:
        self.root, self.manifest = root, manifest
        self.log: list[str] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cli_command(*args, "-f", str(self.manifest)), capture_output=True, text=True, env=cli_env(),
            cwd=self.root, timeout=CLI_TIMEOUT,
        )  # fmt: skip
        self.log.append(f"$ deployer {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
        return result

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.cli(*args)
        assert result.returncode == 0, "\n".join(self.log[-2:])
        return result

    def versions(self) -> list[int]:
        return [v["version"] for v in json.loads(self.ok("versions", "--json").stdout)["versions"]]


def write_project(root: Path, api: str, source: Path) -> Project:
    (root / "rows.json").write_text(json.dumps({"instances": [{"features": list(r)} for r in IRIS_ROWS]}))
    model = {"name": f"m-{api}", "saved_model": str(source), "base_path": "models/m", **API_MODELS[api]}
    doc = {
        "project": f"any-{api}-{uuid.uuid4().hex[:8]}",
        "state_dir": "state",
        "models": [model],
        "server": {"grpc_port": 0, "rest_port": 0, "health_deadline_seconds": 120, "container": {"memory": "1g"}},
    }
    manifest = root / "deployer.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Project(root, manifest)


@pytest.fixture
def runtime_args() -> list[str]:
    return ["--runtime", "local"]


@pytest.fixture(params=sorted(API_MODELS))
def project(request: pytest.FixtureRequest, tmp_path: Path, sources: dict[str, Path]) -> Iterator[Project]:
    project = write_project(tmp_path, request.param, sources["v1"])
    try:
        yield project
    finally:
        project.cli("down")


def run_scenario(project: Project, sources: dict[str, Path], runtime_args: list[str]) -> None:
    project.ok("up", *runtime_args)
    (v1,) = project.versions()
    project.ok("up", *runtime_args)  # the same content is not imported twice
    assert project.versions() == [v1]
    for transport in ([], ["--rest"]):
        report = json.loads(project.ok("smoke", "--json", *transport).stdout)
        assert report["passed"] and report["reports"][0]["total"] >= 3

    imported = json.loads(project.ok("import", str(sources["v2"]), "--json").stdout)
    v2 = imported["version"]
    assert set(imported) == {"model", "version", "path"} and v2 > v1
    assert Path(imported["path"], "assets.extra", "tf_serving_warmup_requests").is_file()

    promoted = json.loads(project.ok("promote", str(v2), "--json").stdout)
    assert (promoted["from"], promoted["to"], promoted["result"]) == (v1, v2, "ok")
    assert promoted["smoke"]["passed"] and len(promoted["diff"]) == len(promoted["smoke"]["cases"])
    assert promoted["class_changes"] == 0 and promoted["max_delta"] < 1e-5
    assert json.loads(project.ok("smoke", "--json", "--rest").stdout)["passed"]

    rolled = json.loads(project.ok("rollback", "--json").stdout)
    assert (rolled["from"], rolled["to"], rolled["result"]) == (v2, v1, "ok")
    assert json.loads(project.ok("smoke", "--json").stdout)["reports"][0]["cases"][0]["served_version"] == v1


def test_each_api_imports_serves_smokes_promotes_and_rolls_back(
    project: Project, sources: dict[str, Path], runtime_args: list[str]
) -> None:
    run_scenario(project, sources, runtime_args)


def test_a_predict_candidate_that_moves_too_much_is_refused(tmp_path: Path, sources: dict[str, Path]) -> None:
    """--max-delta on Predict: the wrong build's probabilities move by ~1; the label stays."""
    project = write_project(tmp_path, "predict", sources["v1"])
    # Without expectations the wrong build passes smoke; only the diff can stop it.
    doc = yaml.safe_load(project.manifest.read_text())
    for case in doc["models"][0]["smoke"]:
        case.pop("expect", None)
    project.manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        project.ok("up", "--runtime", "local")
        (v1,) = project.versions()
        wrong = json.loads(project.ok("import", str(sources["wrong"]), "--json").stdout)["version"]
        refused = project.cli("promote", str(wrong), "--max-delta", "0.1", "--json")
        assert refused.returncode == 6, project.log[-1]
        report = json.loads(refused.stdout)
        assert report["result"] == "rolled_back" and report["max_delta"] > 0.5 and report["class_changes"] >= 1
        error = next(line for line in refused.stderr.splitlines() if line.startswith("deployer: error:"))
        assert "exceeds --max-delta 0.1" in error
        assert json.loads(project.ok("smoke", "--json").stdout)["reports"][0]["cases"][0]["served_version"] == v1
    finally:
        project.cli("down")


KERAS_EXPORT = """
import keras, numpy as np, sys
keras.utils.set_random_seed(1)
inputs = keras.Input((4,), name="measurements")
outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8, activation="relu")(inputs))
model = keras.Model(inputs, outputs)
model.export(sys.argv[1])
print(int(np.argmax(model(np.array([[5.1, 3.3, 1.7, 0.5]], "float32"))[0])))
"""


def test_bring_your_own_keras_export(tmp_path: Path) -> None:
    """The README walk: plain Keras 3 ``model.export(path)``, then import, up, smoke, promote."""
    export = subprocess.run(
        [*cli_command()[:1], "-c", KERAS_EXPORT, str(tmp_path / "exported")], capture_output=True, text=True,
        env=cli_env(), timeout=CLI_TIMEOUT,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    winner = int(export.stdout.strip().splitlines()[-1])
    model = {
        "name": "byo",
        "saved_model": "exported",
        "base_path": "models/byo",
        "inputs": [{"name": "measurements", "dtype": "float32", "shape": [-1, 4]}],
        "smoke": [{"inputs": {"measurements": [5.1, 3.3, 1.7, 0.5]}, "expect": {"output_0": {"argmax": winner}}}],
    }
    doc = {"project": f"byo-{uuid.uuid4().hex[:8]}", "state_dir": "state", "models": [model],
           "server": {"grpc_port": 0, "rest_port": 0}}  # fmt: skip
    (tmp_path / "deployer.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    project = Project(tmp_path, tmp_path / "deployer.yaml")
    try:
        first = json.loads(project.ok("import", "exported", "--json").stdout)["version"]
        project.ok("up", "--runtime", "local")
        assert project.versions() == [first]
        assert json.loads(project.ok("smoke", "--json").stdout)["passed"]
        assert json.loads(project.ok("smoke", "--rest", "--json").stdout)["passed"]
        second = json.loads(project.ok("import", "exported", "--version", str(first + 1), "--json").stdout)["version"]
        assert second == first + 1
        assert json.loads(project.ok("promote", str(second), "--json").stdout)["result"] == "ok"
    finally:
        project.cli("down")
