"""The real trainer reproduces the original DNNClassifier example's predictions and accuracy."""

from __future__ import annotations

import pytest

from deployer.export import predict_local
from tests.unit.conftest import SEED_ROWS, TrainedExport

pytestmark = pytest.mark.slow


def test_held_out_accuracy(iris_export: TrainedExport) -> None:
    assert iris_export.metrics["accuracy"] >= 0.93


def test_seed_rows_predict_their_classes(iris_export: TrainedExport) -> None:
    predictions = predict_local(iris_export.path, iris_export.model, [row for row, _ in SEED_ROWS])
    assert [p.class_id for p in predictions] == [expected for _, expected in SEED_ROWS]


def test_manifest_smoke_cases_pass_locally(iris_export: TrainedExport) -> None:
    smoke = iris_export.model.smoke
    predictions = predict_local(iris_export.path, iris_export.model, [dict(c.features) for c in smoke])
    for case, prediction in zip(smoke, predictions, strict=True):
        assert prediction.class_id == case.expect_class, case.name
        assert prediction.probability >= case.min_score, case.name
