"""Pure rendering of a Kubernetes deployment as a kustomize directory (no cluster calls, like server_config).

``render_files(manifest, served)`` returns every file by name:

* ``deployment.yaml``: N replicas of the model server; rolling update ``maxUnavailable: 0`` /
  ``maxSurge: 1`` (a replica leaves only once its replacement is Ready); a startup probe on the gRPC
  port (TF Serving opens its ports only once every model of the initial config is AVAILABLE, the
  community answer of tensorflow/serving#1754 and kubeflow#368), a readiness probe that the first
  model's primary label resolves (REST ``GET /v1/models/{m}/labels/{l}/metadata``: 200 only when the
  label points at a loaded version), a liveness probe on the gRPC port; resources from the manifest;
  the docker runtime's hardening as securityContext.
* ``service.yaml`` (gRPC + REST) and ``service-headless.yaml`` (client-side gRPC load balancing over
  the pod addresses: ``dns:///<name>-headless.<ns>.svc.cluster.local:8500`` with ``round_robin``).
* ``pdb.yaml``: at most one replica voluntarily disrupted at a time.
* ``kustomization.yaml`` with a ``configMapGenerator`` over ``models.config`` (and the monitoring
  and batching files): the ConfigMap's name carries a hash of its content, so a promotion, which only
  changes models.config, becomes an ordinary rolling update of the Deployment.

The model store is an existing PersistentVolumeClaim (``kubernetes.storage_claim``) holding
``<model name>/<version>/`` SavedModels, mounted read-only at /models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer import store
from deployer.errors import DeployerError, StoreError, UsageError
from deployer.manifest import KubernetesResources, Manifest, ResourceAmounts
from deployer.server_config import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    ServedModel,
    parse_models_config,
    server_flags,
)
from deployer.server_config import render_files as render_server_files
from deployer.state import write_atomic

MODELS_DIR = "/models"
CONFIG_DIR = "/config"
GRPC_PORT = 8500
REST_PORT = 8501
# The compatible image's user; the real tensorflow/serving image runs as root unless told otherwise.
RUN_AS_USER = 10001

KUSTOMIZATION = "kustomization.yaml"
DEPLOYMENT = "deployment.yaml"
SERVICE = "service.yaml"
HEADLESS_SERVICE = "service-headless.yaml"
PDB = "pdb.yaml"
RESOURCE_FILES = (DEPLOYMENT, SERVICE, HEADLESS_SERVICE, PDB)
CONFIG_FILES = (MODELS_CONFIG, MONITORING_CONFIG, BATCHING_CONFIG)
# Every file a render may write: a re-render removes those of them it no longer writes (nothing else).
RENDERED_FILES = (KUSTOMIZATION, *RESOURCE_FILES, *CONFIG_FILES)


def app_name(manifest: Manifest) -> str:
    # Service names are DNS-1035 labels: at most 63 characters, starting with a letter.
    return f"deployer-{manifest.project}"[:63].rstrip("-")


def served_for_kubernetes(served: Sequence[ServedModel]) -> list[ServedModel]:
    """The same versions and labels with base paths as the pods see them (/models/<name> on the claim)."""
    return [
        ServedModel(name=m.name, base_path=f"{MODELS_DIR}/{m.name}", versions=m.versions, labels=dict(m.labels))
        for m in served
    ]


def _labels(manifest: Manifest) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "model-server",
        "app.kubernetes.io/instance": app_name(manifest),
        "app.kubernetes.io/managed-by": "deployer",
    }


def _selector(manifest: Manifest) -> dict[str, str]:
    return {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": app_name(manifest)}


def _amounts(amounts: ResourceAmounts) -> dict[str, str]:
    return {k: v for k, v in (("cpu", amounts.cpu), ("memory", amounts.memory)) if v is not None}


def _resources(resources: KubernetesResources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if requests := _amounts(resources.requests):
        out["requests"] = requests
    if limits := _amounts(resources.limits):
        out["limits"] = limits
    return out


def _deployment(manifest: Manifest) -> dict[str, Any]:
    settings = manifest.server
    name = app_name(manifest)
    probe_model = manifest.models[0]
    readiness_path = f"/v1/models/{probe_model.name}/labels/{probe_model.primary_label}/metadata"
    startup_period = 2
    container: dict[str, Any] = {
        "name": "model-server",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        # The image's entrypoint (TF Serving's tf_serving_entrypoint.sh, or ours) adds --port/--rest_api_port.
        "args": server_flags(settings, CONFIG_DIR),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
        ],
        # The ports open only after every initial model is AVAILABLE: an open gRPC port means "loaded".
        "startupProbe": {
            "tcpSocket": {"port": "grpc"},
            "periodSeconds": startup_period,
            "timeoutSeconds": 2,
            "failureThreshold": max(1, math.ceil(settings.health_deadline_seconds / startup_period)),
        },
        "readinessProbe": {
            "httpGet": {"path": readiness_path, "port": "rest"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "grpc"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": _resources(manifest.kubernetes.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": _labels(manifest)},
        "spec": {
            "replicas": manifest.replicas_for("kubernetes"),
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(manifest)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _labels(manifest)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": manifest.storage_claim, "readOnly": True},
                        },
                        # kustomize appends the content hash to this name in the built output.
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    }


def _service(manifest: Manifest, *, headless: bool) -> dict[str, Any]:
    name = app_name(manifest)
    spec: dict[str, Any] = {
        "selector": _selector(manifest),
        # h2c: gRPC over cleartext HTTP/2, so HTTP/2-aware proxies and meshes balance per request.
        "ports": [
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        ],
    }
    if headless:
        # One DNS A record per Ready pod: gRPC clients balance per request (round_robin) instead of
        # pinning one long-lived connection to one pod.
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = False
    else:
        spec["type"] = manifest.kubernetes.service_type
        spec["ports"].append({"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-headless"[:63] if headless else name, "labels": _labels(manifest)},
        "spec": spec,
    }


def _pdb(manifest: Manifest) -> dict[str, Any]:
    # maxUnavailable, not minAvailable: with one replica a minAvailable of 1 would block node drains forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": app_name(manifest), "labels": _labels(manifest)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(manifest)}},
    }


def _kustomization(manifest: Manifest, config_files: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": manifest.kubernetes.namespace,
        "resources": list(RESOURCE_FILES),
        "configMapGenerator": [{"name": f"{app_name(manifest)}-config", "files": list(config_files)}],
        "generatorOptions": {"labels": _labels(manifest)},
    }


def _dump(doc: dict[str, Any]) -> str:
    header = "# Rendered by `deployer render --target kubernetes`; re-render instead of editing.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def render_files(manifest: Manifest, served: Sequence[ServedModel]) -> dict[str, str]:
    """Every file of the kustomize directory, by name. ``served``: versions and labels (any base paths)."""
    in_pod = served_for_kubernetes(served)
    config = render_server_files(manifest.server, in_pod)
    files = {
        KUSTOMIZATION: _dump(_kustomization(manifest, sorted(config))),
        DEPLOYMENT: _dump(_deployment(manifest)),
        SERVICE: _dump(_service(manifest, headless=False)),
        HEADLESS_SERVICE: _dump(_service(manifest, headless=True)),
        PDB: _dump(_pdb(manifest)),
    }
    files.update(config)
    return files


# ---- the directory on disk (local files only; still no cluster) ------------------------------------


@dataclass(frozen=True)
class RenderReport:
    directory: Path
    written: list[str]
    removed: list[str]
    models: list[ServedModel]
    # Set by promote_directory: the label moved and between which versions.
    model: str | None = None
    label: str | None = None
    from_version: int | None = None
    to_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "directory": str(self.directory),
            "written": self.written,
            "removed": self.removed,
            "models": [
                {"name": m.name, "versions": list(m.versions), "labels": dict(sorted(m.labels.items()))}
                for m in self.models
            ],
            "apply": f"kubectl apply -k {self.directory}",
        }
        if self.label is not None:
            doc.update(model=self.model, label=self.label, **{"from": self.from_version, "to": self.to_version})
        return doc


def _previous(out: Path) -> list[ServedModel] | None:
    try:
        text = (out / MODELS_CONFIG).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read {out / MODELS_CONFIG}: {exc.strerror or exc}") from None
    try:
        return parse_models_config(text)
    except DeployerError as exc:
        raise UsageError(f"{out / MODELS_CONFIG}: {exc.message}", hint="remove it to render afresh") from None


def desired(manifest: Manifest, previous: list[ServedModel] | None) -> list[ServedModel]:
    """What the pods should serve: a previous render's versions and labels win (a promotion moved them);
    otherwise each model's newest local version with every manifest label on it."""
    before = {m.name: m for m in previous or []}
    served = []
    for model in manifest.models:
        entry = before.get(model.name)
        if entry is not None:
            labels = dict(entry.labels)
            for label in model.labels:
                labels.setdefault(label, max(entry.versions))
            served.append(ServedModel(model.name, entry.base_path, entry.versions, labels))
            continue
        base = manifest.base_path(model)
        latest = store.latest_version(base)
        if latest is None:
            raise StoreError(
                f"model {model.name} has no version under {base} to render",
                hint="export one (`deployer train`), or render where the model store is mirrored",
            )
        served.append(ServedModel(model.name, str(base), (latest,), {label: latest for label in model.labels}))
    return served


