"""TF Serving's three inference APIs, one piece each, in a registry keyed by API name.

Export, import, smoke, promote, inspect and predict ask :func:`piece` (or :func:`for_signature` when
only the SavedModel's method name can tell) for the model's piece and use it; none of them branches
on the API. Adding an API means adding a piece here, nothing elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deployer.apis.base import Api, CaseDiff, Verdict
from deployer.apis.classify import API as CLASSIFY
from deployer.apis.predict import API as PREDICT
from deployer.apis.regress import API as REGRESS
from deployer.errors import StoreError

if TYPE_CHECKING:
    from deployer.manifest import ModelSpec
    from deployer.store import SignatureInfo

__all__ = ["API_NAMES", "Api", "CaseDiff", "Verdict", "check_undeclared", "for_signature", "piece", "resolve"]

_PIECES: dict[str, Api] = {p.name: p for p in (CLASSIFY, REGRESS, PREDICT)}
API_NAMES = tuple(_PIECES)
_BY_METHOD: dict[str, Api] = {p.method_name: p for p in _PIECES.values()}


def piece(name: str) -> Api:
    return _PIECES[name]


def for_signature(sig: SignatureInfo) -> Api:
    """The API a signature's method name names (TF1 exports say classify/regress; TF2 always says predict)."""
    found = _BY_METHOD.get(sig.method_name)
    if found is None:
        raise StoreError(
            f"signature {sig.name!r} has method name {sig.method_name!r}, which names no TF Serving API",
            hint="set models[].api to classify, regress or predict",
        )
    return found


def resolve(model: ModelSpec, sig: SignatureInfo | None = None) -> Api:
    """The model's piece: the manifest's (declared or implied) API, else the signature's method name."""
    declared = model.declared_api
    if declared is not None:
        return piece(declared)
    if sig is None:
        raise StoreError(
            f"model {model.name}: the manifest does not say which API it serves and no version is there to ask",
            hint="set models[].api to classify, regress or predict",
        )
    return for_signature(sig)


def check_undeclared(model: ModelSpec, where: str) -> None:
    """A model whose API only its SavedModel will tell: every smoke case must carry an expectation."""
    for index, case in enumerate(model.smoke):
        if case.kind is None:
            raise ValueError(
                f"{where}.smoke[{index}]: a case needs an expectation: expect_class (classify), "
                "expect_value (regress), or inputs/inputs_file (predict)"
            )
