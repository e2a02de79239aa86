"""Predict feeds as TF Serving's C++ ``Session::Run`` takes them (issue 13 item 2), on a model built here.

``x`` is declared ``[-1, 1]``. TF Serving does not check a feed against the placeholder's static shape,
so ``x`` fed shape ``[3]`` runs (``y = 0.5 x + 2`` elementwise) and answers ``[3.0, 3.5, 4.0]``; Python's
``Session.run`` refused it client-side ("Cannot feed value of shape (3,)") and the server answered
INTERNAL/500. A feed the graph genuinely cannot run (rank 1 into a MatMul) is the kernel's
INVALID_ARGUMENT → HTTP 400, as in TF Serving, never INTERNAL/500.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests.grpc.conftest import RunningServer, config_text, model_entry, rpc_error

pytestmark = pytest.mark.grpc


def _write_half_plus_two(export_dir: Path) -> None:
    """half_plus_two's graph: ``y = 0.5 x + 2`` on ``x`` [-1, 1]; plus ``matmul``: ``x @ [[1, 2]]``."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 1], name="x")
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        y = tf.add(a * x, b, name="y")
        product = tf.matmul(x, tf.constant([[1.0, 2.0]]), name="product")
        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": build({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "matmul": build({"x": info(x)}, {"product": info(product)}, "tensorflow/serving/predict"),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
            builder.save()


@pytest.fixture(scope="module")
def server(model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    base = tmp_path_factory.mktemp("models") / "half"
    base.mkdir()
    _write_half_plus_two(base / "1")
    return model_server(config_text(model_entry("half", base)))


def _predict(server: RunningServer, values: np.ndarray, signature: str = "") -> object:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel).Predict(request, timeout=10)


def test_grpc_feed_of_another_shape_runs_as_in_cpp_session_run(server: RunningServer) -> None:
    import tensorflow as tf

    response = _predict(server, np.array([2.0, 3.0, 4.0], np.float32))
    y = tf.make_ndarray(response.outputs["y"])  # type: ignore[attr-defined]
    assert (y.shape, y.tolist()) == ((3,), [3.0, 3.5, 4.0])
    declared = _predict(server, np.array([[2.0], [3.0]], np.float32))
    assert tf.make_ndarray(declared.outputs["y"]).tolist() == [[3.0], [3.5]]  # type: ignore[attr-defined]


def test_rest_instances_of_another_shape_run_as_in_tf_serving(server: RunningServer) -> None:
    url = f"{server.rest}/v1/models/half:predict"
    instances = requests.post(url, json={"instances": [2.0, 3.0, 4.0]}, timeout=10)
    assert (instances.status_code, instances.json()) == (200, {"predictions": [3.0, 3.5, 4.0]})
    inputs = requests.post(url, json={"inputs": [2.0, 3.0, 4.0]}, timeout=10)
    assert (inputs.status_code, inputs.json()) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_feed_the_graph_cannot_run_is_invalid_argument_not_internal(server: RunningServer) -> None:
    err = rpc_error(lambda: _predict(server, np.array([2.0, 3.0, 4.0], np.float32), "matmul"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()  # type: ignore[attr-defined]
    rest = requests.post(
        f"{server.rest}/v1/models/half:predict",
        json={"signature_name": "matmul", "instances": [2.0, 3.0, 4.0]},
        timeout=10,
    )
    assert rest.status_code == 400, rest.text
    assert rest.json()["error"]
    ok = requests.post(
        f"{server.rest}/v1/models/half:predict",
        json={"signature_name": "matmul", "instances": [[1.0]]},
        timeout=10,
    )
    assert (ok.status_code, ok.json()) == (200, {"predictions": [[1.0, 2.0]]})
