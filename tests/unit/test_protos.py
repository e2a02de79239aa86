"""The light proto loader must never import TensorFlow, yet stay compatible with a later real import."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    return result.stdout.strip().splitlines()[-1]


def test_client_and_server_config_import_without_tensorflow() -> None:
    out = _run(
        """
        import sys
        import deployer.client, deployer.server_config
        from tensorflow_serving.apis import prediction_log_pb2, model_service_pb2_grpc
        print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.python")))
        """
    )
    assert out == "[]"


def test_real_tensorflow_import_afterwards_shares_message_classes() -> None:
    out = _run(
        """
        from deployer.client import build_example
        example = build_example({"x": 1.5})
        import tensorflow as tf
        print(type(example) is tf.train.Example, tf.train.Example.FromString(example.SerializeToString()) == example)
        """
    )
    assert out == "True True"


def test_tf_proto_loads_saved_model_proto_without_tensorflow() -> None:
    out = _run(
        """
        import sys
        from deployer.protos import tf_proto
        module = tf_proto("tensorflow.core.protobuf.saved_model_pb2")
        print(module.SavedModel.DESCRIPTOR.full_name, "tensorflow.python" in sys.modules)
        """
    )
    assert out == "tensorflow.SavedModel False"
