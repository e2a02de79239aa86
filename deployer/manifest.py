"""The manifest: a YAML file validated with pydantic; every error names its field path.

Relative paths in a manifest resolve against ``project_root``, which itself resolves against the
manifest file's directory (default: that directory). The trainer module is imported with
``project_root`` on ``sys.path``.

This module checks the *shape* of every field (types, bounds, unknown keys). What a field means for
one TF Serving API (which fields a classify, regress or predict model needs, what its smoke cases
expect) is checked by that API's piece in :mod:`deployer.apis`, called from here.

Rules every field follows, new ones included (they live on the base model and in load_manifest, so a
field added later gets them without asking):

* types are strict: ``true`` is not the port 1, ``"8500"`` is not a number (YAML already types values);
* floats are finite (``allow_inf_nan=False``): a NaN passes every range check, so it must never arrive;
* every number has a lower and an upper bound that the server and the runtimes can live with;
* no string anywhere may hold a NUL byte, and the document may not nest deeper than ``MAX_DEPTH``;
* paths are ``ManifestPath`` (strict mode would refuse a YAML string for a plain ``Path``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployer import safe_io
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

# A manifest is a small hand-written file: anything bigger or deeper is a mistake or an attack.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 32
# Values visited after YAML aliases are expanded (an alias "bomb" is tiny on disk and huge in memory).
MAX_VALUES = 200_000
# Linux PATH_MAX, and the longest name one path component may have.
_PATH_MAX = 4096
_NAME_MAX = 255
# Feature values travel as float32 (tf.Example float_list): 1e39 is finite in Python and inf in the model.
FLOAT32_MAX = 3.4028234663852886e38

# Weakenings of the default hardening; each must be listed in server.weakenings to be allowed.
Weakening = Literal["listen_beyond_loopback", "writable_root_filesystem", "no_memory_limit", "no_pids_limit"]
WEAKENINGS: dict[str, str] = {
    "listen_beyond_loopback": "the server listens beyond loopback, so other machines reach its unauthenticated"
    " ModelService admin API, which can unload every model",
    "writable_root_filesystem": "the container's root filesystem is writable",
    "no_memory_limit": "the container has no memory limit, so a runaway model can exhaust the host",
    "no_pids_limit": "the container has no pids limit, so a fork or thread storm can exhaust the host",
}


def _check_path(path: Path) -> Path:
    text = str(path)
    if "\0" in text:
        raise ValueError("a path may not contain a NUL byte")
    if not text.strip():
        raise ValueError("the path is empty")
    if len(os.fsencode(text)) > _PATH_MAX:
        raise ValueError(f"the path is longer than {_PATH_MAX} bytes")
    if any(len(os.fsencode(part)) > _NAME_MAX for part in path.parts):
        raise ValueError(f"a path component is longer than {_NAME_MAX} bytes")
    return path


# Paths accept YAML strings (strict mode alone would insist on a Path instance) and are checked.
ManifestPath = Annotated[Path, Field(strict=False), AfterValidator(_check_path)]
ShortText = Annotated[str, Field(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Feature(_Strict):
    """A tf.Example feature of a classify/regress model: float → float_list, int → int64_list, string → bytes_list."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
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
    inputs_file: ManifestPath | None = None
    expect_class: ShortText | None = None
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

    name: Annotated[str, Field(pattern=_NAME, max_length=128)]
    trainer: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", max_length=256)] | None = None
    saved_model: ManifestPath | None = None
    base_path: ManifestPath
    signature_name: Annotated[str, Field(min_length=1, max_length=200)] = "serving_default"
    api: ApiName | None = None
    features: Annotated[list[Feature], Field(min_length=1, max_length=10_000)] | None = None
    classes: Annotated[list[ShortText], Field(min_length=2, max_length=10_000)] | None = None
    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=1_000)] | None = None
    outputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=1_000)] | None = None
    labels: Annotated[
        list[Annotated[str, Field(pattern=_LABEL, max_length=128)]], Field(min_length=1, max_length=64)
    ] = [DEFAULT_LABEL]
    version_policy: VersionPolicy = VersionPolicy()
    # TF Serving reads at most 1000 warmup records; the smoke set is also the warmup set.
    smoke: Annotated[list[SmokeCase], Field(max_length=1000)] = []

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
    # Rendered into monitoring.config between quotes: only URL path characters, never a quote.
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*$", max_length=256)] = "/monitoring/prometheus/metrics"


