"""Issue 13 items whose environment is the image: TF Text's ops inside it (item 6) and gRPC over a unix
socket published from it (item 3).

Containers are made the way tests/docker/test_model_server_image.py makes them (its fixtures are reused:
the image's entrypoint, uid 10001, read-only root, pytest's temp directory mounted read-only at the
identical path). The socket test adds one writable directory, mounted at its host path, for the socket.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from docker.errors import DockerException

from tests.docker.test_model_server_image import (  # noqa: F401  (fixtures)
    TEST_LABEL,
    ContainerServer,
    _Docker,
    docker_env,
    model_server,
)
from tests.faithful_models import write_half_plus_two, write_tf_text_model
from tests.grpc.conftest import config_text, model_entry, model_states

pytestmark = pytest.mark.docker


def _predict(channel: grpc.Channel, model: str, alias: str, value: np.ndarray) -> object:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


class TestImageFaithful:
    def test_tf_text_model_loads_in_the_image(
        self,
        model_server: Callable[..., ContainerServer],  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        import tensorflow as tf

        base = tmp_path_factory.mktemp("image-text") / "text"
        write_tf_text_model(base, "1")
        server = model_server(config_text(model_entry("text", base)))
        response = _predict(server.channel, "text", "text", np.array([b"a b c", b"tf text"], dtype=object))
        assert tf.make_ndarray(response.outputs["tokens"]).tolist() == [3, 2]  # type: ignore[attr-defined]

    def test_grpc_over_a_unix_socket_from_the_image(
        self,
        docker_env: _Docker,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory,
    ) -> None:
        import tensorflow as tf

        base = tmp_path_factory.mktemp("image-sock-model") / "hp2"
        write_half_plus_two(base, "00000007")
        sockets = tmp_path_factory.mktemp("image-sock")
        sockets.chmod(0o777)  # the server runs as uid 10001
        sock = sockets / "grpc.sock"
        docker_env.open_shared()
        container = docker_env.client.containers.create(
            docker_env.image,
            # After the entrypoint's flags, so they win: no TCP port, only the socket.
            command=["--port=0", f"--grpc_socket_path={sock}", "--rest_api_port=0", f"--model_base_path={base}"],
            name=f"dt-msf-{uuid.uuid4().hex[:10]}",
            labels={TEST_LABEL: docker_env.run_id},
            volumes={
                str(docker_env.shared): {"bind": str(docker_env.shared), "mode": "ro"},
                str(sockets): {"bind": str(sockets), "mode": "rw"},
            },
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": ""},
        )
        try:
            container.start()
            with grpc.insecure_channel(f"unix:{sock}") as channel:
                deadline = time.monotonic() + 120
                while True:
                    container.reload()
                    logs = bytes(container.logs()).decode(errors="replace")
                    assert container.status == "running", logs[-3000:]
                    try:
                        grpc.channel_ready_future(channel).result(timeout=1)
                        break
                    except grpc.FutureTimeoutError:
                        assert time.monotonic() < deadline, logs[-3000:]
                assert model_states(channel, "model") == {7: ("AVAILABLE", 0, "")}
                response = _predict(channel, "model", "x", np.array([[2.0]], np.float32))
                assert tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0]]  # type: ignore[attr-defined]
            logs = bytes(container.logs()).decode(errors="replace")
            assert f"Running gRPC ModelServer at UNIX socket {sock}" in logs
            assert "Running gRPC ModelServer at 0.0.0.0" not in logs
        finally:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
