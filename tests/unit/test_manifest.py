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
    ("unknown runtime", _set("server.runtime", "k8s"), "server.runtime: Input should be 'auto', 'docker', 'local' or"),
    ("unknown server key", _set("server.colour", "red"), "server.colour: unknown key"),
    ("bad batching", _set("server.batching", {"max_batch_size": 0}), "server.batching.max_batch_size: Input should"),
    ("no replicas", _set("server.replicas", 0), "server.replicas: Input should be greater than or equal to 1"),
    ("too many replicas", _set("server.replicas", 65), "server.replicas: Input should be less than or equal to 64"),
    ("unknown kubernetes key", _set("kubernetes", {"ingress": True}), "kubernetes.ingress: unknown key"),
    ("bad namespace", _set("kubernetes", {"namespace": "ML_Serving"}), "kubernetes.namespace: String should match"),
    ("bad claim", _set("kubernetes", {"storage_claim": "-models"}), "kubernetes.storage_claim: String should match"),
    ("bad service type", _set("kubernetes", {"service_type": "Ingress"}), "kubernetes.service_type: Input should be"),
    ("bad cpu", _set("kubernetes", {"resources": {"requests": {"cpu": "lots"}}}),
     "kubernetes.resources.requests.cpu: String should match"),
    ("unknown resource", _set("kubernetes", {"resources": {"limits": {"gpu": "1"}}}),
     "kubernetes.resources.limits.gpu: unknown key"),
    ("requests over limits",
     _set("kubernetes", {"resources": {"requests": {"memory": "4Gi"}, "limits": {"memory": "1Gi"}}}),
     "kubernetes.resources: requests.memory 4Gi exceeds limits.memory 1Gi"),
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


