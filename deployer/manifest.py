"""The manifest: a YAML file validated with pydantic; every error names its field path.

Relative paths in a manifest resolve against ``project_root``, which itself resolves against the
manifest file's directory (default: that directory). The trainer module is imported with
``project_root`` on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import json
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
# TF Serving's REST API matches labels with [^/:]+ but documents [a-zA-Z0-9_]+; we accept the documented set.
_LABEL = r"^[A-Za-z0-9_]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    dtype: Literal["float"] = "float"


class SmokeCase(_Strict):
    name: str | None = None
    features: dict[str, float]
    expect_class: str
    min_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class VersionPolicy(_Strict):
    """How many versions the server keeps loaded besides the labelled ones."""

    # Keep the previously labelled version loaded after a promotion, for a fast rollback.
    keep_previous: bool = True


class ModelSpec(_Strict):
    name: Annotated[str, Field(pattern=_NAME)]
    trainer: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    base_path: Path
    signature_name: str = "serving_default"
    features: Annotated[list[Feature], Field(min_length=1)]
    classes: Annotated[list[str], Field(min_length=2)]
    labels: Annotated[list[Annotated[str, Field(pattern=_LABEL)]], Field(min_length=1)] = [DEFAULT_LABEL]
    version_policy: VersionPolicy = VersionPolicy()
    smoke: list[SmokeCase] = []

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature]) -> list[Feature]:
        names = [f.name for f in features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature name(s): {', '.join(dupes)}")
        return features

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class labels must be unique")
        return classes

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def primary_label(self) -> str:
        return self.labels[0]


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
    def _smoke_matches_model(self) -> Manifest:
        for mi, model in enumerate(self.models):
            wanted = set(model.feature_names)
            for si, case in enumerate(model.smoke):
                where = f"models[{mi}].smoke[{si}]"
                missing = [n for n in model.feature_names if n not in case.features]
                extra = sorted(set(case.features) - wanted)
                if missing:
                    raise ValueError(f"{where}.features: missing feature(s) {', '.join(missing)}")
                if extra:
                    raise ValueError(f"{where}.features: unknown feature(s) {', '.join(extra)}")
                if case.expect_class not in model.classes:
                    raise ValueError(
                        f"{where}.expect_class: {case.expect_class!r} is not one of the model's classes {model.classes}"
                    )
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
    return manifest.model_copy(update={"source": source.resolve()})
