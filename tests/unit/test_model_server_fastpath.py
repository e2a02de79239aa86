"""Pure pieces of the server's fast path: request tensor sizing, channel arguments, the batch scheduler."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from deployer.model_server.batching import BatchScheduler
from deployer.model_server.config import BatchingParameters
from deployer.model_server.grpc_api import max_request_bytes, parse_channel_arguments
from deployer.model_server.limits import MAX_REQUEST_BYTES
from deployer.model_server.status import ServingError
from deployer.model_server.tensors import MAX_FILL_BYTES, array_from_proto, element_count


def _proto(dims: Sequence[int], dtype: int = types_pb2.DT_FLOAT, **fields: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)  # type: ignore[arg-type]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def test_element_count_follows_tensorshape_validity() -> None:
    assert element_count("x", _proto([3, 4])) == 12
    assert element_count("x", _proto([])) == 1
    assert element_count("x", _proto([0, 2**40])) == 0
    for bad in ([-1], [2**40, 2**40]):
        with pytest.raises(ServingError, match="tensor parsing error: x"):
            element_count("x", _proto(bad))
    unknown = _proto([])
    unknown.tensor_shape.unknown_rank = True
    with pytest.raises(ServingError):
        element_count("x", unknown)


def test_values_filled_in_as_tf_does_up_to_the_fill_limit() -> None:
    assert array_from_proto("x", _proto([3], float_val=[5.0])).tolist() == [5.0, 5.0, 5.0]
    assert array_from_proto("x", _proto([2, 2], float_val=[1, 2, 3, 4])).tolist() == [[1, 2], [3, 4]]
    assert array_from_proto("x", _proto([2], dtype=types_pb2.DT_STRING, string_val=[b"a", b"b"])).tolist() == [
        b"a",
        b"b",
    ]
    at_limit = MAX_FILL_BYTES // 4
    assert array_from_proto("x", _proto([at_limit], float_val=[1.0])).shape == (at_limit,)
    with pytest.raises(ServingError, match=r"tensor parsing error: x \(shape holds"):
        array_from_proto("x", _proto([at_limit + 1], float_val=[1.0]))
    with pytest.raises(ServingError, match=r"tensor parsing error: x \(shape holds"):
        array_from_proto("x", _proto([2**25, 4], float_val=[1.0]))


def test_tensor_content_must_hold_exactly_the_shape() -> None:
    data = np.arange(6, dtype=np.float32)
    assert array_from_proto("x", _proto([2, 3], tensor_content=data.tobytes())).shape == (2, 3)
    with pytest.raises(ServingError, match="tensor_content holds 24 bytes"):
        array_from_proto("x", _proto([2**30, 3], tensor_content=data.tobytes()))


def test_channel_arguments_as_tf_serving_reads_them() -> None:
    args = parse_channel_arguments("grpc.max_receive_message_length=1000,grpc.primary_user_agent=x,,junk")
    assert args == [("grpc.max_receive_message_length", 1000), ("grpc.primary_user_agent", "x")]
    assert max_request_bytes(args) == 1000
    assert max_request_bytes([]) == MAX_REQUEST_BYTES


# -- the batch scheduler -----------------------------------------------------------------------------


def _scheduler(runs: list[tuple[int, int]], **params: int) -> BatchScheduler:
    def run(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        runs.append((threading.get_ident(), int(feeds[0].shape[0])))
        time.sleep(0.05)
        return [feeds[0] * 2]

    return BatchScheduler(BatchingParameters(**params), run, "test")


def test_a_lone_request_runs_at_once_in_its_own_thread() -> None:
    runs: list[tuple[int, int]] = []
    scheduler = _scheduler(runs, max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1)
    started = time.monotonic()
    (out,) = scheduler.submit([np.array([1.0, 2.0])])
    assert out.tolist() == [2.0, 4.0]
    assert runs == [(threading.get_ident(), 2)]  # no hand-off to a batch thread
    assert time.monotonic() - started < 1


def test_concurrent_requests_are_batched_and_split_back() -> None:
    runs: list[tuple[int, int]] = []
    scheduler = _scheduler(runs, max_batch_size=4, batch_timeout_micros=2_000_000, num_batch_threads=1)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: scheduler.submit([np.array([float(i)])])[0].tolist(), range(4)))
    assert outs == [[0.0], [2.0], [4.0], [6.0]]
    assert [size for _, size in runs] == [4]  # one full batch, not four runs, well before the 2 s timeout


def test_num_batch_threads_bounds_concurrent_batches() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def run(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return [feeds[0]]

    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=2), run, "t"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: scheduler.submit([np.array([i])]), range(16)))
    assert most == 2


def test_a_failed_batch_fails_every_request_in_it() -> None:
    def run(feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.05)
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "boom")

    scheduler = BatchScheduler(BatchingParameters(max_batch_size=2, batch_timeout_micros=1_000_000), run, "t")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(scheduler.submit, [np.array([1.0])]) for _ in range(2)]
        for future in futures:
            with pytest.raises(ServingError, match="boom"):
                future.result(timeout=10)


def test_unloading_lets_runs_in_flight_finish(tmp_path: Path) -> None:
    """A request queued (here: in a batch window) when its version is unloaded is answered, not cancelled."""
    from tensorflow_serving.apis import input_pb2

    from deployer.model_server.servable import Servable
    from tests.savedmodels import IRIS_ROWS, example_bytes, write_model

    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=3_000_000, num_batch_threads=1)
    servable = Servable("iris", 1, str(write_model(tmp_path / "iris", 1)), batching=params)
    request = input_pb2.Input()
    request.example_list.examples.add().ParseFromString(example_bytes(IRIS_ROWS[2]))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(servable.classify, "", request)
        time.sleep(0.3)  # queued, waiting out the batch window
        servable.close()
        classes, scores = pending.result(timeout=30)
    assert classes is not None and scores is not None
    assert classes[0][int(np.argmax(scores[0]))] == b"2"
    with pytest.raises(ServingError) as info:
        servable.classify("", request)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
