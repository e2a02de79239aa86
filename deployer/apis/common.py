"""Small checks the pieces share (no TensorFlow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.errors import StoreError, TrainerError

if TYPE_CHECKING:
    from deployer.manifest import ModelSpec, SmokeCase
    from deployer.store import SignatureInfo, TensorInfo

CASE_FIELDS = ("features", "inputs", "inputs_file", "expect_class", "min_score", "expect_value", "tolerance", "expect")
MODEL_FIELDS = ("features", "classes", "inputs", "outputs")


def reject_fields(model: ModelSpec, allowed: tuple[str, ...], api: str, where: str) -> None:
    """A model field that belongs to another API is an error naming that field."""
    for name in MODEL_FIELDS:
        if name not in allowed and getattr(model, name) is not None:
            raise ValueError(f"{where}.{name}: not a field of a {api} model")
    for index, case in enumerate(model.smoke):
        for name in CASE_FIELDS:
            if name not in allowed and getattr(case, name) is not None:
                raise ValueError(f"{where}.smoke[{index}].{name}: not a field of a {api} smoke case")


def single_input(sig: SignatureInfo, alias: str, api: str) -> TensorInfo:
    """The one rank-1 DT_STRING input of a Classify/Regress signature (serialized tf.Examples)."""
    where = f"signature {sig.name!r}"
    inputs = {t.name: t for t in sig.inputs}
    if list(inputs) != [alias]:
        raise StoreError(f"{where}: expected exactly one input {alias!r} for {api}, found {sorted(inputs)}")
    tensor = inputs[alias]
    if tensor.dtype != "DT_STRING" or (tensor.shape is not None and len(tensor.shape) != 1):
        raise StoreError(f"{where}: input {alias!r} must be rank-1 DT_STRING, is {tensor.dtype} {tensor.shape}")
    return tensor


def trainer_error(model: ModelSpec, message: str) -> TrainerError:
    return TrainerError(f"trainer {model.trainer!r}: {message}")


def no_string_features(model: ModelSpec) -> None:
    strings = [f.name for f in model.features or [] if f.dtype == "string"]
    if strings:
        raise trainer_error(
            model,
            f"string feature(s) {', '.join(strings)} cannot feed a float32 [batch, n_features] model; "
            "export such a model yourself and give it as saved_model",
        )


def describe_case(case: SmokeCase, index: int) -> str:
    return case.name or f"case-{index + 1}"


def distinct(value: float, reference: float, *, digits: int = 3) -> str:
    """``value`` with enough decimals (at least ``digits``, up to 8) to differ visibly from ``reference``:
    "0.4996 < 0.5" instead of "0.500 < 0.500"."""
    for places in range(digits, 9):
        if f"{value:.{places}f}" != f"{reference:.{places}f}":
            return f"{value:.{places}f}"
    return f"{value:.8f}"
