"""Pure rendering and parsing of tensorflow_model_server's files: models.config, monitoring, batching.

No I/O here: the caller decides where files go (deployer.state) and how the server sees them
(deployer.runtime.base.Layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import text_format

from deployer.errors import DeployerError
from deployer.manifest import Batching, ServerSettings
from deployer.protos import ensure_light_protos

ensure_light_protos()

from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

MODELS_CONFIG = "models.config"
MONITORING_CONFIG = "monitoring.config"
BATCHING_CONFIG = "batching.config"


@dataclass(frozen=True)
class ServedModel:
    """One model as the server should serve it: a ``specific`` version policy plus labels."""

    name: str
    base_path: str  # as the server sees it
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = sorted({v for v in self.labels.values()} - set(self.versions))
        if missing:
            # TF Serving would reject a label on a version it does not serve; catch it before rendering.
            raise ValueError(f"labels of {self.name} point at unserved version(s) {missing}")


def render_models_config(models: Sequence[ServedModel]) -> str:
    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.extend(sorted(model.versions))
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    return str(text_format.MessageToString(config))


def parse_models_config(text: str) -> list[ServedModel]:
    """Read back what render_models_config wrote (the config on disk is the deployment's truth)."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise DeployerError(f"the rendered models.config is not a valid ModelServerConfig: {exc}") from None
    models = []
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        if policy.WhichOneof("policy_choice") != "specific":
            raise DeployerError(f"models.config: model {entry.name} does not use a specific version policy")
        models.append(
            ServedModel(
                name=entry.name,
                base_path=entry.base_path,
                versions=tuple(sorted(policy.specific.versions)),
                labels=dict(entry.version_labels),
            )
        )
    return models


def render_monitoring_config(path: str) -> str:
    return f'prometheus_config {{\n  enable: true\n  path: "{path}"\n}}\n'


def render_batching_config(batching: Batching) -> str:
    return (
        f"max_batch_size {{ value: {batching.max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}\n"
        f"num_batch_threads {{ value: {batching.num_batch_threads} }}\n"
    )


def render_files(settings: ServerSettings, models: Sequence[ServedModel]) -> dict[str, str]:
    """Every config file the server needs, by file name."""
    files = {MODELS_CONFIG: render_models_config(models)}
    if settings.monitoring.enabled:
        files[MONITORING_CONFIG] = render_monitoring_config(settings.monitoring.path)
    if settings.batching.enabled:
        files[BATCHING_CONFIG] = render_batching_config(settings.batching)
    return files


def server_flags(settings: ServerSettings, config_dir: str) -> list[str]:
    """tensorflow_model_server flags (ports excluded: the runtime owns them), paths as the server sees them."""
    flags = [
        f"--model_config_file={config_dir}/{MODELS_CONFIG}",
        # Without it a config whose labels are new at startup fails to load (tensorflow/serving#1608);
        # moving an existing label still needs the two-phase swap that deployer.promote performs.
        "--allow_version_labels_for_unavailable_models=true",
        f"--file_system_poll_wait_seconds={settings.file_system_poll_wait_seconds}",
    ]
    if settings.monitoring.enabled:
        flags.append(f"--monitoring_config_file={config_dir}/{MONITORING_CONFIG}")
    if settings.batching.enabled:
        flags += ["--enable_batching=true", f"--batching_parameters_file={config_dir}/{BATCHING_CONFIG}"]
    flags += settings.extra_args
    return flags