class Batching(_Strict):
    enabled: bool = False
    max_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    # A batch that waits longer than a minute for company is a stalled request, not a batch.
    batch_timeout_micros: Annotated[int, Field(ge=0, le=60_000_000)] = 1000
    # Each one is a thread in the server.
    num_batch_threads: Annotated[int, Field(ge=1, le=256)] = 2
    max_enqueued_batches: Annotated[int, Field(ge=1, le=1_000_000)] = 100


_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Docker refuses less than 6 MiB; more than 16 TiB is a typo.
_MEMORY_MIN, _MEMORY_MAX = 6 * 1024**2, 16 * 1024**4


def _check_memory(value: str) -> str:
    number, unit = re.fullmatch(r"(\d+)([bkmgBKMG]?)", value).groups()  # type: ignore[union-attr]
    size = int(number) * _MEMORY_UNITS[unit.lower()]
    if not _MEMORY_MIN <= size <= _MEMORY_MAX:
        raise ValueError(f"{value!r} must be between 6m and 16384g")
    return value


class ContainerSettings(_Strict):
    memory: Annotated[str, Field(pattern=r"^\d{1,16}[bkmgBKMG]?$"), AfterValidator(_check_memory)] | None = "2g"
    # The kernel's pid_max cannot exceed 4194304.
    pids_limit: Annotated[int, Field(ge=16, le=4_194_304)] | None = 512
    restart_policy: Literal["no", "on-failure", "always", "unless-stopped"] = "no"
    read_only_root: bool = True


def _check_host(host: str) -> str:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IPv4 address; use 127.0.0.1 (loopback, the default) or an address of this"
            " machine such as 0.0.0.0 (every interface: a weakening, see server.weakenings)"
        ) from None
    return host


# Flags the runtime and the rendered config own: an extra_args copy would silently override or contradict them.
RUNTIME_OWNED_FLAGS = frozenset(
    {
        "port",
        "rest_api_port",
        "model_config_file",
        "model_name",
        "model_base_path",
        "monitoring_config_file",
        "enable_batching",
        "batching_parameters_file",
        "file_system_poll_wait_seconds",
        "allow_version_labels_for_unavailable_models",
        "model_config_file_poll_wait_seconds",
        "grpc_socket_path",
    }
)


def _flag_name(arg: str) -> str | None:
    match = re.fullmatch(r"--?([A-Za-z0-9_]+)(=.*)?", arg, flags=re.DOTALL)
    return match.group(1) if match else None


# Kubernetes names: a namespace is a DNS-1123 label, a claim a DNS-1123 subdomain.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource quantities, restricted to the forms people write for CPU and memory.
_CPU = r"^([1-9][0-9]{0,5}m|[0-9]{1,3}(\.[0-9]{1,3})?)$"
_MEMORY = r"^[1-9][0-9]{0,9}(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_K8S_MEMORY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip
MAX_REPLICAS = 64
DEFAULT_REPLICAS = 2  # what the swarm runtime and the Kubernetes render run when server.replicas is unset


def cpu_millis(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)


def memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    if match is None:
        raise ValueError(f"not a memory quantity: {quantity}")
    return int(match.group(1)) * _K8S_MEMORY_UNITS[match.group(2)]


class ResourceAmounts(_Strict):
    cpu: Annotated[str, Field(pattern=_CPU)] | None = None
    memory: Annotated[str, Field(pattern=_MEMORY)] | None = None


class KubernetesResources(_Strict):
    requests: ResourceAmounts = ResourceAmounts(cpu="500m", memory="1Gi")
    limits: ResourceAmounts = ResourceAmounts(memory="2Gi")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> KubernetesResources:
        req, lim = self.requests, self.limits
        if req.cpu and lim.cpu and cpu_millis(req.cpu) > cpu_millis(lim.cpu):
            raise ValueError(f"requests.cpu {req.cpu} exceeds limits.cpu {lim.cpu}")
        if req.memory and lim.memory and memory_bytes(req.memory) > memory_bytes(lim.memory):
            raise ValueError(f"requests.memory {req.memory} exceeds limits.memory {lim.memory}")
        return self


