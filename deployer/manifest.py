"""The manifest: a YAML file validated with pydantic; every error names its field path.

Relative paths in a manifest resolve against ``project_root``, which itself resolves against the
manifest file's directory (default: that directory). The trainer module is imported with
``project_root`` on ``sys.path``.

This module checks the *shape* of every field (types, bounds, unknown keys). What a field means for
one TF Serving API (which fields a classify, regress or predict model needs, what its smoke cases
expect) is checked by that API's piece in :mod:`deployer.apis`, called from here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployer.errors import ManifestError

# The production default stays the real server, pinned (TFX users were bitten by `latest`).
DEFAULT_IMAGE = "tensorflow/serving:2.19.1"
DEFAULT_LABEL = "stable"

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# A tensor alias in a SignatureDef: TF Serving accepts any string; we accept what Keras and TF write.
_ALIAS = r"^[A-Za-z_][A-Za-z0-9_./-]*$"
# Bounds of numeric smoke fields: finite and far beyond any real model output, so a typo is caught.
_BIG = 1e15
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_LIST_VALUES = 10_000
MAX_INSTANCE_VALUES = 1_000_000

ApiName = Literal["classify", "regress", "predict"]
FeatureDtype = Literal["float", "int", "string"]
TensorDtype = Literal["float32", "float64", "int32", "int64", "string", "bool"]
# TF Serving's REST API matches labels with [^/:]+ but documents [a-zA-Z0-9_]+; we accept the documented set.
_LABEL = r"^[A-Za-z0-9_]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """A tf.Example feature of a classify/regress model: float → float_list, int → int64_list, string → bytes_list."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    dtype: FeatureDtype = "float"


class TensorSpec(_Strict):
    """One input or output of a predict signature. ``shape`` includes the batch dimension (``-1``)."""

    name: Annotated[str, Field(pattern=_ALIAS, max_length=200)]
    dtype: TensorDtype
    shape: Annotated[list[Annotated[int, Field(ge=-1, le=MAX_DIM)]], Field(min_length=1, max_length=MAX_RANK)]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if shape[0] not in (-1, 1):
            raise ValueError(f"shape[0] is the batch dimension and must be -1 (or 1), got {shape[0]}")
        if 0 in shape:
            raise ValueError("a dimension must be -1 (any size) or at least 1, got 0")
        return shape


def _check_nested(value: Any, *, depth: int = 0, count: list[int] | None = None) -> None:
    """Scalars (finite numbers, strings, booleans) or nested lists of them, bounded in depth and size."""
    count = [0] if count is None else count
    if isinstance(value, list):
        if depth >= MAX_RANK:
            raise ValueError(f"nested deeper than {MAX_RANK} levels")
        for item in value:
            _check_nested(item, depth=depth + 1, count=count)
        return
    count[0] += 1
    if count[0] > MAX_INSTANCE_VALUES:
        raise ValueError(f"more than {MAX_INSTANCE_VALUES} values")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"{value!r} is not a number, string or boolean")


def _check_feature_value(value: Any) -> None:
    """A tf.Example feature value: one scalar or a flat, non-empty list of scalars."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not 1 <= len(value) <= MAX_LIST_VALUES:
        raise ValueError(f"a list of 1 to {MAX_LIST_VALUES} values is required, got {len(value)}")
    for item in items:
        if isinstance(item, list):
            raise ValueError("a feature value is a scalar or a flat list")
        _check_nested(item)


class OutputExpectation(_Strict):
    """What one predict output must look like, per instance (no batch dimension): exactly one check."""

    argmax: Annotated[int, Field(ge=0, le=MAX_DIM)] | None = None
    values: Any = None
    atol: Annotated[float, Field(ge=0.0, le=_BIG)] | None = None
    shape: Annotated[list[Annotated[int, Field(ge=-1, le=MAX_DIM)]], Field(max_length=MAX_RANK)] | None = None

    @field_validator("values")
    @classmethod
    def _values(cls, values: Any) -> Any:
        if values is not None:
            _check_nested(values)
        return values

    @model_validator(mode="after")
    def _one_check(self) -> OutputExpectation:
        given = [key for key in ("argmax", "values", "shape") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of argmax, values or shape (got {', '.join(given) or 'none'})")
        if self.atol is not None and self.values is None:
            raise ValueError("atol: only meaningful with values")
        return self


class SmokeCase(_Strict):
    """One known input and its expected answer. Which fields apply depends on the model's API:
    classify: features, expect_class, min_score; regress: features, expect_value, tolerance;
    predict: inputs or inputs_file, expect."""

    name: Annotated[str, Field(max_length=200)] | None = None
    features: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    inputs_file: Path | None = None
    expect_class: str | None = None
    min_score: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    expect_value: Annotated[float, Field(ge=-_BIG, le=_BIG)] | None = None
    tolerance: Annotated[float, Field(ge=0.0, le=_BIG)] | None = None
    expect: dict[Annotated[str, Field(pattern=_ALIAS, max_length=200)], OutputExpectation] | None = None

    @field_validator("features")
    @classmethod
    def _feature_values(cls, features: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (features or {}).items():
            try:
                _check_feature_value(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return features

    @field_validator("inputs")
    @classmethod
    def _input_values(cls, inputs: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (inputs or {}).items():
            try:
                _check_nested(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return inputs

    @property
    def kind(self) -> ApiName | None:
        """The API this case's fields belong to, when they tell."""
        if self.expect_class is not None or self.min_score is not None:
            return "classify"
        if self.expect_value is not None or self.tolerance is not None:
            return "regress"
        if self.inputs is not None or self.inputs_file is not None or self.expect is not None:
            return "predict"
        return None


