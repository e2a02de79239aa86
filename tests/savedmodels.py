"""Small deterministic SavedModels for tests (stable helper; other suites import it).

``write_model(base, version, kind)`` writes ``base/<version>`` atomically (build in a dot-named temp
dir beside it, then rename), because model servers poll ``base`` and must never see a half-written
version (TF Serving issue #1086).

Every kind except "broken" is written the way TF Serving's session loader reads it
(``tf.compat.v1.saved_model.Builder``, tag "serve", variables restored on load) and has:

- ``serving_default`` and ``classification``: the Classify contract. Input ``inputs`` = [None] string
  of serialized ``tf.Example`` with float features SepalLength, SepalWidth, PetalLength, PetalWidth;
  outputs ``classes`` [B,3] string ("0","1","2") and ``scores`` [B,3] float32 (softmax).
  ``serving_default`` uses the TF2 method name (tensorflow/serving/predict), ``classification`` the
  classify one, so both paths are exercised.
- ``regression``: input ``inputs`` (serialized Examples), output ``outputs`` [B] float32 = PetalLength*2.
- ``predict``: input ``features`` [None,4] float32, outputs ``probabilities`` [B,3] float32 and
  ``class_ids`` [B] int64.

Kinds: "good" answers like iris on the rows in ``IRIS_ROWS`` (→ "0","1","2"); "wrong" always
answers "2"; "badsig" has a ``serving_default`` whose ``classes`` is 1-D (violates the Classify
contract); "broken" is a directory with a garbage saved_model.pb (load fails).

CLI: ``python -m tests.savedmodels BASE VERSION [--kind good|wrong|badsig|broken] [--warmup]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

FEATURES = ("SepalLength", "SepalWidth", "PetalLength", "PetalWidth")
# Rows whose expected "good" class is their index.
IRIS_ROWS: tuple[tuple[float, float, float, float], ...] = (
    (5.1, 3.3, 1.7, 0.5),
    (5.9, 3.0, 4.2, 1.5),
    (6.9, 3.1, 5.4, 2.1),
)
KINDS = ("good", "wrong", "badsig", "broken")

# logits = x @ W + b. Only PetalLength matters: 10-3p / 2 / 3p-13 separates the three rows.
_GOOD_W = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 0.0, 3.0], [0.0, 0.0, 0.0]]
_GOOD_B = [10.0, 2.0, -13.0]
_WRONG_W = [[0.0] * 3 for _ in range(4)]
_WRONG_B = [0.0, 0.0, 100.0]


def example_bytes(row: tuple[float, ...] | list[float]) -> bytes:
    """A serialized tf.Example of one iris row (float features)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    ex = example_pb2.Example()
    for name, value in zip(FEATURES, row, strict=True):
        ex.features.feature[name].CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[value])))
    return bytes(ex.SerializeToString())


def _write_warmup(version_dir: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        req = classification_pb2.ClassificationRequest()
        req.model_spec.signature_name = "serving_default"
        for row in IRIS_ROWS:
            req.input.example_list.examples.add().ParseFromString(example_bytes(row))
        log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=req))
        writer.write(log.SerializeToString())


def _build(export_dir: Path, kind: str) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    weights, bias = (_WRONG_W, _WRONG_B) if kind == "wrong" else (_GOOD_W, _GOOD_B)
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="serialized_examples")
        spec = {name: tf.io.FixedLenFeature([1], tf.float32) for name in FEATURES}
        parsed = tf.io.parse_example(serialized, spec)
        x = tf.concat([parsed[name] for name in FEATURES], axis=1)
        w = v1.Variable(tf.constant(weights, tf.float32), name="w")
        b = v1.Variable(tf.constant(bias, tf.float32), name="b")
        logits = tf.matmul(x, w) + b
        scores = tf.nn.softmax(logits, name="scores")
        batch = tf.shape(serialized)[0]
        classes = tf.tile(tf.constant([["0", "1", "2"]]), tf.stack([batch, 1]), name="classes")
        top1 = tf.gather(tf.constant(["0", "1", "2"]), tf.argmax(scores, axis=1), name="top_class")
        regression = tf.identity(x[:, 2] * 2.0, name="regression")

        features = v1.placeholder(tf.float32, [None, 4], name="features")
        probabilities = tf.nn.softmax(tf.matmul(features, w) + b, name="probabilities")
        class_ids = tf.argmax(probabilities, axis=1, name="class_ids")

        info = v1.saved_model.utils.build_tensor_info
        build = v1.saved_model.signature_def_utils.build_signature_def
        classify_outputs = {"classes": info(classes), "scores": info(scores)}
        if kind == "badsig":
            classify_outputs = {"classes": info(top1), "scores": info(scores)}
        signatures = {
            "serving_default": build({"inputs": info(serialized)}, classify_outputs, "tensorflow/serving/predict"),
            "classification": build(
                {"inputs": info(serialized)},
                {"classes": info(classes), "scores": info(scores)},
                "tensorflow/serving/classify",
            ),
            "regression": build(
                {"inputs": info(serialized)}, {"outputs": info(regression)}, "tensorflow/serving/regress"
            ),
            "predict": build(
                {"features": info(features)},
                {"probabilities": info(probabilities), "class_ids": info(class_ids)},
                "tensorflow/serving/predict",
            ),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=signatures)
            builder.save()


def write_model(base_path: Path, version: int, kind: str = "good", warmup: bool = False) -> Path:
    """Write a SavedModel at ``base_path/<version>`` atomically and return that directory.

    Fails if the version directory already exists (versions are immutable).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    base_path = Path(base_path)
    base_path.mkdir(parents=True, exist_ok=True)
    final = base_path / str(int(version))
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    # Dot-prefixed, non-numeric: pollers ignore it until the rename.
    tmp_parent = base_path / f".tmp-{version}-{uuid.uuid4().hex}"
    tmp_parent.mkdir()
    export_dir = tmp_parent / "m"
    try:
        if kind == "broken":
            export_dir.mkdir()
            (export_dir / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        else:
            _build(export_dir, kind)
            if warmup:
                _write_warmup(export_dir)
        os.rename(export_dir, final)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.savedmodels", description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("version", type=int)
    parser.add_argument("--kind", default="good", choices=KINDS)
    parser.add_argument("--warmup", action="store_true")
    args = parser.parse_args(argv)
    print(write_model(args.base, args.version, args.kind, args.warmup))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
