"""Adapters for fake gRPC clients in unit tests.

deployer sends every inference through ``ServingClient.infer(method, request)`` with a request built by
deployer.apis. Fakes written against the older ``classify(model, rows, ...)`` keep their logic by
mixing in :class:`InferViaClassify`, which decodes the ClassificationRequest and encodes the answer.
"""

from __future__ import annotations

from typing import Any

from deployer.protos import ensure_light_protos

ensure_light_protos()

from tensorflow_serving.apis import classification_pb2  # noqa: E402


def _value(feature: Any) -> Any:
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if kind == "bytes_list":
        values = [v.decode() for v in values]
    return values[0] if len(values) == 1 else values


class InferViaClassify:
    def classify(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - the fake defines it
        raise NotImplementedError

    def infer(self, method: str, request: Any, *, timeout: float | None = None) -> tuple[Any, float]:
        assert method == "Classify", method
        spec = request.model_spec
        version = int(spec.version.value) if spec.HasField("version") else None
        label = spec.version_label or None
        rows = [{k: _value(f) for k, f in ex.features.feature.items()} for ex in request.input.example_list.examples]
        result = self.classify(
            spec.name, rows, version=version, label=label, signature_name=spec.signature_name, timeout=timeout
        )
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = result.model
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for pairs in result.results:
            classes = response.result.classifications.add().classes
            for name, score in pairs:
                classes.add(label=name, score=score)
        return response, result.latency_s
