"""Models for the faithfulness tests, built by the tests themselves (TF Serving's own kinds of test data).

- ``write_half_plus_two(base, dirname)``: TF Serving's ``saved_model_half_plus_two`` in spirit, written with
  the TF1 builder (tag "serve") into ``base/dirname`` (e.g. ``00000123``). ``y = 0.5 x + 2`` and
  ``y2 = 0.5 x + 3``; signatures:

  - ``serving_default`` (predict): input ``x`` [-1, 1] float32 → output ``y``;
  - ``classify_x_to_y`` (classify): ``inputs`` (serialized tf.Example with float feature ``x``) → ``scores`` = y;
  - ``regress_x_to_y`` / ``regress_x_to_y2`` (regress): ``inputs`` → ``outputs`` = y / y2;
  - ``classify_x2_to_y3`` (classify): same examples, a different output tensor;
  - ``regress_bytes`` (predict): input ``text`` [-1] string → output ``length_bytes`` (the text, as bytes).

- ``write_tf_text_model(base, dirname)``: a TF1 SavedModel whose graph uses TF Text's
  ``WhitespaceTokenizeWithOffsetsV2``-family op, so loading it needs TF Text's ops registered:
  input ``text`` [-1] string → output ``tokens`` [-1] int64 (tokens per string).
- ``write_tflite_model(base, dirname, with_saved_model)``: ``model.tflite`` computing ``y = 0.5 x + 2`` on
  ``x`` [1, 1] float32 (converted with TF's own converter), optionally beside the half_plus_two SavedModel
  whose ``y`` is ``0.5 x + 2`` too but whose signatures differ, so a test can tell which one served.

Each writer builds in a hidden temporary directory beside the target and renames it into place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def _atomic(base: Path, dirname: str, build: Callable[[Path], None]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    final = base / dirname
    tmp_parent = base / f".tmp-{uuid.uuid4().hex}"
    tmp_parent.mkdir()
    try:
        export_dir = tmp_parent / "m"
        build(export_dir)
        os.rename(export_dir, final)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return final


def _half_plus_two(export_dir: Path) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(
            serialized,
            {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(parsed["x"], name="x")
        x2 = tf.identity(parsed["x2"], name="x2")
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        y = tf.add(a * x, b, name="y")
        y2 = tf.add(a * x, c, name="y2")
        y3 = tf.add(a * x2, c, name="y3")
        text = v1.placeholder(tf.string, [None], name="text")
        echo = tf.identity(text, name="echo")

        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        classify, regress, predict = (
            "tensorflow/serving/classify",
            "tensorflow/serving/regress",
            "tensorflow/serving/predict",
        )
        signatures = {
            "serving_default": build({"x": info(x)}, {"y": info(y)}, predict),
            "classify_x_to_y": build({"inputs": info(serialized)}, {"scores": info(y)}, classify),
            "regress_x_to_y": build({"inputs": info(serialized)}, {"outputs": info(y)}, regress),
            "regress_x_to_y2": build({"inputs": info(serialized)}, {"outputs": info(y2)}, regress),
            "classify_x2_to_y3": build({"inputs": info(serialized)}, {"scores": info(y3)}, classify),
            "echo_bytes": build({"text": info(text)}, {"text_bytes": info(echo)}, predict),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
            builder.save()


def write_half_plus_two(base: Path, dirname: str) -> Path:
    return _atomic(Path(base), dirname, _half_plus_two)


def _tf_text(export_dir: Path) -> None:
    import tensorflow as tf
    import tensorflow_text as text

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        sentences = v1.placeholder(tf.string, [None], name="text")
        tokens = text.WhitespaceTokenizer().tokenize(sentences)
        counts = tf.identity(tokens.row_lengths(), name="tokens")
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {"text": info(sentences)}, {"tokens": info(counts)}, "tensorflow/serving/predict"
        )
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
            builder.save()


def write_tf_text_model(base: Path, dirname: str) -> Path:
    return _atomic(Path(base), dirname, _tf_text)


def tflite_half_plus_two() -> bytes:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 1], tf.float32, name="x")])
    def half_plus_two(x: tf.Tensor) -> tf.Tensor:
        return tf.add(tf.multiply(x, 0.5), 2.0, name="y")

    converter = tf.lite.TFLiteConverter.from_concrete_functions([half_plus_two.get_concrete_function()])
    return bytes(converter.convert())


def with_signature_defs_metadata(flatbuffer: bytes) -> bytes:
    """The model with ``signature_defs_metadata`` as tflite::SetSignatureDefMap writes it: signature
    ``half`` (predict) mapping ``x`` -> ``x:0`` (a TF-style name, resolved by the legacy-name fallback)
    and ``y`` -> the model's output tensor."""
    import tensorflow as tf
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow.lite.tools import flatbuffer_utils

    output = tf.lite.Interpreter(model_content=flatbuffer).get_output_details()[0]["name"]
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].name = "x:0"
    signature.inputs["x"].dtype = tf.float32.as_datatype_enum
    signature.outputs["y"].name = output
    signature.outputs["y"].dtype = tf.float32.as_datatype_enum
    builder = flexbuffers.Builder()
    with builder.Map():
        builder.Key("half")
        builder.String(signature.SerializeToString().decode("latin-1"))
    data = builder.Finish()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = list(data)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = "signature_defs_metadata"
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def write_tflite_model(
    base: Path, dirname: str, *, with_saved_model: bool = True, signature_defs: bool = False
) -> Path:
    flatbuffer = tflite_half_plus_two()
    if signature_defs:
        flatbuffer = with_signature_defs_metadata(flatbuffer)

    def build(export_dir: Path) -> None:
        if with_saved_model:
            _half_plus_two(export_dir)
        else:
            export_dir.mkdir()
        (export_dir / "model.tflite").write_bytes(flatbuffer)

    return _atomic(Path(base), dirname, build)
