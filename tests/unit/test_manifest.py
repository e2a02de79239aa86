"""Manifest validation: every bad manifest is a ManifestError that names the field path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ManifestError
from deployer.manifest import load_manifest
from tests.unit.conftest import IRIS_MANIFEST, REPO_ROOT, SEED_ROWS, iris_manifest_doc, write_manifest

Doc = dict[str, Any]


def _model(doc: Doc) -> Doc:
    model: Doc = doc["models"][0]
    return model


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutator that sets a dotted/indexed path, e.g. ``models.0.smoke.2.expect_class``."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]

    return mutate


def _duplicate_feature(doc: Doc) -> None:
    _model(doc)["features"].append({"name": "SepalLength"})


def _smoke_missing_feature(doc: Doc) -> None:
    del _model(doc)["smoke"][1]["features"]["PetalWidth"]


def _smoke_unknown_feature(doc: Doc) -> None:
    _model(doc)["smoke"][0]["features"]["Colour"] = 1.0


def _duplicate_model(doc: Doc) -> None:
    doc["models"].append(copy.deepcopy(_model(doc)))


BAD_MANIFESTS: list[tuple[str, Callable[[Doc], None], str]] = [
    ("unknown top-level key", _set("colour", "blue"), "colour: unknown key"),
    ("bad project name", _set("project", "Iris Project"), "project: String should match pattern"),
    ("missing models", _delete("models"), "models: Field required"),
    ("empty models", _set("models", []), "models: List should have at least 1 item"),
    ("duplicate model", _duplicate_model, "models: duplicate model name(s): iris"),
    ("unknown model key", _set("models.0.colour", 1), "models[0].colour: unknown key"),
    ("trainer and saved_model", _set("models.0.saved_model", "exports/x"), "models[0]: saved_model: a model has one"),
    ("trainer without function", _set("models.0.trainer", "models.iris.trainer"), "models[0].trainer: String should"),
    ("bad model name", _set("models.0.name", "-iris"), "models[0].name: String should match pattern"),
    ("bad feature name", _set("models.0.features.1.name", "sepal width"), "models[0].features[1].name: String"),
    ("unknown feature dtype", _set("models.0.features.2.dtype", "double"), "models[0].features[2].dtype: Input should"),
    ("duplicate feature", _duplicate_feature, "models[0].features: duplicate feature name(s): SepalLength"),
    ("no features", _set("models.0.features", []), "models[0].features: List should have at least 1 item"),
    ("one class", _set("models.0.classes", ["0"]), "models[0].classes: List should have at least 2 items"),
    ("duplicate classes", _set("models.0.classes", ["0", "0", "1"]), "models[0].classes: class labels must be unique"),
    ("bad label", _set("models.0.labels", ["stable/1"]), "models[0].labels[0]: String should match pattern"),
    ("smoke expect unknown class", _set("models.0.smoke.2.expect_class", "7"), "models[0].smoke[2].expect_class"),
    ("smoke min_score > 1", _set("models.0.smoke.1.min_score", 1.5), "models[0].smoke[1].min_score: Input should"),
    ("smoke non-numeric feature", _set("models.0.smoke.0.features.SepalWidth", "wide"),
     "models[0].smoke[0].features.SepalWidth: 'wide' is not a number"),
    ("smoke missing feature", _smoke_missing_feature, "models[0].smoke[1].features: missing feature(s) PetalWidth"),
    ("smoke unknown feature", _smoke_unknown_feature, "models[0].smoke[0].features: unknown feature(s) Colour"),
    ("smoke unknown key", _set("models.0.smoke.3.expected", "0"), "models[0].smoke[3].expected: unknown key"),
    ("smoke without expect_class", _delete("models.0.smoke.0.expect_class"), "models[0].smoke[0].expect_class: Field"),
    ("grpc port out of range", _set("server.grpc_port", 70000), "server.grpc_port: Input should be less than"),
    ("ports equal", _set("server.rest_port", 8500), "server: grpc_port and rest_port must differ"),
    ("unknown runtime", _set("server.runtime", "k8s"), "server.runtime: Input should be 'auto', 'docker' or 'local'"),
    ("unknown server key", _set("server.colour", "red"), "server.colour: unknown key"),
    ("bad batching", _set("server.batching", {"max_batch_size": 0}), "server.batching.max_batch_size: Input should"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in BAD_MANIFESTS],
                         ids=[name for name, _, _ in BAD_MANIFESTS])
def test_bad_manifest_names_the_field(tmp_path: Path, mutate: Callable[[Doc], None], expected: str) -> None:
    doc = iris_manifest_doc()
    mutate(doc)
    path = write_manifest(tmp_path, doc)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert expected in info.value.message
    assert "\n" not in info.value.message


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("project: iris\nmodels: [\n  - name: x\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"invalid YAML at line \d+"):
        load_manifest(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_manifest_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match="must be a YAML mapping"):
        load_manifest(path)


def test_iris_manifest_loads() -> None:
    manifest = load_manifest(IRIS_MANIFEST)
    model = manifest.model()
    assert manifest.project == "iris"
    assert manifest.root == REPO_ROOT
    assert manifest.state_path == REPO_ROOT / ".deployer" / "iris"
    assert manifest.base_path(model) == REPO_ROOT / "exports" / "iris"
    assert model.name == "iris"
    assert model.trainer == "models.iris.trainer:train"
    assert model.signature_name == "serving_default"
    assert model.feature_names == ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
    assert model.classes == ["0", "1", "2"]
    assert 6 <= len(model.smoke) <= 10
    cases = [(dict(c.features), c.expect_class) for c in model.smoke]
    for seed_row in SEED_ROWS:
        assert seed_row in cases
    assert manifest.server.runtime == "auto"
    assert (manifest.server.grpc_port, manifest.server.rest_port) == (8500, 8501)