class KubernetesSettings(_Strict):
    """What `deployer render --target kubernetes` needs beyond the server settings."""

    namespace: Annotated[str, Field(pattern=_DNS_LABEL)] = "default"
    # An existing PersistentVolumeClaim holding <model name>/<version>/ SavedModels, mounted read-only.
    # None: "<project>-models".
    storage_claim: Annotated[str, Field(pattern=_DNS_SUBDOMAIN, max_length=253)] | None = None
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    resources: KubernetesResources = KubernetesResources()


class ServerSettings(_Strict):
    runtime: Literal["auto", "docker", "local", "swarm"] = "auto"
    # Server replicas: swarm and Kubernetes only (None: 2 there); docker and local run exactly one.
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] | None = None
    image: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", max_length=255)] = DEFAULT_IMAGE
    host: Annotated[str, AfterValidator(_check_host)] = "127.0.0.1"
    # 0 picks a free port; the chosen one is read back and recorded in the state directory.
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8500
    rest_port: Annotated[int, Field(ge=0, le=65535)] = 8501
    health_deadline_seconds: Annotated[float, Field(gt=0, le=86_400)] = 120.0
    # Every promotion step waits at most this long for one reload RPC.
    reload_deadline_seconds: Annotated[float, Field(gt=0, le=3_600)] = 60.0
    # The server's poll loop sleeps this long; TF Serving reads it as an int32 flag.
    file_system_poll_wait_seconds: Annotated[int, Field(ge=1, le=86_400)] = 1
    monitoring: Monitoring = Monitoring()
    batching: Batching = Batching()
    container: ContainerSettings = ContainerSettings()
    extra_args: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(max_length=100)] = []
    # Hardening this manifest switches off on purpose (see WEAKENINGS); `up` warns, `status` shows them.
    weakenings: Annotated[list[Weakening], Field(max_length=len(WEAKENINGS))] = []

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.grpc_port and self.grpc_port == self.rest_port:
            raise ValueError("grpc_port and rest_port must differ")
        return self

    def weakenings_in_effect(self) -> dict[str, str]:
        """The weakenings these settings make, by name, with the field that makes each."""
        found: dict[str, str] = {}
        if not ipaddress.IPv4Address(self.host).is_loopback:
            found["listen_beyond_loopback"] = f"server.host: {self.host}"
        if not self.container.read_only_root:
            found["writable_root_filesystem"] = "server.container.read_only_root: false"
        if self.container.memory is None:
            found["no_memory_limit"] = "server.container.memory: null"
        if self.container.pids_limit is None:
            found["no_pids_limit"] = "server.container.pids_limit: null"
        return found