class VersionPolicy(_Strict):
    """How many versions the server keeps loaded besides the labelled ones."""

    # Keep the previously labelled version loaded after a promotion, for a fast rollback.
    keep_previous: bool = True


class ModelSpec(_Strict):
    """One served model. Its source is at most one of ``trainer`` and ``saved_model``; with neither,
    ``base_path`` is filled by another pipeline and deployer never writes there."""

    name: Annotated[str, Field(pattern=_NAME)]
    trainer: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
    saved_model: Path | None = None
    base_path: Path
    signature_name: Annotated[str, Field(min_length=1, max_length=200)] = "serving_default"
    api: ApiName | None = None
    features: Annotated[list[Feature], Field(min_length=1)] | None = None
    classes: Annotated[list[str], Field(min_length=2)] | None = None
    inputs: Annotated[list[TensorSpec], Field(min_length=1)] | None = None
    outputs: Annotated[list[TensorSpec], Field(min_length=1)] | None = None
    labels: Annotated[list[Annotated[str, Field(pattern=_LABEL)]], Field(min_length=1)] = [DEFAULT_LABEL]
    version_policy: VersionPolicy = VersionPolicy()
    smoke: list[SmokeCase] = []

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature] | None) -> list[Feature] | None:
        _no_duplicates("feature", [f.name for f in features or []])
        return features

    @field_validator("inputs", "outputs")
    @classmethod
    def _unique_tensors(cls, tensors: list[TensorSpec] | None) -> list[TensorSpec] | None:
        _no_duplicates("tensor", [t.name for t in tensors or []])
        return tensors

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str] | None) -> list[str] | None:
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError("class labels must be unique")
        return classes

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.trainer is not None and self.saved_model is not None:
            raise ValueError("saved_model: a model has one source; give trainer or saved_model, not both")
        return self

    @property
    def source(self) -> Literal["trainer", "saved_model", "external"]:
        if self.trainer is not None:
            return "trainer"
        if self.saved_model is not None:
            return "saved_model"
        return "external"

    @property
    def declared_api(self) -> ApiName | None:
        """``api``, else what the other fields imply; None when only the signature's method name can tell."""
        if self.api is not None:
            return self.api
        if self.inputs is not None or self.outputs is not None:
            return "predict"
        if self.classes is not None:
            return "classify"
        kinds = {case.kind for case in self.smoke} - {None}
        return kinds.pop() if len(kinds) == 1 else None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features or []]

    @property
    def class_names(self) -> list[str]:
        return list(self.classes or [])

    @property
    def primary_label(self) -> str:
        return self.labels[0]


def _no_duplicates(what: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} name(s): {', '.join(dupes)}")


class Monitoring(_Strict):
    enabled: bool = True
    path: Annotated[str, Field(pattern=r"^/\S*$")] = "/monitoring/prometheus/metrics"


class Batching(_Strict):
    enabled: bool = False
    max_batch_size: Annotated[int, Field(ge=1)] = 32
    batch_timeout_micros: Annotated[int, Field(ge=0)] = 1000
    num_batch_threads: Annotated[int, Field(ge=1)] = 2
    max_enqueued_batches: Annotated[int, Field(ge=1)] = 100


class ContainerSettings(_Strict):
    memory: Annotated[str, Field(pattern=r"^\d+[bkmgBKMG]?$")] | None = "2g"
    pids_limit: Annotated[int, Field(ge=16)] | None = 512
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    read_only_root: bool = True


