"""Diabetes trainer: a small Keras regressor on scikit-learn's bundled ``load_diabetes`` data set.

442 patients, ten baseline measurements (unscaled: age in years and sex as integers, the rest floats),
target: a measure of disease progression one year later (25–346). Served through TF Serving's
Regress API: deployer wraps the model in a signature that parses tf.Examples, ``age`` and ``sex`` as
int64_list features (cast to float inside), the others as float_list.

Contract (see :mod:`deployer.trainer`, api ``regress``): ``train(context) -> TrainResult`` whose model
maps float32 ``[B, 10]`` (manifest feature order) to ``[B, 1]``. Seeded split and initialisation.
"""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.datasets import load_diabetes

from deployer.trainer import TrainContext, TrainResult

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
TEST_FRACTION = 0.2
EPOCHS = 120
BATCH_SIZE = 32
LEARNING_RATE = 0.01
HIDDEN_UNITS = 16
STEPS_PER_EXECUTION = 64


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Features float32 [442, 10] in FEATURES order (unscaled), targets float32 [442]."""
    bunch = load_diabetes(scaled=False)
    if tuple(bunch.feature_names) != FEATURES:
        raise ValueError(f"scikit-learn's diabetes columns changed: {bunch.feature_names}")
    return bunch.data.astype(np.float32), bunch.target.astype(np.float32)


def data_hash(features: np.ndarray, targets: np.ndarray) -> str:
    return hashlib.sha256(features.tobytes() + targets.tobytes()).hexdigest()


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def build_model(train_features: np.ndarray, mean_target: float):  # type: ignore[no-untyped-def]
    import keras

    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(train_features)
    model = keras.Sequential(
        [
            keras.Input((train_features.shape[1],), dtype="float32", name="features"),
            normalize,
            keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
            # Start from the mean: the net learns the deviation, not the scale.
            keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(mean_target), name="progression"),
        ],
        name="diabetes_regressor",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE),
        loss="mse",
        metrics=["mae"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return model


def train(context: TrainContext) -> TrainResult:
    import keras

    if tuple(context.feature_names) != FEATURES:
        raise ValueError(f"the manifest's features {context.feature_names} differ from the data's {list(FEATURES)}")
    features, targets = load_data()
    keras.utils.set_random_seed(context.seed)
    train_idx, test_idx = split(len(targets), context.seed)
    model = build_model(features[train_idx], float(targets[train_idx].mean()))
    rng = np.random.default_rng(context.seed)
    order = np.concatenate([rng.permutation(train_idx) for _ in range(EPOCHS)])
    model.fit(features[order], targets[order], epochs=1, batch_size=BATCH_SIZE, shuffle=False, verbose=0)
    predicted = model.predict(features[test_idx], verbose=0).reshape(-1)
    errors = predicted - targets[test_idx]
    ss_res = float(np.sum(errors**2))
    ss_tot = float(np.sum((targets[test_idx] - targets[test_idx].mean()) ** 2))
    return TrainResult(
        model=model,
        metrics={
            "mae": round(float(np.mean(np.abs(errors))), 4),
            "rmse": round(float(np.sqrt(np.mean(errors**2))), 4),
            "r2": round(1.0 - ss_res / ss_tot, 4),
        },
        data_hash=data_hash(features, targets),
        extra={"train_rows": len(train_idx), "test_rows": len(test_idx), "epochs": EPOCHS, "seed": context.seed},
    )
