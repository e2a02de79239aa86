"""The trainer contract, and loading a manifest's ``module:function`` trainer.

A trainer is a plain function named in the manifest (``trainer: models.iris.trainer:train``),
imported with the manifest's ``project_root`` on ``sys.path``::

    def train(context: TrainContext) -> TrainResult: ...

It returns a :class:`TrainResult` whose ``model`` is a Keras model of the shape the model's API
(``context.api``) wants:

- ``classify``: float32 ``[batch, len(context.feature_names)]`` (columns in the manifest's feature
  order; int features arrive cast to float) → class probabilities ``[batch, len(context.classes)]``;
- ``regress``: the same input → one value per row, ``[batch]`` or ``[batch, 1]``;
- ``predict``: the manifest's ``inputs`` (``context.inputs``, in order; one input → one tensor, several
  → a list) → one tensor, a list, or a dict of named outputs (names from ``context.outputs`` when the
  manifest declares them, else ``outputs``).

The trainer never exports: :mod:`deployer.export` wraps the model in its API's TF Serving signature
(tf.Example parsing and class labels for Classify/Regress, the named tensors for Predict), so every
model of an API gets the same serving contract.

This module does not import TensorFlow; the trainer module usually does.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.errors import TrainerError
from deployer.manifest import Manifest, ModelSpec

DEFAULT_SEED = 42

Progress = Callable[[str], None]


def _silent(message: str) -> None:
    del message


@dataclass(frozen=True)
class TrainContext:
    """What deployer hands a trainer.

    ``progress`` takes one-line reports of a long training (``"epoch 60/300: loss 0.41"``); deployer
    shows them while the trainer runs. Calling it is optional and cheap; it never prints by itself.
    """

    model_name: str
    feature_names: list[str]
    classes: list[str]
    project_root: Path
    seed: int = DEFAULT_SEED
    api: str = "classify"
    # predict: the manifest's inputs/outputs as {"name", "dtype", "shape"} (shape with -1 for the batch).
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress = _silent


@dataclass
class TrainResult:
    """What a trainer returns.

    ``model``: a Keras model of the API's shape (see the module docstring).
    ``metrics``: held-out metrics (e.g. ``accuracy``, ``mae``); stored in the version's metadata.
    ``data_hash``: sha256 (hex) of the training data, for provenance.
    ``extra``: anything else worth keeping in the metadata (split sizes, epochs, ...).
    """

    model: Any
    metrics: dict[str, float]
    data_hash: str
    extra: dict[str, Any] = field(default_factory=dict)


Trainer = Callable[[TrainContext], TrainResult]


def context_for(
    manifest: Manifest, model: ModelSpec, *, seed: int = DEFAULT_SEED, progress: Progress | None = None
) -> TrainContext:
    return TrainContext(
        model_name=model.name,
        feature_names=model.feature_names,
        classes=model.class_names,
        project_root=manifest.root,
        seed=seed,
        api=model.declared_api or "classify",
        inputs=[t.model_dump() for t in model.inputs or []],
        outputs=[t.model_dump() for t in model.outputs or []],
        progress=progress or _silent,
    )


def load_trainer(manifest: Manifest, model: ModelSpec) -> Trainer:
    """Import ``module:function`` with the project root on sys.path. Raises TrainerError."""
    if model.trainer is None:
        raise TrainerError(f"model {model.name} has no trainer")
    module_name, _, function_name = model.trainer.partition(":")
    root = str(manifest.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TrainerError(
            f"trainer {model.trainer!r}: cannot import module {module_name!r} ({exc})",
            hint=f"the module is imported with the project root {root} on sys.path",
        ) from None
    except Exception as exc:  # the trainer's own import-time failure, whatever it is
        raise TrainerError(
            f"trainer {model.trainer!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise TrainerError(f"trainer {model.trainer!r}: module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise TrainerError(f"trainer {model.trainer!r}: {function_name!r} is not callable")
    trainer: Trainer = function
    return trainer


def run_trainer(
    manifest: Manifest, model: ModelSpec, *, seed: int = DEFAULT_SEED, progress: Progress | None = None
) -> TrainResult:
    """Load and call the trainer; check it kept the contract."""
    trainer = load_trainer(manifest, model)
    result = trainer(context_for(manifest, model, seed=seed, progress=progress))
    if not isinstance(result, TrainResult):
        raise TrainerError(
            f"trainer {model.trainer!r} returned {type(result).__name__}, expected deployer.trainer.TrainResult"
        )
    return result
