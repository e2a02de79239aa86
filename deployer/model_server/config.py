"""Model server config files: ModelServerConfig, BatchingParameters, MonitoringConfig.

``ModelServerConfig`` uses the real proto from tensorflow-serving-api. ``BatchingParameters`` and
``MonitoringConfig`` are not shipped in that wheel, so their text form is parsed here with the
same field names TF Serving uses (unknown fields are an error, as with text_format).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from deployer import version_dirs
from deployer.model_server.status import ServingError, invalid
from deployer.protos import ensure_light_protos

ensure_light_protos()
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

log = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def parse_model_server_config(text: str, source: str = "<string>") -> Any:
    """Parse ASCII ModelServerConfig as util/proto_util.h ParseProtoTextFile does.

    A syntax error is INVALID_ARGUMENT ``Invalid protobuf file: '<source>'``; protobuf's own reason goes
    to the log, as libprotobuf's text-format error collector logs it.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        log.error("%s", text_format_error(config.DESCRIPTOR.full_name, exc))
        raise invalid(f"Invalid protobuf file: '{source}'") from exc
    return config


def text_format_error(type_name: str, exc: Any) -> str:
    """libprotobuf's line: ``Error parsing text-format <type>: <line>:<col>: <reason>``."""
    reason = str(exc)
    line, column = exc.GetLine(), exc.GetColumn()
    if line is not None and column is not None:
        prefix = f"{line}:{column} : "
        reason = reason.removeprefix(prefix)
        return f"Error parsing text-format {type_name}: {line}:{column}: {reason}"
    return f"Error parsing text-format {type_name}: {reason}"


def read_model_server_config(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ServingError(_not_found_or_invalid(exc), f"{path}; {exc.strerror or exc}") from exc
    return parse_model_server_config(text, path)


def _not_found_or_invalid(exc: OSError) -> Any:
    import grpc

    return grpc.StatusCode.NOT_FOUND if isinstance(exc, FileNotFoundError) else grpc.StatusCode.INVALID_ARGUMENT


def single_model_config(name: str, base_path: str) -> Any:
    """What main.cc's BuildSingleModelConfig builds from --model_name/--model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def validate_model_config_list(config: Any) -> None:
    """ServerCore's checks on a ModelConfigList, with its messages."""
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if model.name in seen:
            raise invalid(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
    for model in config.model_config_list.config:
        if not _is_absolute_uri(model.base_path):
            raise invalid(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )
    for model in config.model_config_list.config:
        if not model.model_platform:
            raise invalid("Illegal setting neither model_type(deprecated) nor model_platform.")
        if model.model_platform != TENSORFLOW_PLATFORM:
            # Ours: TF Serving reports an unregistered platform from its source-adapter map.
            raise ServingError(
                _failed_precondition(), f"Model {model.name} requested unsupported platform {model.model_platform}"
            )
        if model.base_path.partition("://")[1]:
            raise invalid(f"Model {model.name}: only local file system base paths are supported, got {model.base_path}")


def _failed_precondition() -> Any:
    import grpc

    return grpc.StatusCode.FAILED_PRECONDITION


def _is_absolute_uri(path: str) -> bool:
    return path.startswith("/") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path))


def aspired_versions(model: Any, children: list[str]) -> dict[int, str]:
    """The versions a ModelVersionPolicy selects from a base path's children: version -> child as found.

    FileSystemStoragePathSource: latest and specific index the children by version (of two spellings of
    one version the last, bytewise, wins); ``all`` emits every version child and the manager keeps the
    first of a duplicate id.
    """
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        found: dict[int, str] = {}
        for version, child in version_dirs.version_children(children):
            found.setdefault(version, child)
        return found
    index = version_dirs.index_by_version(children)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        for version in sorted(wanted - set(index)):
            log.warning(
                "Version %d of servable %s, which was requested to be served as a 'specific' version in the "
                "servable's version policy, was not found in the file system",
                version,
                model.name,
            )
        return {v: child for v, child in index.items() if v in wanted}
    num = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return {v: index[v] for v in sorted(index, reverse=True)[:num]}


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters defaults (session_bundle_config.proto / batching_session)."""

    max_batch_size: int = 128
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 1000000
    num_batch_threads: int = 8


_BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"}
# Real BatchingParameters fields we accept but do not act on.
_BATCHING_IGNORED = {
    "thread_pool_name",
    "allowed_batch_sizes",
    "pad_variable_length_inputs",
    "enable_large_batch_splitting",
    "max_execution_batch_size",
}
_WRAPPED = re.compile(r"(\w+)\s*(?::\s*)?\{\s*value\s*:\s*([^}\s]+)\s*\}|(\w+)\s*:\s*([^\s,;]+)[,;]?")


def parse_batching_parameters(text: str, source: str = "<string>") -> BatchingParameters:
    """Parse the text BatchingParameters (``max_batch_size { value: 128 }`` wrapper syntax)."""
    values: dict[str, int] = {}
    stripped = re.sub(r"#.*", "", text)
    pos = 0
    for match in _WRAPPED.finditer(stripped):
        if stripped[pos : match.start()].strip():
            raise invalid(f"Invalid protobuf file: '{source}': cannot parse {stripped[pos : match.start()].strip()!r}")
        pos = match.end()
        name, raw = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        if name in _BATCHING_IGNORED:
            continue
        if name not in _BATCHING_FIELDS:
            raise invalid(f"Invalid protobuf file: '{source}': unknown field {name!r} in BatchingParameters")
        try:
            values[name] = int(raw)
        except ValueError as exc:
            raise invalid(f"Invalid protobuf file: '{source}': {name} expects an integer, got {raw!r}") from exc
    if stripped[pos:].strip():
        raise invalid(f"Invalid protobuf file: '{source}': cannot parse {stripped[pos:].strip()!r}")
    params = BatchingParameters(**values)
    if params.max_batch_size <= 0:
        raise invalid("max_batch_size must be positive")
    if params.num_batch_threads <= 0:
        raise invalid("num_batch_threads must be positive")
    if params.max_enqueued_batches <= 0:
        raise invalid("max_enqueued_batches must be positive")
    return params


@dataclass(frozen=True)
class MonitoringConfig:
    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def parse_monitoring_config(text: str, source: str = "<string>") -> MonitoringConfig:
    """``prometheus_config { enable: true path: "/metrics" }`` (MonitoringConfig text proto)."""
    body = re.sub(r"#.*", "", text).strip()
    if not body:
        return MonitoringConfig()
    match = re.fullmatch(r"prometheus_config\s*:?\s*\{(.*)\}", body, re.DOTALL)
    if not match:
        raise invalid(f"Invalid protobuf file: '{source}'")
    enable = False
    path = DEFAULT_PROMETHEUS_PATH
    for field in re.finditer(r"(\w+)\s*:\s*(\"[^\"]*\"|'[^']*'|[^\s,;]+)", match.group(1)):
        name, raw = field.group(1), field.group(2)
        if name == "enable":
            if raw not in {"true", "false", "True", "False", "1", "0", "t", "f"}:
                raise invalid(f"Invalid protobuf file: '{source}': enable expects a bool")
            enable = raw in {"true", "True", "1", "t"}
        elif name == "path":
            path = raw.strip("\"'")
        else:
            raise invalid(f"Invalid protobuf file: '{source}': unknown field {name!r} in PrometheusConfig")
    if not path.startswith("/"):
        path = "/" + path
    return MonitoringConfig(prometheus_enable=enable, prometheus_path=path)
