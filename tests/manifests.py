"""One writer of test manifests for the iris-shaped models of tests/savedmodels.py.

Each test passes only what it cares about (runtime, ports, deadlines, smoke cases); the rest is the
common shape: one model `iris` with the four iris features and classes "0", "1", "2".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.savedmodels import FEATURES, IRIS_ROWS


def smoke_cases(*, min_score: float | None = 0.5, rows: Sequence[Sequence[float]] = IRIS_ROWS) -> list[dict[str, Any]]:
    """One case per row, expecting the row's index as its class (IRIS_ROWS are classes 0, 1, 2)."""
    cases: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        case: dict[str, Any] = {"name": f"row{i}", "features": dict(zip(FEATURES, row, strict=True))}
        case["expect_class"] = str(i)
        if min_score is not None:
            case["min_score"] = min_score
        cases.append(case)
    return cases


def write_manifest(
    root: Path,
    project: str,
    *,
    server: dict[str, Any],
    base_path: str = "exports/iris",
    state_dir: str = "state",
    smoke: list[dict[str, Any]] | None = None,
    labels: Sequence[str] = ("stable",),
) -> Path:
    doc = {
        "project": project,
        "state_dir": state_dir,
        "models": [
            {
                "name": "iris",
                "trainer": "models.iris.trainer:train",
                "base_path": base_path,
                "features": [{"name": n} for n in FEATURES],
                "classes": ["0", "1", "2"],
                "labels": list(labels),
                "smoke": smoke_cases() if smoke is None else smoke,
            }
        ],
        "server": server,
    }
    path = root / "deployer.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
