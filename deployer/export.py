"""Training, exporting and local prediction: the only place the CLI side touches TensorFlow.

TensorFlow (and Keras) are imported inside the functions that need them, so importing this module
is cheap: other modules may import its dataclasses and TF-free helpers freely.

The exported ``serving_default`` signature is TF Serving's Classify contract: one input ``inputs``,
a 1-D DT_STRING batch of serialized ``tf.Example``; outputs ``classes`` [B, K] DT_STRING (the class
labels, tiled per row) and ``scores`` [B, K] DT_FLOAT. It is written with Keras'
``ExportArchive`` because a ``tf.Module`` wrapping a Keras 3 model, saved with
``tf.saved_model.save``, fails the session-based loader TF Serving uses ("Could not find variable").
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployer import __version__, store
from deployer.errors import InputDataError, StoreError, TrainerError
from deployer.manifest import Manifest, ModelSpec
from deployer.protos import tf_proto
from deployer.trainer import TrainResult, load_trainer, run_trainer

# TF Serving reads at most this many warmup records.
MAX_WARMUP_RECORDS = 1000
MAX_PUBLISH_ATTEMPTS = 5

Row = dict[str, float]


@dataclass(frozen=True)
class ExportResult:
    model: str
    version: int
    path: Path
    metrics: dict[str, float]
    seconds_train: float
    seconds_export: float

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "path": str(self.path),
            "metrics": self.metrics,
            "seconds_train": round(self.seconds_train, 3),
            "seconds_export": round(self.seconds_export, 3),
        }


@dataclass(frozen=True)
class Prediction:
    features: Row
    class_id: str
    probability: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "class": self.class_id, "probability": self.probability,
                "scores": self.scores}


# ---- tf.Example (no TensorFlow import) -------------------------------------------------------
def make_example(row: Row, feature_names: Sequence[str]) -> Any:
    """A ``tf.train.Example`` with one float per feature."""
    example_pb2 = tf_proto("tensorflow.core.example.example_pb2")
    example = example_pb2.Example()
    for name in feature_names:
        example.features.feature[name].float_list.value.append(float(row[name]))
    return example


def serialize_examples(rows: Sequence[Row], feature_names: Sequence[str]) -> list[bytes]:
    return [make_example(row, feature_names).SerializeToString() for row in rows]


# ---- export ----------------------------------------------------------------------------------
def _check_model_shape(keras_model: Any, model: ModelSpec) -> None:
    """The trainer contract: float32 [B, n_features] → [B, n_classes]. Checked before anything is written."""
    import numpy as np

    n_features, n_classes = len(model.features), len(model.classes)
    try:
        probe = keras_model(np.zeros((2, n_features), dtype=np.float32), training=False)
        shape = tuple(int(d) for d in probe.shape)
    except Exception as exc:  # any failure here means the trainer broke the contract
        raise TrainerError(
            f"trainer {model.trainer!r}: its model does not accept float32 [batch, {n_features}]: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if shape != (2, n_classes):
        raise TrainerError(
            f"trainer {model.trainer!r}: its model maps [2, {n_features}] to {list(shape)}, expected [2, {n_classes}]"
        )


def write_saved_model(keras_model: Any, model: ModelSpec, dest: Path) -> None:
    """Write ``keras_model`` wrapped in the Classify signature as a SavedModel at ``dest`` (must not exist)."""
    import keras
    import tensorflow as tf

    _check_model_shape(keras_model, model)
    feature_names = model.feature_names
    feature_spec = {name: tf.io.FixedLenFeature([], tf.float32) for name in feature_names}
    class_row = tf.constant([model.classes], dtype=tf.string)

    def classify(inputs: Any) -> dict[str, Any]:
        parsed = tf.io.parse_example(inputs, feature_spec)
        features = tf.stack([parsed[name] for name in feature_names], axis=1)
        scores = tf.cast(keras_model(features, training=False), tf.float32)
        classes = tf.tile(class_row, [tf.shape(inputs)[0], 1])
        return {store.CLASSIFY_CLASSES: classes, store.CLASSIFY_SCORES: scores}

    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(
        name=model.signature_name,
        fn=classify,
        input_signature=[tf.TensorSpec([None], tf.string, name=store.CLASSIFY_INPUT)],
    )
    archive.write_out(str(dest), verbose=False)


def warmup_rows(model: ModelSpec) -> list[Row]:
    """The smoke cases' features (a zero row if there are none): known-good inputs for TF Serving's warmup."""
    rows = [dict(case.features) for case in model.smoke]
    return rows or [dict.fromkeys(model.feature_names, 0.0)]


def write_warmup(dest: Path, model: ModelSpec, rows: Sequence[Row]) -> Path:
    """``assets.extra/tf_serving_warmup_requests``: one Classify PredictionLog with every row."""
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model.name
    request.model_spec.signature_name = model.signature_name
    request.input.example_list.examples.extend(make_example(row, model.feature_names) for row in rows)
    records = [prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))]
    path = dest / store.ASSETS_EXTRA / store.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records[:MAX_WARMUP_RECORDS]:
            writer.write(record.SerializeToString())
    return path


def write_metadata(dest: Path, metadata: dict[str, Any]) -> Path:
    path = dest / store.ASSETS_EXTRA / store.METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def export_model(
    keras_model: Any,
    manifest: Manifest,
    model: ModelSpec,
    *,
    metrics: dict[str, float],
    data_hash: str,
    extra: dict[str, Any] | None = None,
    now: float | None = None,
    seconds_train: float = 0.0,
) -> ExportResult:
    """Export an already-built Keras model as the next version of ``model``, atomically."""
    started = time.perf_counter()
    base_path = manifest.base_path(model)
    store.ensure_base_path(base_path)
    store.remove_stale_temp_dirs(base_path)
    version = store.allocate_version(base_path, now)
    tmp_dir = store.make_temp_dir(base_path, version)
    try:
        write_saved_model(keras_model, model, tmp_dir)
        write_warmup(tmp_dir, model, warmup_rows(model))
        created = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
        metadata: dict[str, Any] = {
            "model": model.name,
            "version": version,
            "created_at": created.isoformat(timespec="seconds"),
            "metrics": metrics,
            "data_hash": data_hash,
            "deployer_version": __version__,
            "features": model.feature_names,
            "classes": list(model.classes),
            "signature_name": model.signature_name,
            "trainer": model.trainer,
            "seconds_train": round(seconds_train, 3),
        }
        if extra:
            metadata["training"] = extra
        write_metadata(tmp_dir, metadata)
        # A concurrent exporter may take our number between allocation and rename: move to the next.
        for _attempt in range(MAX_PUBLISH_ATTEMPTS):
            try:
                path = store.publish(tmp_dir, base_path, version)
                break
            except store.VersionExists:
                version = store.allocate_version(base_path, now)
                metadata["version"] = version
                write_metadata(tmp_dir, metadata)
        else:
            raise StoreError(f"could not publish under {base_path}: every allocated version was taken")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return ExportResult(
        model=model.name,
        version=version,
        path=path,
        metrics=metrics,
        seconds_train=seconds_train,
        seconds_export=time.perf_counter() - started,
    )


def preflight(manifest: Manifest, model: ModelSpec) -> None:
    """The cheap checks (base path writable, trainer importable) that should fail before any training."""
    store.ensure_base_path(manifest.base_path(model))
    load_trainer(manifest, model)


def train_and_export(manifest: Manifest, model: ModelSpec, *, now: float | None = None) -> ExportResult:
    """Run the manifest's trainer and export its model as the next version."""
    preflight(manifest, model)
    started = time.perf_counter()
    result: TrainResult = run_trainer(manifest, model)
    seconds_train = time.perf_counter() - started
    return export_model(
        result.model,
        manifest,
        model,
        metrics=result.metrics,
        data_hash=result.data_hash,
        extra=result.extra,
        now=now,
        seconds_train=seconds_train,
    )


