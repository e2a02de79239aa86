"""Training, exporting and local prediction: the only place the CLI side touches TensorFlow.

TensorFlow (and Keras) are imported inside the functions that need them, so importing this module
is cheap: other modules may import its dataclasses and TF-free helpers freely.

The exported signature is the one of the model's API (deployer.apis): Classify (one input ``inputs``,
serialized tf.Examples; outputs ``classes`` [B, K] DT_STRING and ``scores`` [B, K] DT_FLOAT), Regress
(``inputs`` → ``outputs`` [B] DT_FLOAT) or Predict (the manifest's named tensors). The API's piece
wraps the trainer's Keras model; it is written with Keras' ``ExportArchive`` because a ``tf.Module``
wrapping a Keras 3 model, saved with ``tf.saved_model.save``, fails the session-based loader TF Serving
uses ("Could not find variable").
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployer import __version__, apis, safe_io, store, tf_noise
from deployer.apis import examples, request_builder
from deployer.apis.base import Api, Batch
from deployer.errors import InputDataError, StoreError, TrainerError
from deployer.manifest import FLOAT32_MAX, Manifest, ModelSpec
from deployer.trainer import Progress, TrainResult, load_trainer, run_trainer

# TF Serving reads at most this many warmup records.
MAX_WARMUP_RECORDS = 1000
MAX_PUBLISH_ATTEMPTS = 5
# `predict --input` reads at most this much: rows for an in-process prediction, not a data set.
MAX_INPUT_BYTES = 64 * 1024 * 1024

Row = dict[str, Any]


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
                "scores": self.scores}  # fmt: skip


# ---- tf.Example (no TensorFlow import) -------------------------------------------------------
def serialize_examples(rows: Sequence[Row], feature_names: Sequence[str]) -> list[bytes]:
    """Serialized tf.Examples of float features (the iris-era helper; typed rows go through deployer.apis)."""
    model = ModelSpec.model_validate(
        {"name": "rows", "base_path": ".", "api": "classify", "features": [{"name": n} for n in feature_names]}
    )
    return examples.serialize(model, rows)


# ---- export ----------------------------------------------------------------------------------
def trainer_api(model: ModelSpec) -> Api:
    api = model.declared_api
    if api is None:  # the manifest refuses a trainer without an API; a hand-built ModelSpec may lack it
        raise TrainerError(f"model {model.name}: a trainer-built model needs models[].api")
    return apis.piece(api)


def write_saved_model(keras_model: Any, model: ModelSpec, dest: Path) -> None:
    """Write ``keras_model`` wrapped in its API's signature as a SavedModel at ``dest`` (must not exist)."""
    import keras

    function, input_signature = trainer_api(model).export_function(keras_model, model)
    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(name=model.signature_name, fn=function, input_signature=input_signature)
    archive.write_out(str(dest), verbose=False)


def write_warmup(dest: Path, model: ModelSpec, api: Api) -> Path | None:
    """``assets.extra/tf_serving_warmup_requests``: PredictionLogs of the model's API from the smoke cases."""
    import tensorflow as tf

    records = request_builder.warmup_records(api, model)[:MAX_WARMUP_RECORDS]
    path = dest / store.ASSETS_EXTRA / store.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def write_metadata(dest: Path, metadata: dict[str, Any]) -> Path:
    path = dest / store.ASSETS_EXTRA / store.METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(path, 0o644)
    return path