def write_directory(out: Path, files: dict[str, str]) -> tuple[list[str], list[str]]:
    """Write ``files`` atomically under ``out``; remove rendered files that are no longer rendered."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o755)
    except OSError as exc:
        raise UsageError(f"cannot create the output directory {out}: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise UsageError(f"-o {out}: not a directory")
    removed = []
    try:
        for name, text in sorted(files.items()):
            write_atomic(out / name, text)
        for name in RENDERED_FILES:
            if name not in files and (out / name).is_file():
                (out / name).unlink()
                removed.append(name)
    except OSError as exc:
        raise UsageError(f"cannot write the rendered files under {out}: {exc.strerror or exc}") from None
    return sorted(files), removed


def render_directory(manifest: Manifest, out: Path) -> RenderReport:
    served = desired(manifest, _previous(out))
    written, removed = write_directory(out, render_files(manifest, served))
    return RenderReport(out, written, removed, served_for_kubernetes(served))


def promote_directory(
    manifest: Manifest, out: Path, version: int, *, model_name: str | None = None, label: str | None = None
) -> RenderReport:
    """Re-render ``out`` with ``label`` moved to ``version`` (loaded beside the current one, which stays
    if ``version_policy.keep_previous``). The candidate is checked in the local store first."""
    spec = manifest.model(model_name)
    label = label or spec.primary_label
    if label not in spec.labels:
        raise UsageError(
            f"model {spec.name} has no label {label!r} in the manifest", hint="labels: " + ", ".join(spec.labels)
        )
    previous = _previous(out)
    if previous is None:
        raise UsageError(
            f"nothing is rendered in {out}: no {MODELS_CONFIG}",
            hint=f"run `deployer render -f {manifest.source or 'MANIFEST'} --target kubernetes -o {out}` first",
        )
    store.validate_version(store.version_dir(manifest.base_path(spec), version), spec)
    served = desired(manifest, previous)
    entry = next(m for m in served if m.name == spec.name)
    current = entry.labels.get(label)
    labels = {**entry.labels, label: version}
    keep = {version, *labels.values()}
    if current is not None and spec.version_policy.keep_previous:
        keep.add(current)
    versions = tuple(sorted(v for v in {*entry.versions, version} if v in keep))
    moved = ServedModel(entry.name, entry.base_path, versions, labels)
    served = [moved if m.name == spec.name else m for m in served]
    written, removed = write_directory(out, render_files(manifest, served))
    return RenderReport(
        out, written, removed, served_for_kubernetes(served),
        model=spec.name, label=label, from_version=current, to_version=version,
    )  # fmt: skip
