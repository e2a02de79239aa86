"""The Classify API: tf.Example features in, (class label, score) pairs out.

Contract (TF Serving's classifier.cc with the default ``--enable_signature_method_name_check=false``):
one input ``inputs``, a 1-D DT_STRING batch of serialized tf.Examples; one or two outputs, ``classes``
[B, K] DT_STRING and/or ``scores`` [B, K] DT_FLOAT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from deployer.apis import common, examples
from deployer.apis.base import CaseDiff, SignatureCall, Verdict
from deployer.errors import StoreError
from deployer.protos import ensure_light_protos

if TYPE_CHECKING:
    from deployer.manifest import ApiName, ModelSpec, SmokeCase
    from deployer.store import SignatureInfo

INPUT = "inputs"
CLASSES = "classes"
SCORES = "scores"
FIELDS = ("features", "classes", "expect_class", "min_score")

# Per example: (class label, score) pairs in the signature's column order.
Answer = list[list[tuple[str, float]]]


def _labels(model: ModelSpec, pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """A scores-only signature answers with empty labels: name columns by the manifest's classes, or index."""
    names = model.class_names
    return [(label or (names[i] if i < len(names) else str(i)), score) for i, (label, score) in enumerate(pairs)]


def _top(pairs: list[tuple[str, float]]) -> tuple[str, float]:
    return max(pairs, key=lambda pair: pair[1])