def publish_version(
    tmp_dir: Path, base_path: Path, version: int, metadata: dict[str, Any], *, now: float | None, fixed: bool
) -> tuple[int, Path]:
    """Write the metadata and publish ``tmp_dir`` as ``version``, atomically. When another exporter takes
    the number meanwhile, move to the next one, unless the caller asked for exactly this ``version``."""
    for _attempt in range(MAX_PUBLISH_ATTEMPTS):
        metadata["version"] = version
        write_metadata(tmp_dir, metadata)
        try:
            return version, store.publish(tmp_dir, base_path, version)
        except store.VersionExists:
            if fixed:
                raise StoreError(
                    f"version {version} already exists under {base_path}; versions are never overwritten",
                    hint="choose another --version, or leave it out to take the next free one",
                ) from None
            version = store.allocate_version(base_path, now)
    raise StoreError(f"could not publish under {base_path}: every allocated version was taken")


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
    tf_noise.import_tensorflow()
    started = time.perf_counter()
    api = trainer_api(model)
    base_path = manifest.base_path(model)
    store.ensure_base_path(base_path)
    store.remove_stale_temp_dirs(base_path)
    version = store.allocate_version(base_path, now)
    tmp_dir = store.make_temp_dir(base_path, version)
    try:
        write_saved_model(keras_model, model, tmp_dir)
        write_warmup(tmp_dir, model, api)
        created = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
        metadata: dict[str, Any] = {
            "model": model.name,
            "version": version,
            "created_at": created.isoformat(timespec="seconds"),
            "source": "trainer",
            "api": api.name,
            "metrics": metrics,
            "data_hash": data_hash,
            "deployer_version": __version__,
            "features": model.feature_names,
            "classes": model.class_names,
            "inputs": [t.model_dump() for t in model.inputs or []],
            "signature_name": model.signature_name,
            "trainer": model.trainer,
            "seconds_train": round(seconds_train, 3),
        }
        if extra:
            metadata["training"] = extra
        version, path = publish_version(tmp_dir, base_path, version, metadata, now=now, fixed=False)
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
    if model.trainer is None:
        raise TrainerError(
            f"model {model.name} has no trainer (its source is {model.source.replace('_', ' ')})",
            hint="`deployer import` publishes a SavedModel built elsewhere; `deployer up` serves what is there",
        )
    store.ensure_base_path(manifest.base_path(model))
    # Trainer modules usually import TensorFlow: start it here, with its C++ start-up chatter filtered.
    tf_noise.import_tensorflow()
    load_trainer(manifest, model)


def train_and_export(
    manifest: Manifest, model: ModelSpec, *, now: float | None = None, progress: Progress | None = None
) -> ExportResult:
    """Run the manifest's trainer and export its model as the next version.

    ``progress`` receives the trainer's reports (epochs, loss) as one-line messages."""
    preflight(manifest, model)
    started = time.perf_counter()
    result: TrainResult = run_trainer(manifest, model, progress=progress)
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
@dataclass(frozen=True)
class LocalAnswer:
    api: Api
    answer: Any

    def to_json(self) -> list[dict[str, Any]]:
        return self.api.to_json(self.answer)


def run_local(path: Path, model: ModelSpec, batch: Batch) -> LocalAnswer:
    """Run ``batch`` through the version's signature in-process, loaded as TF Serving loads it."""
    from deployer.local_run import LocalModel

    tf_noise.import_tensorflow()
    sig = store.find_signature(path, model)
    api = apis.resolve(model, sig)
    with LocalModel(path) as loaded:
        return LocalAnswer(api, api.run_local(model, loaded.caller(sig), sig, batch))


def predict_local(path: Path, model: ModelSpec, rows: Sequence[Row]) -> list[Prediction]:
    """Classify ``rows`` in-process (the classify-era helper the seed-parity tests use)."""
    answer = run_local(path, model, list(rows))
    return [
        Prediction(features=dict(row), class_id=item["class"], probability=item["probability"], scores=item["scores"])
        for row, item in zip(rows, answer.to_json(), strict=True)
    ]


