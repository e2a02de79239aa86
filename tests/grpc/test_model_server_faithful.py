"""Faithfulness to tensorflow_model_server (issue 13, issue 8 item 8) on models the tests build themselves.

One shared server serves a half_plus_two-style SavedModel from a zero-padded version directory under
three version policies, a TF Text model and a TFLite model (``--prefer_tflite_model``), on a TCP port
and a unix socket. Expected texts come from TF Serving's sources (file named beside each test).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests.faithful_models import write_half_plus_two, write_tf_text_model, write_tflite_model
from tests.grpc.conftest import (
    RunningServer,
    config_text,
    model_entry,
    model_states,
    rpc_error,
    run_to_exit,
    server_command,
    server_env,
    wait_for,
)

pytestmark = pytest.mark.grpc

PADDED = "00000123"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faithful")
    write_half_plus_two(root / "hp2", PADDED)
    for junk in ("²", "99999999999999999999", "latest", ".tmp-9"):
        (root / "hp2" / junk).mkdir()
    write_tf_text_model(root / "text", "1")
    write_tflite_model(root / "lite", "1")
    write_tflite_model(root / "lite_sigs", "1", with_saved_model=False, signature_defs=True)
    return root


@pytest.fixture(scope="module")
def server(model_server: Callable[..., RunningServer], root: Path) -> RunningServer:
    config = config_text(
        model_entry("hp2_latest", root / "hp2"),
        model_entry("hp2_all", root / "hp2", "all {}"),
        model_entry("hp2_specific", root / "hp2", "specific { versions: 123 }"),
        model_entry("text", root / "text"),
        model_entry("lite", root / "lite"),
        model_entry("lite_sigs", root / "lite_sigs"),
    )
    return model_server(config, "--prefer_tflite_model", f"--grpc_socket_path={root / 'grpc.sock'}")


def _stub(channel: grpc.Channel) -> object:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict(channel: grpc.Channel, model: str, inputs: dict[str, np.ndarray], signature: str = "") -> object:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return _stub(channel).Predict(request, timeout=20)  # type: ignore[attr-defined]


def _example(**features: float) -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)
    return bytes(example.SerializeToString())


# -- item 1: zero-padded version directories (file_system_storage_path_source.cc) ----------------------


@pytest.mark.parametrize("model", ["hp2_latest", "hp2_all", "hp2_specific"])
def test_zero_padded_version_is_served_from_the_directory_as_found(server: RunningServer, model: str) -> None:
    import tensorflow as tf

    # "²", a number beyond int64 and "latest" beside it are not versions: ignored, never fatal.
    assert model_states(server.channel, model) == {123: ("AVAILABLE", 0, "")}
    response = _predict(server.channel, model, {"x": np.array([[1.0], [3.0]], np.float32)})
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5], [3.5]]  # type: ignore[attr-defined]
    assert response.model_spec.version.value == 123  # type: ignore[attr-defined]


# -- item 3: --grpc_socket_path (server.cc AddListeningPort("unix:" + path)) -----------------------------


def test_grpc_is_served_on_the_unix_socket_too(server: RunningServer, root: Path) -> None:
    import tensorflow as tf

    with grpc.insecure_channel(f"unix:{root / 'grpc.sock'}") as channel:
        response = _predict(channel, "hp2_latest", {"x": np.array([[4.0]], np.float32)})
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]  # type: ignore[attr-defined]
    assert "Running gRPC ModelServer at UNIX socket" in server.log()


def test_port_zero_serves_only_the_unix_socket(root: Path, tmp_path: Path) -> None:
    sock = tmp_path / "only.sock"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            server_command(
                "--port=0", f"--grpc_socket_path={sock}", "--model_name=hp2", f"--model_base_path={root / 'hp2'}"
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(),
        )
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    break
                except grpc.FutureTimeoutError:
                    assert time.monotonic() < deadline, log.read_text()
            assert model_states(channel, "hp2") == {123: ("AVAILABLE", 0, "")}
        assert "Running gRPC ModelServer at UNIX socket" in log.read_text()
        assert "Running gRPC ModelServer at 127.0.0.1" not in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_port_zero_without_a_socket_path_is_refused() -> None:
    result = run_to_exit("--port=0", "--model_base_path=/nowhere", timeout=60)
    assert result.returncode == 255
    assert result.stdout == (
        "Failed to start server. Error: INVALID_ARGUMENT: At least one of server_options.grpc_port or "
        "server_options.grpc_socket_path must be set.\n"
    )


# -- item 4: MultiInference (multi_inference.cc) ---------------------------------------------------------


def _multi(*tasks: tuple[str, str, str], examples: tuple[bytes, ...] = ()) -> object:
    from tensorflow_serving.apis import inference_pb2

    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    for raw in examples or (_example(x=1.0), _example(x=3.0, x2=2.0)):
        request.input.example_list.examples.add().ParseFromString(raw)
    return request


CLASSIFY, REGRESS, PREDICT = "tensorflow/serving/classify", "tensorflow/serving/regress", "tensorflow/serving/predict"


def test_multi_inference_runs_classify_and_regress_tasks_on_one_input(server: RunningServer) -> None:
    request = _multi(
        ("hp2_latest", "classify_x_to_y", CLASSIFY),
        ("hp2_latest", "regress_x_to_y2", REGRESS),
        ("hp2_latest", "classify_x2_to_y3", CLASSIFY),
    )
    response = _stub(server.channel).MultiInference(request, timeout=20)  # type: ignore[attr-defined]
    first, second, third = response.results
    assert [[c.score for c in cl.classes] for cl in first.classification_result.classifications] == [[2.5], [3.5]]
    assert [r.value for r in second.regression_result.regressions] == [3.5, 4.5]
    assert [[c.score for c in cl.classes] for cl in third.classification_result.classifications] == [[3.0], [4.0]]
    assert (second.model_spec.name, second.model_spec.version.value, second.model_spec.signature_name) == (
        "hp2_latest",
        123,
        "regress_x_to_y2",
    )


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        (
            [("hp2_latest", "classify_x_to_y", CLASSIFY), ("hp2_all", "regress_x_to_y", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            [("hp2_latest", "regress_x_to_y", REGRESS), ("hp2_latest", "regress_x_to_y", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("hp2_latest", "regress_x_to_y", REGRESS), ("", "classify_x_to_y", CLASSIFY)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Found ModelSpec with an empty model name.",
        ),
        (
            [("hp2_latest", "nope", REGRESS)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            [("hp2_latest", "serving_default", PREDICT)],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            [("nope", "regress_x_to_y", REGRESS)],
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
    ],
)
def test_multi_inference_validation(
    server: RunningServer, tasks: list[tuple[str, str, str]], code: grpc.StatusCode, message: str
) -> None:
    err = rpc_error(lambda: _stub(server.channel).MultiInference(_multi(*tasks), timeout=20))  # type: ignore[attr-defined]
    assert (err.code(), err.details()) == (code, message)  # type: ignore[attr-defined]


def test_multi_inference_checks_each_signature_for_its_method(server: RunningServer) -> None:
    # serving_default is a predict signature: the classification preprocessing refuses it.
    err = rpc_error(
        lambda: _stub(server.channel).MultiInference(  # type: ignore[attr-defined]
            _multi(("hp2_latest", "", CLASSIFY)), timeout=20
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details().startswith('No classification inputs found in SignatureDef: inputs {\n  key: "x"')  # type: ignore[attr-defined]


# -- item 5: REST metadata printed with always_print_fields_with_no_presence (http_rest_api_util.cc) ----


def test_rest_metadata_prints_fields_with_no_presence(server: RunningServer) -> None:
    response = requests.get(f"{server.rest}/v1/models/hp2_latest/metadata", timeout=20)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": "hp2_latest", "signature_name": "", "version": "123"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature == {
        "inputs": {
            "x": {
                "name": "x:0",
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
            }
        },
        "outputs": {
            "y": {
                "name": "y:0",
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
            }
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }


# -- item 6: TF Text ops are registered before models load -----------------------------------------------


def test_tf_text_model_loads_and_predicts(server: RunningServer) -> None:
    import tensorflow as tf

    response = _predict(server.channel, "text", {"text": np.array([b"hello tf text", b"one"], dtype=object)})
    assert tf.make_ndarray(response.outputs["tokens"]).tolist() == [3, 1]  # type: ignore[attr-defined]


# -- item 7: --prefer_tflite_model (saved_model_bundle_factory.cc, tflite_session.cc) --------------------


def test_prefer_tflite_model_serves_model_tflite(server: RunningServer) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "lite"
    metadata = _stub(server.channel).GetModelMetadata(request, timeout=20)  # type: ignore[attr-defined]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    # The generated signature, not the SavedModel's (which has classify_x_to_y etc.).
    assert list(signatures.signature_def) == ["serving_default"]
    generated = signatures.signature_def["serving_default"]
    assert generated.method_name == "tensorflow/serving/predict"
    assert (
        list(generated.inputs),
        generated.inputs["x"].name,
        [d.size for d in generated.inputs["x"].tensor_shape.dim],
    ) == (
        ["x"],
        "x",
        [1, 1],
    )
    (output,) = generated.outputs
    response = _predict(server.channel, "lite", {"x": np.array([[3.0]], np.float32)})
    assert tf.make_ndarray(response.outputs[output]).tolist() == [[3.5]]  # type: ignore[attr-defined]
    # A differently shaped feed resizes the interpreter's input (ResizeInputTensor).
    response = _predict(server.channel, "lite", {"x": np.array([[1.0], [2.0]], np.float32)})
    assert tf.make_ndarray(response.outputs[output]).tolist() == [[2.5], [3.0]]  # type: ignore[attr-defined]


def test_tflite_signature_defs_metadata_is_used(server: RunningServer) -> None:
    import tensorflow as tf

    # tflite::GetSignatureDefMap: the stored SignatureDefs, their TF-style names resolved to TFLite's.
    response = _predict(server.channel, "lite_sigs", {"x": np.array([[4.0]], np.float32)}, "half")
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]  # type: ignore[attr-defined]
    rest = requests.post(
        f"{server.rest}/v1/models/lite_sigs:predict", json={"signature_name": "half", "instances": [[0.0]]}, timeout=20
    )
    assert rest.json() == {"predictions": [[2.0]]}
    err = rpc_error(lambda: _predict(server.channel, "lite_sigs", {"x": np.ones((1, 1), np.float32)}))
    assert err.details() == 'Serving signature key "serving_default" not found.'  # type: ignore[attr-defined]


# -- item 8: the profiler service on the gRPC port ------------------------------------------------------------


def test_tf_profiler_client_can_trace_the_server(server: RunningServer, tmp_path: Path) -> None:
    import tensorflow as tf

    logdir = tmp_path / "tb"
    tf.profiler.experimental.client.trace(f"grpc://{server.target}", str(logdir), 300)
    traces = list((logdir / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_one_profiling_session_at_a_time_and_terminate_ends_it(server: RunningServer) -> None:
    import threading

    from deployer.model_server.profiler import SERVICE, ProfilerService

    messages = ProfilerService().messages
    profile = server.channel.unary_unary(
        f"/{SERVICE}/Profile",
        request_serializer=messages["ProfileRequest"].SerializeToString,
        response_deserializer=messages["ProfileResponse"].FromString,
    )
    terminate = server.channel.unary_unary(
        f"/{SERVICE}/Terminate",
        request_serializer=messages["TerminateRequest"].SerializeToString,
        response_deserializer=messages["TerminateResponse"].FromString,
    )
    results: list[object] = []
    started = time.monotonic()
    long = threading.Thread(
        target=lambda: results.append(
            profile(messages["ProfileRequest"](duration_ms=60_000, session_id="long", emit_xspace=True), timeout=90)
        )
    )
    long.start()
    try:
        wait_for(lambda: "Profiling session 'long' started" in server.log(), what="the first session")
        err = rpc_error(lambda: profile(messages["ProfileRequest"](duration_ms=100), timeout=30))
        assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "Another profiling session active.")  # type: ignore[attr-defined]
    finally:
        terminate(messages["TerminateRequest"](session_id="long"), timeout=10)
        long.join(60)
    assert time.monotonic() - started < 45
    (response,) = results
    assert response.xspace and not response.empty_trace  # type: ignore[attr-defined]


# -- item 9: an unparsable --model_config_file (util/proto_util.h ParseProtoTextFile) ---------------------


def test_unparsable_model_config_file_error_text(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n  bogus: 1\n}\n")
    result = run_to_exit(f"--model_config_file={config}", "--port=1", timeout=120)
    assert result.returncode == 255
    assert result.stdout == f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{config}'\n"
    assert (
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 2:3: Message type "
        '"tensorflow.serving.ModelConfigList" has no field named "bogus".'
    ) in result.stderr


# -- issue 8 item 8: Classify/Regress/Predict over gRPC and REST ---------------------------------------------


def test_classify_on_a_predict_signature_is_tf_servings_error(server: RunningServer) -> None:
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "hp2_latest"
    classify.input.example_list.examples.add().ParseFromString(_example(x=1.0))
    err = rpc_error(lambda: _stub(server.channel).Classify(classify, timeout=20))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details().startswith('No classification inputs found in SignatureDef: inputs {\n  key: "x"\n')  # type: ignore[attr-defined]
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "hp2_latest"
    regress.input.CopyFrom(classify.input)
    err = rpc_error(lambda: _stub(server.channel).Regress(regress, timeout=20))  # type: ignore[attr-defined]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details().startswith("No regression inputs found in SignatureDef: ")  # type: ignore[attr-defined]
    rest = requests.post(f"{server.rest}/v1/models/hp2_latest:classify", json={"examples": [{"x": 1.0}]}, timeout=20)
    assert rest.status_code == 400
    assert rest.json()["error"].startswith("No classification inputs found in SignatureDef: ")


def test_grpc_classify_and_regress_signatures(server: RunningServer) -> None:
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "hp2_latest"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().ParseFromString(_example(x=2.0))
    response = _stub(server.channel).Classify(classify, timeout=20)  # type: ignore[attr-defined]
    assert [c.score for c in response.result.classifications[0].classes] == [3.0]
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "hp2_latest"
    regress.model_spec.signature_name = "regress_x_to_y2"
    regress.input.CopyFrom(classify.input)
    response = _stub(server.channel).Regress(regress, timeout=20)  # type: ignore[attr-defined]
    assert [r.value for r in response.result.regressions] == [4.0]
    assert response.model_spec.signature_name == "regress_x_to_y2"


def test_rest_classify_regress_and_context(server: RunningServer) -> None:
    url = f"{server.rest}/v1/models/hp2_latest"
    classify = requests.post(
        f"{url}:classify",
        json={"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": [3.0]}]},
        timeout=20,
    )
    assert classify.status_code == 200, classify.text
    assert classify.json() == {"results": [[["", 2.5]], [["", 3.5]]]}
    regress = requests.post(
        f"{url}:regress", json={"signature_name": "regress_x_to_y2", "examples": [{"x": 1.0}]}, timeout=20
    )
    assert regress.status_code == 200, regress.text
    assert regress.json() == {"results": [3.5]}
    # The context's features reach every example (example_list_with_context).
    context = requests.post(
        f"{url}:classify",
        json={"signature_name": "classify_x2_to_y3", "context": {"x2": 5.0}, "examples": [{"x": 1.0}, {"x": 2.0}]},
        timeout=20,
    )
    assert context.status_code == 200, context.text
    assert context.json() == {"results": [[["", 5.5]], [["", 5.5]]]}


def test_rest_predict_row_and_columnar_formats(server: RunningServer) -> None:
    url = f"{server.rest}/v1/models/hp2_latest:predict"
    rows = requests.post(url, json={"instances": [[1.0], [2.0]]}, timeout=20)
    assert rows.status_code == 200, rows.text
    assert rows.json() == {"predictions": [[2.5], [3.0]]}
    assert "3.0" in rows.text  # WriteDecimal keeps whole floats floats
    named = requests.post(url, json={"instances": [{"x": [1.0]}, {"x": [5.0]}]}, timeout=20)
    assert named.json() == {"predictions": [[2.5], [4.5]]}
    columns = requests.post(url, json={"inputs": {"x": [[1.0], [2.0]]}}, timeout=20)
    assert columns.json() == {"outputs": [[2.5], [3.0]]}
    plain = requests.post(url, json={"inputs": [[7.0]]}, timeout=20)
    assert plain.json() == {"outputs": [[5.5]]}


def test_rest_predict_b64_strings_and_bytes_outputs(server: RunningServer) -> None:
    url = f"{server.rest}/v1/models/hp2_latest:predict"
    body = {"signature_name": "echo_bytes", "instances": [{"b64": "AAE="}, "plain"]}
    response = requests.post(url, json=body, timeout=20)
    assert response.status_code == 200, response.text
    # Outputs named *_bytes come back base64-encoded.
    assert response.json() == {"predictions": [{"b64": "AAE="}, {"b64": "cGxhaW4="}]}
    columnar = requests.post(
        url, json={"signature_name": "echo_bytes", "inputs": {"text": [{"b64": "/w=="}]}}, timeout=20
    )
    assert columnar.json() == {"outputs": [{"b64": "/w=="}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"signature_name": 1, "instances": [[1.0]]},
            "not formatted correctly. 'signature_name' key must be a string value.",
        ),
        ({"signature_name": "nope", "instances": [[1.0]]}, 'Serving signature name: "nope" not found in signature def'),
        (
            {"instances": [[1.0]], "inputs": [[1.0]]},
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        ({"instances": []}, "No values in 'instances' array"),
        ({"instances": {"x": 1}}, "Expecting 'instances' to be an list/array"),
        ({}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [["a"]]}, 'JSON Value: "a" Type: String is not of expected type: float'),
        (
            {"instances": [[1.0], [1.0, 2.0]]},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 1 but got: 2",
        ),
        (
            {"instances": [{"x": [1.0]}, {"y": [1.0]}]},
            "Failed to process element: 1 key: y of 'instances' list. Error: INVALID_ARGUMENT: "
            "JSON object: does not have named input: y",
        ),
        ({"inputs": {"y": [[1.0]]}}, "Missing named input: x in 'inputs' object."),
        ({"inputs": [[1.0], [[2.0]]]}, "Encountered list at unexpected level: 2 expected < 2"),
    ],
)
def test_rest_predict_request_errors(server: RunningServer, body: dict[str, object], message: str) -> None:
    response = requests.post(f"{server.rest}/v1/models/hp2_latest:predict", json=body, timeout=20)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [1.0]}, None),
        ({"examples": [[1.0]]}, "Example must be JSON object but got JSON Array"),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"examples": [{"x": [1.0, "a"]}]}, "Unexpected element type in feature: x expecting type: float"),
        ({"examples": [{"x": 2**63}]}, "Feature: x has uint64_t element. Only int64_t is supported."),
        ({"examples": "x"}, "Expecting 'examples' value to be an list/array"),
    ],
)
def test_rest_classify_request_errors(server: RunningServer, body: dict[str, object], message: str | None) -> None:
    response = requests.post(
        f"{server.rest}/v1/models/hp2_latest:classify", json={"signature_name": "classify_x_to_y", **body}, timeout=20
    )
    assert response.status_code == 400, response.text
    if message is None:
        assert response.json()["error"].endswith(
            "When method is classify, key 'examples' is expected and was not found"
        )
    else:
        assert message in response.json()["error"]


@pytest.mark.parametrize("method", ["Classify", "Regress", "Predict"])
def test_requests_without_a_model_spec_are_invalid(server: RunningServer, method: str) -> None:
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2

    request = {
        "Classify": classification_pb2.ClassificationRequest,
        "Regress": regression_pb2.RegressionRequest,
        "Predict": predict_pb2.PredictRequest,
    }[method]()
    err = rpc_error(lambda: getattr(_stub(server.channel), method)(request, timeout=20))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")  # type: ignore[attr-defined]


def test_grpc_predict_unknown_signature_is_failed_precondition(server: RunningServer) -> None:
    err = rpc_error(lambda: _predict(server.channel, "hp2_latest", {"x": np.ones((1, 1), np.float32)}, "nope"))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )  # type: ignore[attr-defined]


def test_rest_paths_decode_names_and_check_versions(server: RunningServer) -> None:
    encoded = requests.get(f"{server.rest}/v1/models/hp2%5Flatest", timeout=20)
    assert encoded.status_code == 200, encoded.text
    assert json.loads(encoded.text)["model_version_status"][0]["version"] == "123"
    missing = requests.get(f"{server.rest}/v1/models", timeout=20)
    assert (missing.status_code, missing.json()) == (400, {"error": "Missing model name in request."})


def test_server_survived(server: RunningServer) -> None:
    assert server.alive()
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=5):
        pass