class ClassifyApi(examples.ExampleInputs):
    name: ApiName = "classify"
    method_name = "tensorflow/serving/classify"
    grpc_method = "Classify"
    rest_verb = "classify"
    log_field = "classify_log"

    # -- manifest ---------------------------------------------------------------------------------
    def check_model(self, model: ModelSpec, where: str) -> None:
        common.reject_fields(model, FIELDS, self.name, where)
        if model.features is None:
            raise ValueError(f"{where}.features: a classify model needs its tf.Example features")
        if model.classes is None and model.trainer is not None:
            raise ValueError(f"{where}.classes: a trainer-built classify model needs its classes")
        for index, case in enumerate(model.smoke):
            at = f"{where}.smoke[{index}]"
            if case.features is None:
                raise ValueError(f"{at}.features: Field required")
            examples.check_row(model, case.features, f"{at}.features")
            if case.expect_class is None:
                raise ValueError(f"{at}.expect_class: Field required")
            if model.classes is not None and case.expect_class not in model.classes:
                raise ValueError(
                    f"{at}.expect_class: {case.expect_class!r} is not one of the model's classes {model.classes}"
                )

    def check_files(self, model: ModelSpec, where: str) -> None:
        del model, where

    # -- contract ---------------------------------------------------------------------------------
    def check_contract(self, sig: SignatureInfo, model: ModelSpec) -> None:
        where = f"signature {sig.name!r}"
        common.single_input(sig, INPUT, "Classify")
        outputs = {t.name: t for t in sig.outputs}
        known = [name for name in (CLASSES, SCORES) if name in outputs]
        if not known or len(outputs) != len(known):
            raise StoreError(
                f"{where}: expected outputs {CLASSES!r} and/or {SCORES!r} for Classify, found {sorted(outputs)}"
            )
        n_classes = len(model.classes) if model.classes is not None else None
        wanted = f"[-1, {n_classes if n_classes is not None else 'num_classes'}]"
        columns = set()
        for name, dtype in ((CLASSES, "DT_STRING"), (SCORES, "DT_FLOAT")):
            out = outputs.get(name)
            if out is None:
                continue
            if out.dtype != dtype:
                raise StoreError(f"{where}: output {name!r} must be {dtype}, is {out.dtype}")
            if out.shape is None or len(out.shape) != 2 or out.shape[0] != -1:
                raise StoreError(f"{where}: output {name!r} must have shape {wanted}, is {out.shape}")
            if out.shape[1] != -1:
                columns.add(out.shape[1])
        if len(columns) > 1:
            raise StoreError(f"{where}: outputs {CLASSES!r} and {SCORES!r} have different numbers of columns")
        if columns and n_classes is not None and columns != {n_classes}:
            raise StoreError(
                f"{where}: output {SCORES if SCORES in outputs else CLASSES!r} has {columns.pop()} columns, "
                f"the manifest lists {n_classes} classes"
            )

    # -- inputs and requests: the shared tf.Example half (examples.ExampleInputs) --------------------
    def _new_request(self) -> Any:
        ensure_light_protos()
        from tensorflow_serving.apis import classification_pb2

        return classification_pb2.ClassificationRequest()

    # -- answers ------------------------------------------------------------------------------------
    def parse_grpc(self, response: Any) -> Answer:
        return [[(c.label, float(c.score)) for c in cls.classes] for cls in response.result.classifications]

    def parse_rest(self, model: ModelSpec, case: SmokeCase | None, payload: Any) -> Answer:
        del model, case
        try:
            return [[(str(label), float(score)) for label, score in result] for result in payload["results"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unexpected classify response: {str(payload)[:200]}") from exc

    def judge(self, model: ModelSpec, case: SmokeCase, answer: Answer) -> Verdict:
        expected = str(case.expect_class)
        min_score = case.min_score or 0.0
        details: dict[str, Any] = {"min_score": min_score, "score": None}
        if not answer or not answer[0]:
            return Verdict(False, expected, None, "no classes in the answer", details)
        got, score = _top(_labels(model, answer[0]))
        details["score"] = score
        if got != expected:
            return Verdict(
                False, expected, got, f"expected class {expected!r}, got {got!r} (score {score:.3f})", details
            )
        if score < min_score:
            reason = f"class {got!r} scored {common.distinct(score, min_score)}, below min_score {min_score:g}"
            return Verdict(False, expected, got, reason, details)
        return Verdict(True, expected, got, "", details)

    def diff(self, name: str, current: Answer, candidate: Answer) -> CaseDiff:
        before, after = dict(current[0]), dict(candidate[0])
        # The largest change of any class's score: independent of which class wins, so a shift that
        # does not (yet) flip the answer still shows.
        delta = max((abs(before.get(c, 0.0) - after.get(c, 0.0)) for c in set(before) | set(after)), default=0.0)
        now, new = _top(current[0])[0], _top(candidate[0])[0]
        return CaseDiff(name, now, new, now != new, delta)

    def to_json(self, answer: Answer) -> list[dict[str, Any]]:
        out = []
        for pairs in answer:
            label, score = _top(pairs)
            out.append({"class": label, "probability": score, "scores": dict(pairs)})
        return out

    # -- in-process ---------------------------------------------------------------------------------
    def run_local(
        self, model: ModelSpec, call: SignatureCall, sig: SignatureInfo, batch: list[Mapping[str, Any]]
    ) -> Answer:
        outputs = call({INPUT: np.array(examples.serialize(model, batch), dtype=object)})
        scores = outputs.get(SCORES)
        classes = outputs.get(CLASSES)
        rows = len(batch)
        answer: Answer = []
        for i in range(rows):
            row_scores = [float(s) for s in scores[i]] if scores is not None else []
            row_labels = [c.decode("utf-8", "replace") for c in classes[i]] if classes is not None else []
            width = max(len(row_scores), len(row_labels))
            pairs = [
                (row_labels[j] if j < len(row_labels) else "", row_scores[j] if j < len(row_scores) else 0.0)
                for j in range(width)
            ]
            answer.append(_labels(model, pairs))
        return answer

    def export_function(self, keras_model: Any, model: ModelSpec) -> tuple[Callable[..., Any], list[Any]]:
        """TensorFlow inside. The trainer contract: float32 [B, n_features] → probabilities [B, n_classes]."""
        import tensorflow as tf

        common.no_string_features(model)
        if model.classes is None:
            raise common.trainer_error(model, "a trainer-built classify model needs classes in the manifest")
        n_features, n_classes = len(model.feature_names), len(model.classes)
        shape = _probe_shape(keras_model, model, n_features)
        if shape != (2, n_classes):
            raise common.trainer_error(
                model, f"its model maps [2, {n_features}] to {list(shape)}, expected [2, {n_classes}]"
            )
        parse = feature_parser(model)
        class_row = tf.constant([model.classes], dtype=tf.string)

        def classify(inputs: Any) -> dict[str, Any]:
            scores = tf.cast(keras_model(parse(inputs), training=False), tf.float32)
            classes = tf.tile(class_row, [tf.shape(inputs)[0], 1])
            return {CLASSES: classes, SCORES: scores}

        return classify, [tf.TensorSpec([None], tf.string, name=INPUT)]


def _probe_shape(keras_model: Any, model: ModelSpec, n_features: int) -> tuple[int, ...]:
    """Call the trainer's model on zeros [2, n_features]; its output shape, or a TrainerError."""
    try:
        probe = keras_model(np.zeros((2, n_features), dtype=np.float32), training=False)
        return tuple(int(d) for d in probe.shape)
    except Exception as exc:  # any failure here means the trainer broke the contract
        raise common.trainer_error(
            model, f"its model does not accept float32 [batch, {n_features}]: {type(exc).__name__}: {exc}"
        ) from None


def feature_parser(model: ModelSpec) -> Callable[[Any], Any]:
    """TensorFlow inside: serialized tf.Examples → float32 [B, n_features] in manifest order (ints cast)."""
    import tensorflow as tf

    kinds = {"float": tf.float32, "int": tf.int64}
    spec = {f.name: tf.io.FixedLenFeature([], kinds[f.dtype]) for f in model.features or []}
    names = model.feature_names

    def parse(inputs: Any) -> Any:
        parsed = tf.io.parse_example(inputs, spec)
        return tf.stack([tf.cast(parsed[name], tf.float32) for name in names], axis=1)

    return parse


probe_shape = _probe_shape
API = ClassifyApi()