# ---- prediction input ------------------------------------------------------------------------
_FEATURE_INPUT_HINT = (
    "a predict model takes --input FILE.json in TF Serving's REST format: "
    '{"instances": [...]} (row) or {"inputs": ...} (columnar)'
)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _value(value: Any, dtype: str, where: str) -> Any:
    """One feature value from a CSV cell, a NAME=VALUE pair or JSON, as its dtype's Python value.

    A float feature travels as float32: 1e39 is finite here and inf in the model, so it is refused."""
    if dtype == "string":
        if not isinstance(value, str):
            raise InputDataError(f"{where}: {_shown(value)} is not a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputDataError(f"{where}: {_shown(value)} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise InputDataError(f"{where}: {_shown(value)} is not a number") from None
    except OverflowError:  # an int with hundreds of digits
        raise InputDataError(f"{where}: {_shown(value)} is too large for the feature's {dtype}") from None
    if not math.isfinite(number):
        raise InputDataError(f"{where}: {_shown(value)} is not a finite number")
    if dtype == "int":
        if not number.is_integer():
            raise InputDataError(f"{where}: {_shown(value)} is not an integer")
        integer = int(value) if isinstance(value, int) else int(number)
        if not -(2**63) <= integer < 2**63:
            raise InputDataError(f"{where}: {_shown(value)} does not fit in int64")
        return integer
    if abs(number) > FLOAT32_MAX:
        raise InputDataError(f"{where}: {_shown(value)} is outside the float32 range of the model's features")
    return number


def _read_input(path: Path) -> str:
    """The text of a prediction input file: a regular file (a FIFO would hang, /dev/zero never end), bounded."""
    try:
        return safe_io.read_user_text(path, MAX_INPUT_BYTES)
    except safe_io.UserFileError as exc:
        if exc.missing:
            raise InputDataError(f"input file not found: {path}") from None
        if exc.too_large:
            raise InputDataError(f"{path} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB") from None
        raise InputDataError(f"cannot read {path}: {exc.reason}") from None


def _row(record: dict[str, Any], model: ModelSpec, where: str) -> Row:
    missing = [name for name in model.feature_names if name not in record]
    if missing:
        raise InputDataError(f"{where}: missing feature {', '.join(repr(m) for m in missing)}")
    return {f.name: _value(record[f.name], f.dtype, f"{where}: {f.name}") for f in model.features or []}


def _feature_model(model: ModelSpec) -> None:
    if model.features is None:
        raise InputDataError(f"model {model.name} has no tf.Example features", hint=_FEATURE_INPUT_HINT)


def rows_from_csv(path: Path, model: ModelSpec) -> list[Row]:
    """Rows of a CSV with a header; columns other than the features are ignored."""
    _feature_model(model)
    feature_names = model.feature_names
    text = _read_input(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [name for name in feature_names if name not in header]
        if missing:
            raise InputDataError(
                f"{path}: missing feature column {', '.join(repr(m) for m in missing)}",
                hint=f"the header must name the features: {', '.join(feature_names)}",
            )
        rows = [_row(record, model, f"{path} line {reader.line_num}") for record in reader]
    except csv.Error as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise InputDataError(f"{path}: no data rows")
    return rows


def _read_json(path: Path) -> Any:
    text = _read_input(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputDataError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        # The JSON parser recurses once per nesting level; a model input needs a handful.
        raise InputDataError(f"cannot read {path}: nested too deeply") from None


def rows_from_json(data: Any, model: ModelSpec, where: str) -> list[Row]:
    """TF Serving's REST classify/regress body ``{"examples": [...]}``, or an object, a list of objects,
    or ``{"instances": [objects]}``."""
    if isinstance(data, dict):
        context = data.get("context", {}) if "examples" in data else {}
        for key in ("examples", "instances"):
            if key in data:
                data = data[key]
                break
        else:
            data = [data]
        if not isinstance(context, dict):
            raise InputDataError(f"{where}: context must be a JSON object")
        if isinstance(data, list):
            data = [{**context, **r} if isinstance(r, dict) else r for r in data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputDataError(f"{where}: expected a JSON object or a list of objects")
    if not data:
        raise InputDataError(f"{where}: no rows")
    return [_row(record, model, f"{where} row {i}") for i, record in enumerate(data)]


def batch_from_file(path: Path, model: ModelSpec, api: Api) -> tuple[Batch, list[Row] | None]:
    """``--input``: CSV or JSON rows for a tf.Example API, TF Serving's REST request JSON for any API.
    Returns the API's batch and, for tf.Example features, the typed rows."""
    suffix = path.suffix.lower()
    rows: list[Row] | None = None
    if suffix == ".csv":
        rows = rows_from_csv(path, model)
    elif suffix == ".json":
        doc = _read_json(path)
        if model.features is not None:
            rows = rows_from_json(doc, model, str(path))
    else:
        raise InputDataError(f"{path}: unsupported input file type {suffix or '(none)'!r}; use .csv or .json")
    try:
        return api.batch_from_rest(model, doc if rows is None else {"examples": rows}, str(path)), rows
    except ValueError as exc:
        raise InputDataError(str(exc)) from None


def batch_from_pairs(pairs: Sequence[str], model: ModelSpec, api: Api) -> tuple[Batch, list[Row]]:
    """One row from ``NAME=VALUE`` strings (``--example``)."""
    _feature_model(model)
    feature_names = model.feature_names
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
        dtype = next(f.dtype for f in model.features or [] if f.name == name)
        record[name] = value if dtype == "string" else value.strip()
    row = _row(record, model, "--example")
    try:
        return api.batch_from_rest(model, {"examples": [row]}, "--example"), [row]
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
