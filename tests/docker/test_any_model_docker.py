"""The any-model scenario of tests/grpc/test_any_model.py for one API (Predict) on the docker runtime:
import → up → smoke (gRPC and REST) → promote → rollback, in the compatible image."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.grpc.test_any_model import run_scenario, sources, write_project  # noqa: F401  (fixture)

pytestmark = pytest.mark.docker


def test_predict_model_end_to_end_in_docker(tmp_path: Path, sources: dict[str, Path], image: str) -> None:  # noqa: F811
    project = write_project(tmp_path, "predict", sources["v1"])
    try:
        run_scenario(project, sources, ["--runtime", "docker", "--image", image])
    finally:
        project.cli("down")