class ServerSettings(_Strict):
    runtime: Literal["auto", "docker", "local"] = "auto"
    image: str = DEFAULT_IMAGE
    host: str = "127.0.0.1"
    # 0 picks a free port; the chosen one is read back and recorded in the state directory.
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8500
    rest_port: Annotated[int, Field(ge=0, le=65535)] = 8501
    health_deadline_seconds: Annotated[float, Field(gt=0)] = 120.0
    reload_deadline_seconds: Annotated[float, Field(gt=0)] = 60.0
    file_system_poll_wait_seconds: Annotated[int, Field(ge=1)] = 1
    monitoring: Monitoring = Monitoring()
    batching: Batching = Batching()
    container: ContainerSettings = ContainerSettings()
    extra_args: list[str] = []

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.grpc_port and self.grpc_port == self.rest_port:
            raise ValueError("grpc_port and rest_port must differ")
        return self


class Manifest(_Strict):
    """The validated manifest. ``source`` and ``root`` are filled in by :func:`load_manifest`."""

    project: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    project_root: Path = Path(".")
    state_dir: Path = Path(".deployer")
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    server: ServerSettings = ServerSettings()

    # Set by load_manifest, not by YAML.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model name(s): {', '.join(dupes)}")
        return models

    @model_validator(mode="after")
    def _models_match_their_api(self) -> Manifest:
        # Imported here: the API pieces import this module's types (for type checking only) and the light protos.
        from deployer import apis

        for mi, model in enumerate(self.models):
            where = f"models[{mi}]"
            api = model.declared_api
            kinds = sorted({case.kind for case in model.smoke if case.kind is not None})
            if api is None and len(kinds) > 1:
                raise ValueError(f"{where}.smoke: cases mix the fields of {' and '.join(kinds)}; set {where}.api")
            if api is None and model.trainer is not None:
                raise ValueError(
                    f"{where}.api: a trainer-built model needs an api (classify, regress or predict), "
                    "or classes (classify) or inputs (predict)"
                )
            if api is None:
                # Only the SavedModel's method name will tell; nothing API-specific may be declared meanwhile.
                apis.check_undeclared(model, where)
            else:
                apis.piece(api).check_model(model, where)
        return self

    # ---- resolved paths -------------------------------------------------------------------
    @property
    def root(self) -> Path:
        base = self.source.parent if self.source is not None else Path.cwd()
        return (base / self.project_root).resolve()

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    def base_path(self, model: ModelSpec) -> Path:
        return self.resolve(model.base_path)

    def model(self, name: str | None = None) -> ModelSpec:
        if name is None:
            if len(self.models) > 1:
                raise ManifestError(
                    f"the manifest has {len(self.models)} models; choose one with --model",
                    hint="names: " + ", ".join(m.name for m in self.models),
                )
            return self.models[0]
        for model in self.models:
            if model.name == name:
                return model
        raise ManifestError(
            f"no model named {name!r} in the manifest", hint="names: " + ", ".join(m.name for m in self.models)
        )

    def spec_hash(self) -> str:
        """A stable digest of everything that shapes the running server (not the smoke cases)."""
        doc: dict[str, Any] = {
            "server": self.server.model_dump(mode="json"),
            "models": [{"name": m.name, "base_path": str(self.base_path(m))} for m in self.models],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _format_location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"function-after\[.*\]|[a-z_-]+\[.*\]", str(part)):
            # pydantic inserts validator/union tags into locations; they mean nothing to users.
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = _format_location(tuple(first["loc"]))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {err.error_count() - 1} more error(s))" if err.error_count() > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file. Raises ManifestError with a one-line message."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {source}", hint="pass -f manifests/<name>.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {source}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ManifestError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the manifest must be a YAML mapping")
    if "source" in data:
        raise ManifestError(f"{source}: source: unknown key")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {format_validation_error(exc)}") from None
    manifest = manifest.model_copy(update={"source": source.resolve()})
    return _with_resolved_files(manifest, source)


def _with_resolved_files(manifest: Manifest, source: Path) -> Manifest:
    """Make smoke ``inputs_file`` paths absolute (they resolve against project_root) and check their
    contents now, so a bad file is a manifest error naming its field rather than a failed smoke run."""
    from deployer import apis

    models = []
    for mi, model in enumerate(manifest.models):
        cases = [
            case.model_copy(update={"inputs_file": manifest.resolve(case.inputs_file)})
            if case.inputs_file is not None
            else case
            for case in model.smoke
        ]
        model = model.model_copy(update={"smoke": cases})
        api = model.declared_api
        if api is not None:
            try:
                apis.piece(api).check_files(model, f"models[{mi}]")
            except ValueError as exc:
                raise ManifestError(f"{source}: {exc}") from None
        models.append(model)
    return manifest.model_copy(update={"models": models})
