"""The exported SavedModel: TF Serving's Classify contract, loadable the way its C++ server loads it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deployer import store
from deployer.errors import TrainerError
from deployer.export import export_model, predict_local, serialize_examples
from deployer.manifest import load_manifest
from tests.unit.conftest import SEED_ROWS, TrainedExport

pytestmark = pytest.mark.slow

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def test_signature_def_meets_classify_contract(iris_export: TrainedExport) -> None:
    signatures = store.read_signatures(iris_export.path)
    sig = signatures["serving_default"]
    assert [(t.name, t.dtype, t.shape) for t in sig.inputs] == [("inputs", "DT_STRING", [-1])]
    assert [(t.name, t.dtype, t.shape) for t in sig.outputs] == [
        ("classes", "DT_STRING", [-1, 3]),
        ("scores", "DT_FLOAT", [-1, 3]),
    ]
    store.validate_version(iris_export.path, iris_export.model)


def test_tf2_reload_signature(iris_export: TrainedExport) -> None:
    import tensorflow as tf

    fn = tf.saved_model.load(str(iris_export.path)).signatures["serving_default"]
    (_, kwargs) = fn.structured_input_signature
    assert kwargs == {"inputs": tf.TensorSpec([None], tf.string, name="inputs")}
    assert {k: (v.dtype, v.shape.as_list()) for k, v in fn.structured_outputs.items()} == {
        "classes": (tf.string, [None, 3]),
        "scores": (tf.float32, [None, 3]),
    }


def test_session_loader_runs_signature(iris_export: TrainedExport) -> None:
    """TF Serving's C++ server loads with the session-based loader and runs tensors by name."""
    import numpy as np
    import tensorflow as tf

    rows = [row for row, _ in SEED_ROWS]
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(iris_export.path))
        sig = meta_graph.signature_def["serving_default"]
        result = sess.run(
            {name: info.name for name, info in sig.outputs.items()},
            feed_dict={sig.inputs["inputs"].name: serialize_examples(rows, FEATURES)},
        )
    assert result["classes"].tolist() == [[b"0", b"1", b"2"]] * 3
    scores = result["scores"]
    assert scores.dtype == np.float32 and scores.shape == (3, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]


def test_saved_model_cli_runs_input_examples(iris_export: TrainedExport) -> None:
    cli = Path(sys.executable).with_name("saved_model_cli")
    example = json.dumps([dict(zip(FEATURES, ([v] for v in SEED_ROWS[2][0].values()), strict=True))])
    proc = subprocess.run(
        [str(cli), "run", "--dir", str(iris_export.path), "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_examples", f"inputs={example}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Result for output key classes:\n[[b'0' b'1' b'2']]" in proc.stdout
    assert "Result for output key scores:" in proc.stdout
    scores_text = proc.stdout.split("Result for output key scores:")[1]
    scores = [float(x) for x in scores_text.replace("[", " ").replace("]", " ").split()]
    assert len(scores) == 3 and max(scores) == scores[2]


def test_warmup_requests_are_prediction_logs(iris_export: TrainedExport) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = iris_export.path / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert 1 <= len(records) <= 1000
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.WhichOneof("log_type") == "classify_log"
    request = log.classify_log.request
    assert request.model_spec.name == "iris"
    assert request.model_spec.signature_name == "serving_default"
    examples = request.input.example_list.examples
    assert len(examples) == len(iris_export.model.smoke)
    first = {k: v.float_list.value[0] for k, v in examples[0].features.feature.items()}
    assert first == pytest.approx(iris_export.model.smoke[0].features)


def test_metadata_file(iris_export: TrainedExport) -> None:
    from models.iris.trainer import DATA_FILE

    metadata = store.read_metadata(iris_export.path)
    assert metadata["version"] == iris_export.version == int(iris_export.path.name)
    assert metadata["metrics"] == iris_export.metrics
    assert metadata["metrics"]["accuracy"] >= 0.93
    assert metadata["data_hash"] == hashlib.sha256(DATA_FILE.read_bytes()).hexdigest()
    assert metadata["deployer_version"] == "0.1.0"
    assert metadata["features"] == FEATURES
    assert metadata["classes"] == ["0", "1", "2"]
    assert metadata["created_at"].endswith("+00:00")


def _untrained_model(n_features: int = 4, n_classes: int = 3) -> Any:
    from models.iris.trainer import build_model

    return build_model(n_features, n_classes)


def test_export_model_allocates_next_version_and_predicts(tmp_path: Path, make_iris_manifest: Any) -> None:
    manifest = load_manifest(make_iris_manifest())
    model = manifest.model()
    base = manifest.base_path(model)
    (base / "1700000005").mkdir(parents=True)
    result = export_model(_untrained_model(), manifest, model, metrics={"accuracy": 0.5}, data_hash="x",
                          now=1_700_000_000)
    assert result.version == 1_700_000_006
    assert result.path == base / "1700000006"
    assert store.read_metadata(result.path)["version"] == 1_700_000_006
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []
    predictions = predict_local(result.path, model, [row for row, _ in SEED_ROWS])
    assert [sorted(p.scores) for p in predictions] == [["0", "1", "2"]] * 3
    assert all(p.probability == max(p.scores.values()) for p in predictions)


def test_export_rejects_model_breaking_the_contract(make_iris_manifest: Any) -> None:
    manifest = load_manifest(make_iris_manifest())
    model = manifest.model()
    with pytest.raises(TrainerError, match=r"expected \[2, 3\]"):
        export_model(_untrained_model(n_classes=2), manifest, model, metrics={}, data_hash="x")
    with pytest.raises(TrainerError, match=r"does not accept float32 \[batch, 4\]"):
        export_model(_untrained_model(n_features=5), manifest, model, metrics={}, data_hash="x")
    base = manifest.base_path(model)
    assert list(base.iterdir()) == []
