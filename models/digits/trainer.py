"""Digits trainer: a small Keras CNN on scikit-learn's bundled ``load_digits`` (1797 8×8 images, 0–9).

Served through TF Serving's Predict API: input ``image`` float32 ``[B, 8, 8, 1]`` with raw pixel
intensities 0–16 (as load_digits gives them; the model rescales), output ``probabilities`` float32
``[B, 10]``.

Contract (see :mod:`deployer.trainer`, api ``predict``): ``train(context) -> TrainResult`` whose model
takes the manifest's one input and returns one tensor, named by the manifest's ``outputs``.
"""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.datasets import load_digits

from deployer.trainer import TrainContext, TrainResult

TEST_PER_CLASS = 20
EPOCHS = 15
BATCH_SIZE = 32
LEARNING_RATE = 0.003


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [1797, 8, 8, 1] (0–16), labels int64 [1797]."""
    bunch = load_digits()
    return bunch.images.astype(np.float32)[..., np.newaxis], bunch.target.astype(np.int64)


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified and seeded: TEST_PER_CLASS images of each digit held out."""
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [rng.choice(np.flatnonzero(labels == d), TEST_PER_CLASS, replace=False) for d in range(10)]
    )
    train_idx = np.setdiff1d(np.arange(len(labels)), test)
    return rng.permutation(train_idx), np.sort(test)


def build_model():  # type: ignore[no-untyped-def]
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), dtype="float32", name="image"),
            keras.layers.Rescaling(1.0 / 16.0),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(context: TrainContext) -> TrainResult:
    import keras

    shapes = [tuple(spec["shape"]) for spec in context.inputs]
    if shapes != [(-1, 8, 8, 1)]:
        raise ValueError(f"the manifest must declare one input of shape [-1, 8, 8, 1], not {shapes}")
    images, labels = load_data()
    keras.utils.set_random_seed(context.seed)
    train_idx, test_idx = split(labels, context.seed)
    model = build_model()
    model.fit(images[train_idx], labels[train_idx], epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True, verbose=0)
    loss, accuracy = model.evaluate(images[test_idx], labels[test_idx], verbose=0)
    return TrainResult(
        model=model,
        metrics={"accuracy": round(float(accuracy), 6), "loss": round(float(loss), 6)},
        data_hash=hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest(),
        extra={"train_rows": len(train_idx), "test_rows": len(test_idx), "epochs": EPOCHS, "seed": context.seed},
    )