# ---- local prediction ------------------------------------------------------------------------
def predict_local(path: Path, model: ModelSpec, rows: Sequence[Row]) -> list[Prediction]:
    """Run ``rows`` through the exported signature in-process, as serialized tf.Examples."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures[model.signature_name]
    outputs = signature(**{store.CLASSIFY_INPUT: tf.constant(serialize_examples(rows, model.feature_names))})
    classes = outputs[store.CLASSIFY_CLASSES].numpy()
    scores = outputs[store.CLASSIFY_SCORES].numpy()
    predictions = []
    for row, row_classes, row_scores in zip(rows, classes, scores, strict=True):
        labels = [c.decode() for c in row_classes]
        best = int(row_scores.argmax())
        predictions.append(
            Prediction(
                features=dict(row),
                class_id=labels[best],
                probability=float(row_scores[best]),
                scores={label: float(s) for label, s in zip(labels, row_scores, strict=True)},
            )
        )
    return predictions


# ---- prediction input ------------------------------------------------------------------------
def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputDataError(f"{where}: {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise InputDataError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InputDataError(f"{where}: {value!r} is not a finite number")
    return number


def _row(record: dict[str, Any], feature_names: Sequence[str], where: str) -> Row:
    missing = [name for name in feature_names if name not in record]
    if missing:
        raise InputDataError(f"{where}: missing feature {', '.join(repr(m) for m in missing)}")
    return {name: _number(record[name], f"{where}: {name}") for name in feature_names}


def rows_from_csv(path: Path, feature_names: Sequence[str]) -> list[Row]:
    """Rows of a CSV with a header; columns other than the features are ignored."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [name for name in feature_names if name not in header]
            if missing:
                raise InputDataError(
                    f"{path}: missing feature column {', '.join(repr(m) for m in missing)}",
                    hint=f"the header must name the features: {', '.join(feature_names)}",
                )
            rows = [_row(record, feature_names, f"{path} line {reader.line_num}") for record in reader]
    except FileNotFoundError:
        raise InputDataError(f"input file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise InputDataError(f"{path}: no data rows")
    return rows


def rows_from_json(path: Path, feature_names: Sequence[str]) -> list[Row]:
    """A JSON object, a list of objects, or ``{"instances"|"examples": [objects]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError(f"input file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict):
        for key in ("instances", "examples"):
            if key in data:
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputDataError(f"{path}: expected a JSON object or a list of objects")
    if not data:
        raise InputDataError(f"{path}: no rows")
    return [_row(record, feature_names, f"{path} row {i}") for i, record in enumerate(data)]


def rows_from_file(path: Path, feature_names: Sequence[str]) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return rows_from_csv(path, feature_names)
    if suffix == ".json":
        return rows_from_json(path, feature_names)
    raise InputDataError(f"{path}: unsupported input file type {suffix or '(none)'!r}; use .csv or .json")


def row_from_pairs(pairs: Sequence[str], feature_names: Sequence[str]) -> Row:
    """One row from ``NAME=VALUE`` strings (``--example``)."""
    record: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputDataError(f"--example {pair!r}: expected NAME=VALUE")
        if name not in feature_names:
            raise InputDataError(
                f"--example {pair!r}: unknown feature {name!r}", hint=f"features: {', '.join(feature_names)}"
            )
        if name in record:
            raise InputDataError(f"--example: feature {name!r} given twice")
        record[name] = value.strip()
    return _row(record, feature_names, "--example")