# ---- the fields of issue 8: sources, api, typed features, predict inputs, per-API expectations -------
def _predict_doc() -> Doc:
    doc = iris_manifest_doc()
    model = _model(doc)
    for key in ("features", "classes"):
        del model[key]
    model["api"] = "predict"
    model["inputs"] = [{"name": "image", "dtype": "float32", "shape": [-1, 2, 2]}]
    model["outputs"] = [{"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}]
    model["smoke"] = [{"name": "p", "inputs": {"image": [[0, 1], [2, 3]]}, "expect": {"probabilities": {"argmax": 1}}}]
    return doc


def _regress_doc() -> Doc:
    doc = iris_manifest_doc()
    model = _model(doc)
    del model["classes"]
    model["api"] = "regress"
    model["features"][0]["dtype"] = "int"
    model["smoke"] = [{"features": {**SEED_ROWS[0][0], "SepalLength": 5}, "expect_value": 1.5, "tolerance": 0.1}]
    return doc


NEW_FIELDS: list[tuple[str, Callable[[], Doc], Callable[[Doc], None], str]] = [
    ("unknown api", iris_manifest_doc, _set("models.0.api", "explain"), "models[0].api: Input should be"),
    ("classes on regress", _regress_doc, _set("models.0.classes", ["a", "b"]),
     "models[0].classes: not a field of a regress"),
    ("int feature gets float", _regress_doc, _set("models.0.smoke.0.features.SepalLength", 5.5),
     "models[0].smoke[0].features.SepalLength: 5.5 is not an integer"),
    ("string feature gets number", iris_manifest_doc, _set("models.0.features.0.dtype", "string"),
     "models[0].smoke[0].features.SepalLength: 5.1 is not a string"),
    ("regress without expect_value", _regress_doc, _delete("models.0.smoke.0.expect_value"),
     "models[0].smoke[0].expect_value: Field required"),
    ("negative tolerance", _regress_doc, _set("models.0.smoke.0.tolerance", -1),
     "models[0].smoke[0].tolerance: Input should"),
    ("expect_value too big", _regress_doc, _set("models.0.smoke.0.expect_value", 1e300),
     "models[0].smoke[0].expect_value: Input should be less than"),
    ("expect_class on regress", _regress_doc, _set("models.0.smoke.0.expect_class", "0"),
     "models[0].smoke[0].expect_class: not a field of a regress"),
    ("predict without inputs", _predict_doc, _delete("models.0.inputs"), "models[0].inputs: a predict model needs"),
    ("bad dtype", _predict_doc, _set("models.0.inputs.0.dtype", "float16"), "models[0].inputs[0].dtype: Input should"),
    ("batch dim", _predict_doc, _set("models.0.inputs.0.shape", [2, 2, 2]),
     "models[0].inputs[0].shape: shape[0] is the batch dimension"),
    ("rank too high", _predict_doc, _set("models.0.inputs.0.shape", [-1] * 9),
     "models[0].inputs[0].shape: List should"),
    ("instance shape", _predict_doc, _set("models.0.smoke.0.inputs.image", [1, 2, 3]),
     "models[0].smoke[0].inputs.image: one instance must have shape [2, 2], got [3]"),
    ("instance non-finite", _predict_doc, _set("models.0.smoke.0.inputs.image", [[0, 1], [2, float("nan")]]),
     "models[0].smoke[0].inputs: image: nan is not a finite number"),
    ("unknown input", _predict_doc, _set("models.0.smoke.0.inputs.pixels", [[0, 1], [2, 3]]),
     "models[0].smoke[0].inputs: unknown input(s) pixels"),
    ("inputs and file", _predict_doc, _set("models.0.smoke.0.inputs_file", "x.json"),
     "models[0].smoke[0].inputs: give inputs"),
    ("undeclared output", _predict_doc, _set("models.0.smoke.0.expect", {"logits": {"argmax": 1}}),
     "models[0].smoke[0].expect.logits: not one of the declared outputs"),
    ("two checks", _predict_doc, _set("models.0.smoke.0.expect.probabilities", {"argmax": 1, "shape": [3]}),
     "models[0].smoke[0].expect.probabilities: give exactly one of argmax, values or shape (got argmax, shape)"),
    ("negative argmax", _predict_doc, _set("models.0.smoke.0.expect.probabilities", {"argmax": -1}),
     "models[0].smoke[0].expect.probabilities.argmax: Input should be greater"),
    ("atol without values", _predict_doc, _set("models.0.smoke.0.expect.probabilities", {"argmax": 1, "atol": 1}),
     "atol: only meaningful with values"),
    ("values of wrong shape", _predict_doc, _set("models.0.smoke.0.expect.probabilities", {"values": [1, 2]}),
     "models[0].smoke[0].expect.probabilities.values: one instance must have shape [3], got [2]"),
    ("features on predict", _predict_doc, _set("models.0.features", [{"name": "x"}]),
     "models[0].features: not a field of a predict"),
    ("missing inputs file", _predict_doc,
     _set("models.0.smoke.0", {"inputs_file": "nope.json", "expect": {"probabilities": {"argmax": 1}}}),
     "models[0].smoke[0].inputs_file: "),
    ("trainer without api", _regress_doc, lambda d: _model(d).pop("api") and _model(d).pop("smoke"),
     "models[0].api: a trainer-built model needs an api"),
    ("predict field on regress", _regress_doc, lambda d: _model(d)["smoke"].append({"inputs": {"x": 1}}),
     "models[0].smoke[1].inputs: not a field of a regress smoke case"),
    ("mixed case kinds", _regress_doc,
     lambda d: (_model(d).pop("api"), _model(d).pop("trainer"), _model(d)["smoke"].append({"inputs": {"x": 1}})),
     "models[0].smoke: cases mix the fields of predict and regress; set models[0].api"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "mutate", "expected"), [c[1:] for c in NEW_FIELDS], ids=[c[0] for c in NEW_FIELDS])
def test_bad_new_fields_name_the_field(
    tmp_path: Path, make: Callable[[], Doc], mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = make()
    mutate(doc)
    with pytest.raises(ManifestError) as info:
        load_manifest(write_manifest(tmp_path, doc))
    assert expected in info.value.message
    assert "\n" not in info.value.message


def test_the_three_example_manifests_and_the_zoo_load() -> None:
    apis = {}
    for name in ("iris", "diabetes", "digits", "zoo"):
        manifest = load_manifest(REPO_ROOT / "manifests" / f"{name}.yaml")
        apis.update({m.name: m.declared_api for m in manifest.models})
    assert apis == {"iris": "classify", "diabetes": "regress", "digits": "predict"}


def test_sources_and_the_signature_default(tmp_path: Path) -> None:
    doc = _regress_doc()
    model = _model(doc)
    del model["trainer"], model["api"]
    model["saved_model"] = "elsewhere/model"
    loaded = load_manifest(write_manifest(tmp_path, doc)).model()
    assert loaded.source == "saved_model" and loaded.declared_api == "regress"  # from expect_value
    del model["saved_model"]
    model["smoke"] = []
    loaded = load_manifest(write_manifest(tmp_path, doc)).model()
    assert loaded.source == "external" and loaded.declared_api is None  # the signature's method name decides
