"""Request surface of deployer-model-server over gRPC and REST, against one shared server."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests.grpc.conftest import (
    RunningServer,
    classify,
    config_text,
    model_entry,
    model_states,
    rpc_error,
    top_classes,
)
from tests.savedmodels import IRIS_ROWS, write_model

pytestmark = pytest.mark.grpc


@pytest.fixture(scope="module")
def server(model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root = tmp_path_factory.mktemp("models")
    write_model(root / "iris", 1, "good", warmup=True)
    write_model(root / "badsig", 1, "badsig")
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    config = config_text(model_entry("iris", root / "iris"), model_entry("badsig", root / "badsig"))
    return model_server(config, f"--monitoring_config_file={monitoring}")


def _stub(server: RunningServer) -> object:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _still_serving(server: RunningServer) -> None:
    assert top_classes(classify(server.channel, "iris", list(IRIS_ROWS))) == ["0", "1", "2"]


# -- gRPC Classify -----------------------------------------------------------------------------------


def test_classify_answers_and_echoes_resolved_spec(server: RunningServer) -> None:
    response = classify(server.channel, "iris", list(IRIS_ROWS))
    assert top_classes(response) == ["0", "1", "2"]
    spec = response.model_spec  # type: ignore[attr-defined]
    assert (spec.name, spec.version.value, spec.signature_name) == ("iris", 1, "serving_default")
    first = response.result.classifications[0]  # type: ignore[attr-defined]
    assert [c.label for c in first.classes] == ["0", "1", "2"]
    assert sum(c.score for c in first.classes) == pytest.approx(1.0, abs=1e-5)


def test_classify_named_classify_signature(server: RunningServer) -> None:
    response = classify(server.channel, "iris", [IRIS_ROWS[2]], signature="classification", version=1)
    assert top_classes(response) == ["2"]
    assert response.model_spec.signature_name == "classification"  # type: ignore[attr-defined]


def test_unknown_model_is_not_found(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "nope", [IRIS_ROWS[0]]))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert err.details() == "Servable not found for request: Latest(nope)"  # type: ignore[attr-defined]
    _still_serving(server)


def test_unknown_version_is_not_found(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "iris", [IRIS_ROWS[0]], version=9))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert err.details() == "Servable not found for request: Specific(iris, 9)"  # type: ignore[attr-defined]


def test_unknown_label_is_invalid_argument(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "iris", [IRIS_ROWS[0]], label="canary"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Unrecognized servable version label: canary"  # type: ignore[attr-defined]


def test_unknown_signature_is_invalid_argument(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "iris", [IRIS_ROWS[0]], signature="nope"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "No signature was found with the name: nope"  # type: ignore[attr-defined]


def test_wrong_feature_dtype_is_invalid_argument(server: RunningServer) -> None:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name in ("SepalLength", "SepalWidth", "PetalLength", "PetalWidth"):
        example.features.feature[name].int64_list.value.append(5)
    err = rpc_error(lambda: classify(server.channel, "iris", [example.SerializeToString()]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "Data types don't match" in err.details()  # type: ignore[attr-defined]
    _still_serving(server)


def test_empty_example_list_is_invalid_argument(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "iris", []))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Input is empty."  # type: ignore[attr-defined]
    _still_serving(server)


def test_signature_violating_classify_contract_is_rejected(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "badsig", [IRIS_ROWS[0]]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Expected Tensor shape: [batch_size num_classes] but got [1]"  # type: ignore[attr-defined]


def test_missing_model_name_is_invalid_argument(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "", [IRIS_ROWS[0]]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


# -- other PredictionService methods -----------------------------------------------------------------


def test_regress(server: RunningServer) -> None:
    from tensorflow_serving.apis import regression_pb2

    from tests.savedmodels import example_bytes

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "regression"
    for row in IRIS_ROWS:
        request.input.example_list.examples.add().ParseFromString(example_bytes(row))
    response = _stub(server).Regress(request, timeout=10)  # type: ignore[attr-defined]
    assert [r.value for r in response.result.regressions] == pytest.approx([3.4, 8.4, 10.8], rel=1e-5)
    assert response.model_spec.version.value == 1


def test_regress_on_classify_signature_is_rejected(server: RunningServer) -> None:
    from tensorflow_serving.apis import regression_pb2

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "iris"
    request.input.example_list.examples.add()
    err = rpc_error(lambda: _stub(server).Regress(request, timeout=10))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Expected one output Tensor."  # type: ignore[attr-defined]


def test_predict(server: RunningServer) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "predict"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array(IRIS_ROWS, dtype=np.float32)))
    response = _stub(server).Predict(request, timeout=10)  # type: ignore[attr-defined]
    assert tf.make_ndarray(response.outputs["class_ids"]).tolist() == [0, 1, 2]
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (3, 3)
    assert response.model_spec.signature_name == "predict"


def test_predict_wrong_dtype_and_alias(server: RunningServer) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "predict"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array([["a"] * 4])))
    err = rpc_error(lambda: _stub(server).Predict(request, timeout=10))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Expects arg[0] to be float but string is provided"  # type: ignore[attr-defined]
    request.inputs.clear()
    request.inputs["nope"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 4), np.float32)))
    err = rpc_error(lambda: _stub(server).Predict(request, timeout=10))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details().startswith("input tensor alias not found in signature: nope.")  # type: ignore[attr-defined]


def test_model_metadata(server: RunningServer) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "iris"
    response = _stub(server).GetModelMetadata(request, timeout=10)  # type: ignore[attr-defined]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "classification", "regression", "predict"} <= set(signatures.signature_def)
    assert response.model_spec.version.value == 1
    request.metadata_field[:] = ["other"]
    err = rpc_error(lambda: _stub(server).GetModelMetadata(request, timeout=10))  # type: ignore[attr-defined]
    assert err.details() == "Metadata field other is not supported"  # type: ignore[attr-defined]


def test_empty_multi_inference_names_no_model(server: RunningServer) -> None:
    from tensorflow_serving.apis import inference_pb2

    err = rpc_error(lambda: _stub(server).MultiInference(inference_pb2.MultiInferenceRequest(), timeout=10))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "ModelSpec has no name specified."  # type: ignore[attr-defined]


# -- GetModelStatus ------------------------------------------------------------------------------------


def test_model_status(server: RunningServer) -> None:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    assert model_states(server.channel, "iris") == {1: ("AVAILABLE", 0, "")}
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "iris"
    request.model_spec.version_label = "whatever"  # ignored by GetModelStatus
    assert [s.version for s in stub.GetModelStatus(request, timeout=10).model_version_status] == [1]
    request.model_spec.version.value = 7
    err = rpc_error(lambda: stub.GetModelStatus(request, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert err.details() == "Could not find version 7 of model iris"  # type: ignore[attr-defined]
    request.model_spec.name = "nope"
    request.model_spec.ClearField("version")
    err = rpc_error(lambda: stub.GetModelStatus(request, timeout=10))
    assert err.details() == "Could not find any versions of model nope"  # type: ignore[attr-defined]
    err = rpc_error(lambda: stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=10))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")  # type: ignore[attr-defined]


# -- REST ------------------------------------------------------------------------------------------------

ROWS_JSON = [dict(zip(("SepalLength", "SepalWidth", "PetalLength", "PetalWidth"), r, strict=True)) for r in IRIS_ROWS]


def test_rest_status(server: RunningServer) -> None:
    response = requests.get(f"{server.rest}/v1/models/iris", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert requests.get(f"{server.rest}/v1/models/iris/labels/any", timeout=10).status_code == 200
    missing = requests.get(f"{server.rest}/v1/models/nope", timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"error": "Could not find any versions of model nope"}


def test_rest_classify(server: RunningServer) -> None:
    response = requests.post(f"{server.rest}/v1/models/iris:classify", json={"examples": ROWS_JSON}, timeout=10)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [max(r, key=lambda pair: pair[1])[0] for r in results] == ["0", "1", "2"]
    assert all(len(pair) == 2 and isinstance(pair[0], str) for pair in results[0])
    by_version = requests.post(
        f"{server.rest}/v1/models/iris/versions/1:classify", json={"examples": ROWS_JSON[:1]}, timeout=10
    )
    assert by_version.status_code == 200


def test_rest_classify_int_features_are_int64(server: RunningServer) -> None:
    # 5 (no decimal point) is an int64 feature; the model parses floats, so TF rejects it.
    response = requests.post(
        f"{server.rest}/v1/models/iris:classify",
        json={"examples": [{"SepalLength": 5, "SepalWidth": 3, "PetalLength": 1, "PetalWidth": 0}]},
        timeout=10,
    )
    assert response.status_code == 400
    assert "Data types don't match" in response.json()["error"]


def test_rest_errors(server: RunningServer) -> None:
    url = f"{server.rest}/v1/models/iris:classify"
    malformed = requests.post(url, data=b"{not json", timeout=10)
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("JSON Parse error")
    empty = requests.post(url, json={"examples": []}, timeout=10)
    # json_tensor.cc rejects an empty list before the classifier sees it.
    assert (empty.status_code, empty.json()) == (
        400,
        {"error": "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"},
    )
    label = requests.post(
        f"{server.rest}/v1/models/iris/labels/nope:classify", json={"examples": ROWS_JSON}, timeout=10
    )
    assert (label.status_code, label.json()) == (400, {"error": "Unrecognized servable version label: nope"})
    model = requests.post(f"{server.rest}/v1/models/nope:classify", json={"examples": ROWS_JSON}, timeout=10)
    assert (model.status_code, model.json()) == (404, {"error": "Servable not found for request: Latest(nope)"})
    bad = requests.post(f"{server.rest}/v1/models/iris:frobnicate", json={}, timeout=10)
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == "application/json"
    _still_serving(server)


def test_rest_regress_and_predict(server: RunningServer) -> None:
    regress = requests.post(
        f"{server.rest}/v1/models/iris:regress",
        json={"signature_name": "regression", "examples": ROWS_JSON},
        timeout=10,
    )
    assert regress.status_code == 200, regress.text
    assert regress.json()["results"] == pytest.approx([3.4, 8.4, 10.8], rel=1e-5)
    rows = requests.post(
        f"{server.rest}/v1/models/iris:predict",
        json={"signature_name": "predict", "instances": [list(r) for r in IRIS_ROWS]},
        timeout=10,
    )
    assert rows.status_code == 200, rows.text
    assert [p["class_ids"] for p in rows.json()["predictions"]] == [0, 1, 2]
    columns = requests.post(
        f"{server.rest}/v1/models/iris:predict",
        json={"signature_name": "predict", "inputs": {"features": [list(IRIS_ROWS[1])]}},
        timeout=10,
    )
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"]["class_ids"] == [1]
    both = requests.post(
        f"{server.rest}/v1/models/iris:predict",
        json={"signature_name": "predict", "inputs": [[1.0] * 4], "instances": [[1.0] * 4]},
        timeout=10,
    )
    assert both.status_code == 400


def test_rest_classify_b64_and_context(server: RunningServer) -> None:
    row = dict(ROWS_JSON[2])
    response = requests.post(
        f"{server.rest}/v1/models/iris:classify",
        json={
            "context": {"SepalLength": row.pop("SepalLength"), "tag": {"b64": base64.b64encode(b"\x00x").decode()}},
            "examples": [row],
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert max(response.json()["results"][0], key=lambda pair: pair[1])[0] == "2"


def test_rest_metadata(server: RunningServer) -> None:
    response = requests.get(f"{server.rest}/v1/models/iris/versions/1/metadata", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"]["name"] == "iris"
    assert body["model_spec"]["version"] == "1"
    assert "serving_default" in body["metadata"]["signature_def"]["signature_def"]


def test_prometheus_metrics(server: RunningServer) -> None:
    classify(server.channel, "iris", [IRIS_ROWS[0]])
    text = requests.get(f"{server.rest}/metrics", timeout=10).text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="iris",status="OK"}' in text
    assert 'API="Classify",entrypoint="GRPC"' in text
    assert ":tensorflow:cc:saved_model:load_attempt_count" in text
    assert requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=10).status_code == 404


def test_warmup_was_replayed(server: RunningServer, tmp_path: Path) -> None:
    assert "Number of warmup records read: 1." in server.log()