class Manifest(_Strict):
    """The validated manifest. ``source`` and ``root`` are filled in by :func:`load_manifest`."""

    # Container, network and label names derive from it: a DNS label's length at most.
    project: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=63)]
    project_root: ManifestPath = Path(".")
    state_dir: ManifestPath = Path(".deployer")
    models: Annotated[list[ModelSpec], Field(min_length=1, max_length=100)]
    server: ServerSettings = ServerSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

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
    def _server_args_and_weakenings(self) -> Manifest:
        for index, arg in enumerate(self.server.extra_args):
            name = _flag_name(arg)
            if name is None:
                raise ValueError(f"server.extra_args[{index}]: {arg!r} is not a --flag or --flag=value")
            if name in RUNTIME_OWNED_FLAGS:
                raise ValueError(
                    f"server.extra_args[{index}]: {arg!r} sets --{name}, which deployer owns"
                    " (ports, config files and polling come from the manifest's server settings)"
                )
        in_effect = self.server.weakenings_in_effect()
        listed = set(self.server.weakenings)
        for name, where in in_effect.items():
            if name not in listed:
                raise ValueError(
                    f"{where} weakens the default hardening: {WEAKENINGS[name]};"
                    f" if you mean it, add {name} to server.weakenings"
                )
        for name in sorted(listed - set(in_effect)):
            raise ValueError(f"server.weakenings: {name} is listed but the settings do not make it; remove it")
        return self

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

    def replicas_for(self, runtime: str) -> int:
        """How many servers ``runtime`` runs for this manifest."""
        if runtime in ("swarm", "kubernetes"):
            return self.server.replicas or DEFAULT_REPLICAS
        return 1

    @property
    def storage_claim(self) -> str:
        return self.kubernetes.storage_claim or f"{self.project}-models"[:253]

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
        elif re.fullmatch(r"[A-Za-z0-9_.-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            # A key with spaces, newlines or control characters: quoted, so the message stays one line.
            out += f"[{str(part)!r}]"
    return out


_BOUND_WORDS = {
    "less_than_equal": "less than or equal to",
    "less_than": "less than",
    "greater_than_equal": "greater than or equal to",
    "greater_than": "greater than",
}


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = _format_location(tuple(first["loc"]))
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    bound = _BOUND_WORDS.get(first["type"])
    limit = next(iter(first.get("ctx", {}).values()), None)
    if bound is not None and isinstance(limit, float):
        # pydantic prints the float32 limit 3.4028234663852886e38 as 340282346638528860000000000000000000000.
        msg = f"Input should be {bound} {limit:g}"
    more = f" (and {err.error_count() - 1} more error(s))" if err.error_count() > 1 else ""
    # Validators quote the user's keys and values: one line whatever they hold (newlines, escapes).
    msg = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(msg))
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def _read_manifest_text(source: Path) -> str:
    """The file's text, refusing what is not a small regular file (a FIFO would hang, /dev/zero never end)."""
    try:
        return safe_io.read_user_text(source, MAX_MANIFEST_BYTES)
    except safe_io.UserFileError as exc:
        if exc.missing:
            raise ManifestError(f"manifest not found: {source}", hint="pass -f manifests/<name>.yaml") from None
        if exc.too_large:
            raise ManifestError(f"manifest {source} is larger than {MAX_MANIFEST_BYTES // 1024} KiB") from None
        raise ManifestError(f"cannot read manifest {source}: {exc.reason}") from None


# libyaml when PyYAML was built with it (ten times faster); the same safe constructors either way.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_OPENING = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
            yaml.FlowSequenceStartToken)  # fmt: skip
_CLOSING = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def _check_nesting(text: str, source: Path) -> None:
    """Refuse deep nesting before parsing: PyYAML's composer recurses once per level (RecursionError).

    The scanner is iterative, so counting its tokens is safe at any depth.
    """
    depth = 0
    for token in yaml.scan(text, Loader=_LOADER):
        if isinstance(token, _OPENING):
            depth += 1
            if depth > MAX_DEPTH:
                mark = token.start_mark
                raise ManifestError(
                    f"{source}: nested deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column {mark.column + 1}"
                )
        elif isinstance(token, _CLOSING):
            depth -= 1


def _location(path: tuple[int | str, ...]) -> str:
    return _format_location(path) or "(top level)"


def _check_values(data: Any) -> None:
    """NUL bytes anywhere (keys too) and alias expansion, walked iteratively with the field path."""
    stack: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    seen = 0
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ValueError(f"more than {MAX_VALUES} values (YAML aliases expand to too much)")
        if isinstance(value, str) and "\0" in value:
            raise ValueError(f"{_location(where)}: NUL byte in {value.split(chr(0))[0]!r}...")
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "\0" in key:
                    raise ValueError(f"{_location(where)}: NUL byte in the key {key.split(chr(0))[0]!r}...")
                stack.append(((*where, str(key)), item))
        elif isinstance(value, list):
            stack.extend(((*where, index), item) for index, item in enumerate(value))


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file. Raises ManifestError with a one-line message."""
    source = Path(path)
    text = _read_manifest_text(source)
    try:
        _check_nesting(text, source)
        data = yaml.load(text, Loader=_LOADER)  # a safe loader: CSafeLoader or SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ManifestError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ManifestError(f"{source}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the manifest must be a YAML mapping")
    if "source" in data:
        raise ManifestError(f"{source}: source: unknown key")
    try:
        _check_values(data)
    except ValueError as exc:
        raise ManifestError(f"{source}: {exc}") from None
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
