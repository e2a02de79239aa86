"""What every TF Serving API piece (classify, regress, predict) provides, and the values they share.

A piece is one small object: request building (gRPC request and REST body), response parsing,
expectation check, warmup record, diff between two answers, and the signature contract check, plus
the in-process run used by ``import`` and ``predict --local``. Export, import, smoke, promote,
inspect and predict reach it through :func:`deployer.apis.piece` and never ask which API it is.

Everything here is TensorFlow-free except the methods documented as importing it inside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deployer.manifest import ApiName, ModelSpec, SmokeCase
    from deployer.store import SignatureInfo

# A batch of inputs in a piece's own form (rows of features, or named arrays), and an answer in a
# piece's own form (per-example class scores, values, or named arrays). Only the piece looks inside.
Batch = Any
AnswerValue = Any
# Runs a signature in-process: feeds by input alias → outputs by output alias (see deployer.local_run).
SignatureCall = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Verdict:
    """One smoke case judged: ``expected``/``got`` are one-line summaries; ``details`` go to JSON."""

    passed: bool
    expected: str
    got: str | None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseDiff:
    """One smoke case answered by the label's current version and by the candidate.

    ``changed``: the answer's discrete part moved (top class, an argmax, a string or a shape).
    ``delta``: the largest absolute numeric change (a class score, a value, an output element);
    None when nothing numeric compares.
    """

    name: str
    current: str
    candidate: str
    changed: bool
    delta: float | None
    details: dict[str, Any] = field(default_factory=dict)

    # Names of the classify-only era, kept for readers of older code and JSON.
    @property
    def class_changed(self) -> bool:
        return self.changed

    @property
    def score_delta(self) -> float:
        return self.delta or 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "candidate": self.candidate,
            "changed": self.changed,
            "delta": None if self.delta is None else round(self.delta, 6),
            **self.details,
        }


class Api(Protocol):
    """One TF Serving inference API."""

    name: ApiName
    method_name: str  # the SignatureDef method name, e.g. "tensorflow/serving/classify"
    grpc_method: str  # PredictionService RPC: "Classify" | "Regress" | "Predict"
    rest_verb: str  # the REST suffix: ":classify" | ":regress" | ":predict"
    log_field: str  # the PredictionLog field of its warmup records

    # -- manifest (raise ValueError naming the field path under ``where``) -----------------------
    def check_model(self, model: ModelSpec, where: str) -> None: ...

    def check_files(self, model: ModelSpec, where: str) -> None: ...

    # -- the SavedModel's side (raise StoreError) ------------------------------------------------
    def check_contract(self, sig: SignatureInfo, model: ModelSpec) -> None: ...

    # -- inputs --------------------------------------------------------------------------------
    def case_batch(self, model: ModelSpec, case: SmokeCase) -> Batch: ...

    def probe_batch(self, model: ModelSpec) -> Batch: ...

    def warmup_batches(self, model: ModelSpec) -> list[Batch]: ...

    def batch_from_rest(self, model: ModelSpec, doc: Any, where: str) -> Batch: ...

    # -- requests and answers (TF-free) ----------------------------------------------------------
    def grpc_request(self, model: ModelSpec, batch: Batch) -> Any: ...

    def rest_body(self, model: ModelSpec, batch: Batch) -> dict[str, Any]: ...

    def parse_grpc(self, response: Any) -> AnswerValue: ...

    def parse_rest(self, model: ModelSpec, case: SmokeCase | None, payload: Any) -> AnswerValue: ...

    def judge(self, model: ModelSpec, case: SmokeCase, answer: AnswerValue) -> Verdict: ...

    def diff(self, name: str, current: AnswerValue, candidate: AnswerValue) -> CaseDiff: ...

    def to_json(self, answer: AnswerValue) -> list[dict[str, Any]]: ...

    # -- in-process (TensorFlow inside) ----------------------------------------------------------
    def run_local(self, model: ModelSpec, call: SignatureCall, sig: SignatureInfo, batch: Batch) -> AnswerValue: ...

    def export_function(self, keras_model: Any, model: ModelSpec) -> tuple[Callable[..., Any], list[Any]]: ...
