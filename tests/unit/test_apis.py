"""The API pieces without a server or TensorFlow: requests, REST bodies, answers, judgements, diffs,
contracts and warmup records for Classify, Regress and Predict."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from deployer import apis
from deployer.apis import request_builder, tensors
from deployer.apis.predict import PredictBatch
from deployer.errors import StoreError
from deployer.manifest import ModelSpec
from deployer.store import SignatureInfo, TensorInfo


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "base_path": "x", **fields})


REGRESS = spec(
    api="regress",
    features=[{"name": "age", "dtype": "int"}, {"name": "bmi"}, {"name": "tag", "dtype": "string"}],
    smoke=[{"features": {"age": 50, "bmi": 21, "tag": ["a", "b"]}, "expect_value": 100.0, "tolerance": 5}],
)
PREDICT = spec(
    inputs=[{"name": "image", "dtype": "float32", "shape": [-1, 2]}, {"name": "mask", "dtype": "bool", "shape": [-1]}],
    outputs=[{"name": "p", "dtype": "float32", "shape": [-1, 3]}],
    smoke=[{"inputs": {"image": [1, 2], "mask": True}, "expect": {"p": {"argmax": 2}}}],
)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("float32", [[1.5, -2.0]]), ("float64", [1e-300]), ("int32", [[-(2**31)]]), ("int64", [2**62, -3]),
     ("string", [["é", ""]]), ("bool", [True, False])],
)  # fmt: skip
def test_tensor_protos_round_trip_without_tensorflow(dtype: str, value: Any) -> None:
    array = tensors.as_array(value, dtype, "x")
    back = tensors.from_tensor_proto(tensors.to_tensor_proto(array, dtype))
    assert back.shape == array.shape and back.tolist() == array.tolist()


def test_tensor_protos_match_tensorflow() -> None:
    code = (
        "import numpy as np, tensorflow as tf\n"
        "from deployer.apis import tensors\n"
        "for dtype, value in [('float32', [[1.5, 2]]), ('int64', [3, 4]), ('string', [['a']]), ('bool', [True])]:\n"
        "    a = tensors.as_array(value, dtype, 'x')\n"
        "    assert tf.make_ndarray(tensors.to_tensor_proto(a, dtype)).tolist() == a.tolist(), dtype\n"
        "    assert tensors.from_tensor_proto(tf.make_tensor_proto(a)).tolist() == a.tolist(), dtype\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_regress_request_types_features_and_judges_with_tolerance() -> None:
    api = apis.piece("regress")
    case = REGRESS.smoke[0]
    request = request_builder.grpc_request(api, REGRESS, api.case_batch(REGRESS, case), request_builder.Target(3))
    feature = request.input.example_list.examples[0].features.feature
    assert list(feature["age"].int64_list.value) == [50] and list(feature["bmi"].float_list.value) == [21.0]
    assert list(feature["tag"].bytes_list.value) == [b"a", b"b"]
    assert request.model_spec.version.value == 3 and request.model_spec.signature_name == "serving_default"
    body = request_builder.rest_body(api, REGRESS, api.case_batch(REGRESS, case))
    assert body["examples"] == [{"age": 50, "bmi": 21.0, "tag": ["a", "b"]}]
    assert isinstance(body["examples"][0]["bmi"], float)  # a JSON int would become int64_list
    assert api.judge(REGRESS, case, [104.9]).passed
    verdict = api.judge(REGRESS, case, [105.2])
    assert not verdict.passed and verdict.reason == "expected 100 ± 5, got 105.2 (off by 5.2)"
    diff = api.diff("c", [100.0], [103.5])
    assert (diff.changed, diff.delta) == (False, 3.5)
    assert request_builder.rest_url(api, "http://h:1/", "m", request_builder.Target(label="s")) == (
        "http://h:1/v1/models/m/labels/s:regress"
    )


def test_predict_request_rest_body_judge_and_diff() -> None:
    api = apis.piece("predict")
    case = PREDICT.smoke[0]
    batch = api.case_batch(PREDICT, case)
    request = request_builder.grpc_request(api, PREDICT, batch, request_builder.Target(label="stable"))
    assert tensors.from_tensor_proto(request.inputs["image"]).tolist() == [[1.0, 2.0]]
    assert tensors.from_tensor_proto(request.inputs["mask"]).tolist() == [True]
    assert request_builder.rest_body(api, PREDICT, batch)["instances"] == [{"image": [1.0, 2.0], "mask": True}]
    good = {"p": np.array([[0.1, 0.2, 0.7]], np.float32)}
    assert api.judge(PREDICT, case, good).passed
    wrong = api.judge(PREDICT, case, {"p": np.array([[0.8, 0.1, 0.1]], np.float32)})
    assert not wrong.passed and wrong.reason == "output 'p': expected argmax 2, got 0"
    # Over REST a single output comes back unnamed: the declared output name is used.
    assert api.parse_rest(PREDICT, case, {"predictions": [[0.1, 0.2, 0.7]]})["p"].tolist() == [[0.1, 0.2, 0.7]]
    diff = api.diff("c", good, {"p": np.array([[0.6, 0.3, 0.1]], np.float32)})
    assert diff.changed and diff.delta == pytest.approx(0.6)
    assert diff.details["outputs"]["p"]["argmax_changed"] is True


def test_predict_rest_formats_row_and_columnar() -> None:
    api = apis.piece("predict")
    row = api.batch_from_rest(PREDICT, {"instances": [{"image": [1, 2], "mask": True}] * 2}, "f")
    columnar = api.batch_from_rest(PREDICT, {"inputs": {"image": [[1, 2], [3, 4]], "mask": [True, False]}}, "f")
    assert isinstance(row, PredictBatch) and row.size == 2 and columnar.arrays["image"].shape == (2, 2)
    for doc, message in [
        ({"instances": [{"image": [1, 2]}]}, "missing input(s) mask"),
        ({"inputs": {"image": [[1, 2]], "mask": [True, False]}}, "different batch sizes"),
        ({"instances": [], "inputs": {}}, "exactly one of"),
        ({"instances": [{"image": [1, 2, 3], "mask": True}]}, "one instance must have shape [2]"),
    ]:
        with pytest.raises(ValueError) as info:
            api.batch_from_rest(PREDICT, doc, "f")
        assert message in str(info.value) and str(info.value).startswith("f: ")


def _sig(method: str, inputs: dict[str, tuple[str, list[int]]], outputs: dict[str, tuple[str, list[int]]]) -> Any:
    return SignatureInfo(
        "serving_default", method,
        [TensorInfo(k, d, s, f"{k}:0") for k, (d, s) in inputs.items()],
        [TensorInfo(k, d, s, f"{k}:0") for k, (d, s) in outputs.items()],
    )  # fmt: skip


def test_contracts_and_the_method_name_default() -> None:
    regress = _sig("tensorflow/serving/regress", {"inputs": ("DT_STRING", [-1])}, {"outputs": ("DT_FLOAT", [-1, 1])})
    undeclared = spec(features=[{"name": "x"}])
    assert apis.resolve(undeclared, regress).name == "regress"
    apis.piece("regress").check_contract(regress, undeclared)
    with pytest.raises(StoreError, match="names no TF Serving API"):
        apis.resolve(undeclared, _sig("", {}, {}))
    predict_sig = _sig(
        "tensorflow/serving/predict",
        {"image": ("DT_FLOAT", [-1, 2]), "mask": ("DT_BOOL", [-1])},
        {"p": ("DT_FLOAT", [-1, 3])},
    )
    apis.piece("predict").check_contract(predict_sig, PREDICT)
    bad = _sig("tensorflow/serving/predict", {"image": ("DT_DOUBLE", [-1, 2]), "mask": ("DT_BOOL", [-1])}, {})
    with pytest.raises(StoreError, match="input 'image' is DT_DOUBLE, the manifest declares float32"):
        apis.piece("predict").check_contract(bad, PREDICT)


def test_warmup_records_use_each_apis_log() -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    for model, field, count in ((REGRESS, "regress_log", 1), (PREDICT, "predict_log", 1)):
        api = apis.resolve(model)
        records = request_builder.warmup_records(api, model)
        logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in records]
        assert len(logs) == count and all(log.WhichOneof("log_type") == field for log in logs)
