"""Docker tier fixtures: the real daemon, the compatible image, a model on disk, unique projects.

Locally a missing daemon or image skips the tier; under CI=true it fails (tests/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import DeployerError
from deployer.manifest import ContainerSettings
from deployer.runtime.base import LaunchSpec
from deployer.runtime.docker import LABEL_PROJECT, DockerRuntime, compat_image, connect
from tests.conftest import skip_or_fail
from tests.savedmodels import write_model

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def runtime() -> DockerRuntime:
    try:
        return connect()
    except DeployerError as exc:
        skip_or_fail(f"no Docker daemon: {exc.message}")
        raise


@pytest.fixture(scope="session")
def image(runtime: DockerRuntime) -> str:
    """The compatible image, current with this checkout (a no-op build when its inputs hash matches)."""
    from deployer import image as image_builder

    try:
        image_builder.build(runtime)
    except DeployerError as exc:
        skip_or_fail(f"cannot build {compat_image()}: {exc.message} ({exc.hint or ''})")
    return compat_image()


@pytest.fixture
def docker_client(runtime: DockerRuntime) -> Any:
    return runtime.client


@pytest.fixture
def project(runtime: DockerRuntime) -> Iterator[str]:
    """A unique project name; every container labelled with it is removed afterwards."""
    name = f"dt-{uuid.uuid4().hex[:10]}"
    yield name
    for container in runtime.client.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={name}"}):
        container.remove(force=True)
    # The project's own network (deployer.runtime.docker.network_name), when a test left it behind.
    for network in runtime.client.networks.list(filters={"label": f"{LABEL_PROJECT}={name}"}):
        network.remove()


@pytest.fixture
def model_base(tmp_path: Path) -> Path:
    base = tmp_path / "models" / "clf"
    write_model(base, 1, kind="good")
    return base


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    return path


LaunchFactory = Callable[..., LaunchSpec]


@pytest.fixture
def launch(runtime: DockerRuntime, image: str, project: str, model_base: Path, config_dir: Path) -> LaunchFactory:
    """Build a LaunchSpec for this test's project; keyword arguments override the defaults."""

    def make(**overrides: Any) -> LaunchSpec:
        models = overrides.pop("models", {"clf": model_base})
        layout = runtime.layout(models, config_dir)
        fields: dict[str, Any] = {
            "project": project,
            "spec_hash": "test-spec",
            "image": image,
            "host": "127.0.0.1",
            "grpc_port": 0,
            "rest_port": 0,
            "args": ("--model_name=clf", f"--model_base_path={layout.model_paths['clf']}")
            if "clf" in models
            else (),
            "layout": layout,
            "state_dir": config_dir.parent / "state",
            "container": ContainerSettings(memory="1g", pids_limit=256),
        }
        fields.update(overrides)
        return LaunchSpec(**fields)

    return make
