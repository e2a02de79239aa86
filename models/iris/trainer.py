"""Iris trainer: the Keras equivalent of the classic ``tf.estimator.DNNClassifier`` example.

Two hidden ReLU layers of 10 units and a 3-way softmax, trained on the bundled 150-row iris data set
(``iris.csv``, taken once from scikit-learn's copy; columns SepalLength, SepalWidth, PetalLength,
PetalWidth, Species with species 0=setosa, 1=versicolor, 2=virginica). The train/test split is
stratified and seeded, so the held-out set is the same on every run.

Contract (see :mod:`deployer.trainer`): ``train(context) -> TrainResult`` whose model maps float32
``[B, 4]`` (manifest feature order) to probabilities ``[B, 3]`` (manifest class order).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deployer.trainer import TrainContext, TrainResult

DATA_FILE = Path(__file__).with_name("iris.csv")
LABEL_COLUMN = "Species"
HIDDEN_UNITS = (10, 10)
TEST_ROWS_PER_CLASS = 10
EPOCHS = 300
BATCH_SIZE = 32
LEARNING_RATE = 0.01
# On 120 rows Keras' per-step and per-epoch Python overhead is the whole training time: run many
# steps per call and feed all epochs as one pre-shuffled pass (~5 s instead of ~40 s).
STEPS_PER_EXECUTION = 64
# Progress reports at most this often (plus the last epoch): a few lines for a ~5 s training.
REPORT_EVERY_SECONDS = 1.0


def load_data(path: Path = DATA_FILE) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (column names, features float32 [N, 4], labels int64 [N])."""
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    label_index = header.index(LABEL_COLUMN)
    feature_columns = [name for name in header if name != LABEL_COLUMN]
    features = np.delete(table, label_index, axis=1).astype(np.float32)
    return feature_columns, features, table[:, label_index].astype(np.int64)


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: TEST_ROWS_PER_CLASS rows of each class held out."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        test.extend(rng.choice(rows, size=TEST_ROWS_PER_CLASS, replace=False).tolist())
    test_idx = np.array(sorted(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return rng.permutation(train_idx), test_idx


def build_model(n_features: int, n_classes: int):  # type: ignore[no-untyped-def]
    import keras

    layers: list[keras.layers.Layer] = [keras.Input((n_features,), dtype="float32", name="features")]
    layers += [keras.layers.Dense(units, activation="relu") for units in HIDDEN_UNITS]
    layers.append(keras.layers.Dense(n_classes, activation="softmax", name="probabilities"))
    model = keras.Sequential(layers, name="iris_dnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return model


def epoch_reporter(report: Callable[[str], None], rows_per_epoch: int, epochs: int) -> Any:
    """A Keras callback turning batch ends of the one pre-shuffled pass into "epoch N/E" reports."""
    import keras

    class EpochReporter(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.last = time.monotonic()

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            report(f"{epochs} epochs over {rows_per_epoch} rows")

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            epoch = min(epochs, (batch + 1) * BATCH_SIZE // rows_per_epoch)
            now = time.monotonic()
            if now - self.last >= REPORT_EVERY_SECONDS or epoch >= epochs:
                self.last = now
                loss = (logs or {}).get("loss")
                report(f"epoch {epoch}/{epochs}" + (f": loss {float(loss):.4f}" if loss is not None else ""))

    return EpochReporter()


def train(context: TrainContext) -> TrainResult:
    import keras

    columns, features, labels = load_data()
    if columns != context.feature_names:
        # The model reads columns positionally, so the manifest must list them in the data's order.
        raise ValueError(f"the manifest's features {context.feature_names} differ from the data's {columns}")
    if len(context.classes) != int(labels.max()) + 1:
        raise ValueError(f"the manifest lists {len(context.classes)} classes, the data has {int(labels.max()) + 1}")

    keras.utils.set_random_seed(context.seed)
    train_idx, test_idx = split(labels, context.seed)
    model = build_model(features.shape[1], len(context.classes))
    rng = np.random.default_rng(context.seed)
    epochs_order = np.concatenate([rng.permutation(train_idx) for _ in range(EPOCHS)])
    model.fit(
        features[epochs_order],
        labels[epochs_order],
        epochs=1,
        batch_size=BATCH_SIZE,
        shuffle=False,
        verbose=0,
        callbacks=[epoch_reporter(context.progress, len(train_idx), EPOCHS)],
    )
    loss, accuracy = model.evaluate(features[test_idx], labels[test_idx], verbose=0)
    return TrainResult(
        model=model,
        metrics={"accuracy": round(float(accuracy), 6), "loss": round(float(loss), 6)},
        data_hash=hashlib.sha256(DATA_FILE.read_bytes()).hexdigest(),
        extra={
            "train_rows": len(train_idx),
            "test_rows": len(test_idx),
            "epochs": EPOCHS,
            "seed": context.seed,
            "hidden_units": list(HIDDEN_UNITS),
        },
    )
