"""Shared fixtures for the offline tests: manifests in tmp dirs, and one real training per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.manifest import Manifest, ModelSpec, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
IRIS_MANIFEST = REPO_ROOT / "manifests" / "iris.yaml"
SEED_ROWS = [
    ({"SepalLength": 5.1, "SepalWidth": 3.3, "PetalLength": 1.7, "PetalWidth": 0.5}, "0"),
    ({"SepalLength": 5.9, "SepalWidth": 3.0, "PetalLength": 4.2, "PetalWidth": 1.5}, "1"),
    ({"SepalLength": 6.9, "SepalWidth": 3.1, "PetalLength": 5.4, "PetalWidth": 2.1}, "2"),
]


def iris_manifest_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(IRIS_MANIFEST.read_text(encoding="utf-8"))
    return doc


def write_manifest(directory: Path, doc: dict[str, Any], name: str = "manifest.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def tmp_iris_manifest(directory: Path, **model_overrides: Any) -> Path:
    """The iris manifest, exporting under ``directory`` and importing trainers from the repo."""
    doc = iris_manifest_doc()
    doc["project_root"] = str(REPO_ROOT)
    doc["state_dir"] = str(directory / "state")
    doc["models"][0]["base_path"] = str(directory / "exports" / "iris")
    doc["models"][0].update(model_overrides)
    return write_manifest(directory, doc)


@pytest.fixture
def make_iris_manifest(tmp_path: Path) -> Callable[..., Path]:
    return lambda **overrides: tmp_iris_manifest(tmp_path, **overrides)


@dataclass(frozen=True)
class TrainedExport:
    manifest_path: Path
    manifest: Manifest
    model: ModelSpec
    version: int
    path: Path
    metrics: dict[str, float]
    seconds_train: float
    seconds_export: float


@pytest.fixture(scope="session")
def iris_export(tmp_path_factory: pytest.TempPathFactory) -> TrainedExport:
    """The real iris trainer, run once per session, exported to a tmp base path."""
    from deployer.export import train_and_export

    manifest_path = tmp_iris_manifest(tmp_path_factory.mktemp("iris"))
    manifest = load_manifest(manifest_path)
    model = manifest.model()
    result = train_and_export(manifest, model)
    return TrainedExport(
        manifest_path=manifest_path,
        manifest=manifest,
        model=model,
        version=result.version,
        path=result.path,
        metrics=result.metrics,
        seconds_train=result.seconds_train,
        seconds_export=result.seconds_export,
    )


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The worst umask: whatever deployer creates must still get its explicit mode."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
