"""The Regress API: tf.Example features in, one float per example out.

Contract (TF Serving's regressor.cc, method-name check off): one input ``inputs``, a 1-D DT_STRING batch
of serialized tf.Examples; one output ``outputs``, DT_FLOAT of shape [B] or [B, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deployer.apis import common, examples
from deployer.apis.base import CaseDiff, SignatureCall, Verdict
from deployer.apis.classify import feature_parser, probe_shape
from deployer.errors import StoreError
from deployer.protos import ensure_light_protos

if TYPE_CHECKING:
    from deployer.manifest import ApiName, ModelSpec, SmokeCase
    from deployer.store import SignatureInfo

INPUT = "inputs"
OUTPUT = "outputs"
FIELDS = ("features", "expect_value", "tolerance")
# float32 answers: a value written in the manifest as 152.3 comes back as 152.300003.
FLOAT32_SLACK = 1e-6

Answer = list[float]


def _allowed(case: SmokeCase) -> float:
    expect = float(case.expect_value or 0.0)
    return (case.tolerance or 0.0) + FLOAT32_SLACK * max(1.0, abs(expect))


class RegressApi(examples.ExampleInputs):
    name: ApiName = "regress"
    method_name = "tensorflow/serving/regress"
    grpc_method = "Regress"
    rest_verb = "regress"
    log_field = "regress_log"

    # -- manifest ---------------------------------------------------------------------------------
    def check_model(self, model: ModelSpec, where: str) -> None:
        common.reject_fields(model, FIELDS, self.name, where)
        if model.features is None:
            raise ValueError(f"{where}.features: a regress model needs its tf.Example features")
        for index, case in enumerate(model.smoke):
            at = f"{where}.smoke[{index}]"
            if case.features is None:
                raise ValueError(f"{at}.features: Field required")
            examples.check_row(model, case.features, f"{at}.features")
            if case.expect_value is None:
                raise ValueError(f"{at}.expect_value: Field required")

    def check_files(self, model: ModelSpec, where: str) -> None:
        del model, where

    # -- contract ---------------------------------------------------------------------------------
    def check_contract(self, sig: SignatureInfo, model: ModelSpec) -> None:
        del model
        where = f"signature {sig.name!r}"
        common.single_input(sig, INPUT, "Regress")
        outputs = {t.name: t for t in sig.outputs}
        if list(outputs) != [OUTPUT]:
            raise StoreError(f"{where}: expected exactly one output {OUTPUT!r} for Regress, found {sorted(outputs)}")
        out = outputs[OUTPUT]
        if out.dtype != "DT_FLOAT":
            raise StoreError(f"{where}: output {OUTPUT!r} must be DT_FLOAT, is {out.dtype}")
        if out.shape is not None and not (len(out.shape) == 1 or (len(out.shape) == 2 and out.shape[1] in (1, -1))):
            raise StoreError(f"{where}: output {OUTPUT!r} must have shape [-1] or [-1, 1], is {out.shape}")

    # -- inputs and requests: the shared tf.Example half (examples.ExampleInputs) --------------------
    def _new_request(self) -> Any:
        ensure_light_protos()
        from tensorflow_serving.apis import regression_pb2

        return regression_pb2.RegressionRequest()

    # -- answers ------------------------------------------------------------------------------------
    def parse_grpc(self, response: Any) -> Answer:
        return [float(r.value) for r in response.result.regressions]

    def parse_rest(self, model: ModelSpec, case: SmokeCase | None, payload: Any) -> Answer:
        del model, case
        try:
            return [float(value) for value in payload["results"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unexpected regress response: {str(payload)[:200]}") from exc

    def judge(self, model: ModelSpec, case: SmokeCase, answer: Answer) -> Verdict:
        del model
        expect = float(case.expect_value or 0.0)
        tolerance = case.tolerance or 0.0
        expected = f"{expect:g} ± {tolerance:g}"
        if not answer:
            return Verdict(False, expected, None, "no value in the answer", {"value": None})
        value = answer[0]
        details = {"value": value, "expect_value": expect, "tolerance": tolerance}
        if not np.isfinite(value) or abs(value - expect) > _allowed(case):
            reason = f"expected {expect:g} ± {tolerance:g}, got {value:.6g} (off by {abs(value - expect):.6g})"
            return Verdict(False, expected, f"{value:.6g}", reason, details)
        return Verdict(True, expected, f"{value:.6g}", "", details)

    def diff(self, name: str, current: Answer, candidate: Answer) -> CaseDiff:
        before, after = current[0], candidate[0]
        return CaseDiff(name, f"{before:.6g}", f"{after:.6g}", False, abs(after - before))

    def to_json(self, answer: Answer) -> list[dict[str, Any]]:
        return [{"value": value} for value in answer]

    # -- in-process ---------------------------------------------------------------------------------
    def run_local(
        self, model: ModelSpec, call: SignatureCall, sig: SignatureInfo, batch: list[Mapping[str, Any]]
    ) -> Answer:
        del sig
        outputs = call({INPUT: np.array(examples.serialize(model, batch), dtype=object)})
        return [float(v) for v in np.asarray(outputs[OUTPUT]).reshape(-1)]

    def export_function(self, keras_model: Any, model: ModelSpec) -> tuple[Callable[..., Any], list[Any]]:
        """TensorFlow inside. The trainer contract: float32 [B, n_features] → values [B] or [B, 1]."""
        import tensorflow as tf

        common.no_string_features(model)
        n_features = len(model.feature_names)
        shape = probe_shape(keras_model, model, n_features)
        if shape not in ((2,), (2, 1)):
            raise common.trainer_error(
                model, f"its model maps [2, {n_features}] to {list(shape)}, expected [2] or [2, 1]"
            )
        parse = feature_parser(model)

        def regress(inputs: Any) -> dict[str, Any]:
            values = tf.cast(keras_model(parse(inputs), training=False), tf.float32)
            return {OUTPUT: tf.reshape(values, [-1])}

        return regress, [tf.TensorSpec([None], tf.string, name=INPUT)]


API = RegressApi()
