"""--enable_batching: merged runs split back correctly, TF Serving's limits and messages."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tests.grpc.conftest import RunningServer, classify, rpc_error, top_classes
from tests.savedmodels import IRIS_ROWS, write_model

pytestmark = pytest.mark.grpc


@pytest.fixture(scope="module")
def server(model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root: Path = tmp_path_factory.mktemp("models")
    write_model(root / "clf", 1, "good")
    params = root / "batching.config"
    # A wide batch window: the queue-full test needs three requests queued before the first batch runs,
    # which a loaded CI machine must not turn into a race.
    params.write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 2000000 }\n"
        "max_enqueued_batches { value: 2 }\nnum_batch_threads { value: 1 }\n"
    )
    return model_server(
        None,
        "--model_name=clf",
        f"--model_base_path={root / 'clf'}",
        "--enable_batching",
        f"--batching_parameters_file={params}",
        rest=False,
    )


def test_concurrent_requests_are_answered_individually(server: RunningServer) -> None:
    rows = [IRIS_ROWS[i % 3] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda row: top_classes(classify(server.channel, "clf", [row])), rows))
    assert answers == [[str(i % 3)] for i in range(4)]


def test_request_larger_than_max_batch_size_is_invalid(server: RunningServer) -> None:
    err = rpc_error(lambda: classify(server.channel, "clf", [IRIS_ROWS[0]] * 5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert err.details() == "Task size 5 is larger than maximum input batch size 4"  # type: ignore[attr-defined]
    assert top_classes(classify(server.channel, "clf", list(IRIS_ROWS))) == ["0", "1", "2"]


def test_full_queue_is_unavailable(server: RunningServer) -> None:
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc

    from tests.savedmodels import example_bytes

    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "clf"
    for row in IRIS_ROWS:
        request.input.example_list.examples.add().ParseFromString(example_bytes(row))
    # Each 3-row task needs its own batch (max 4 rows); two batches may wait, the third is refused.
    # The calls are concurrent and their arrival order is not the sending order, so which one is
    # refused is up to the network: exactly one of the three must be.
    calls = [stub.Classify.future(request, timeout=10) for _ in range(3)]
    refused = [call for call in calls if call.exception() is not None]
    answered = [call for call in calls if call.exception() is None]
    assert len(refused) == 1, [call.exception() for call in calls]
    err = refused[0].exception()
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "The batch scheduling queue to which this task was submitted is full"
    assert [top_classes(call.result()) for call in answered] == [["0", "1", "2"], ["0", "1", "2"]]
