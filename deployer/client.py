"""The only gRPC code: a small, typed client for TF Serving's ModelService and PredictionService.

It never touches Docker or processes, and never imports TensorFlow (protos are loaded light; see
deployer.protos), so commands that only talk to a server stay fast and small.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, text_format

from deployer.errors import ServerRequestError
from deployer.protos import ensure_light_protos

ensure_light_protos()

from tensorflow.core.example import example_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

_STATE_NAMES = {
    number: value.name
    for number, value in get_model_status_pb2.ModelVersionStatus.State.DESCRIPTOR.values_by_number.items()
}
_ERROR_CODE_ENUM = (
    get_model_status_pb2.ModelVersionStatus.DESCRIPTOR.fields_by_name["status"]
    .message_type.fields_by_name["error_code"]
    .enum_type
)

FeatureValue = float | int | str | bytes
_INFERENCE_METHODS = frozenset({"Classify", "Regress", "Predict"})


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # UNKNOWN | START | LOADING | AVAILABLE | UNLOADING | END
    error_code: str  # "OK" or a tensorflow.error.Code name
    error_message: str

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"

    @property
    def failed(self) -> bool:
        """END with a non-OK status is a failed load (END with OK is a normal unload)."""
        return self.state == "END" and self.error_code not in ("OK", "")


@dataclass(frozen=True)
class ClassifyResult:
    model: str
    version: int  # the version the server resolved (echoed model_spec)
    signature_name: str
    results: list[list[tuple[str, float]]]  # per example: (class label, score) pairs
    latency_s: float

    def top(self, index: int = 0) -> tuple[str, float]:
        return max(self.results[index], key=lambda pair: pair[1])


def build_example(features: Mapping[str, FeatureValue]) -> Any:
    """A tf.Example proto with one value per feature (float→float_list, int→int64_list, str/bytes→bytes_list)."""
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, (bool, int)):
            feature.int64_list.value.append(int(value))
        elif isinstance(value, float):
            feature.float_list.value.append(value)
        elif isinstance(value, str):
            feature.bytes_list.value.append(value.encode())
        else:
            feature.bytes_list.value.append(value)
    return example


def _set_version_choice(spec: Any, version: int | None, label: str | None) -> None:
    if version is not None and label is not None:
        raise ValueError("choose a version or a label, not both")
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label


class ServingClient:
    """A blocking client for one server. Every call takes a deadline; errors become ServerRequestError."""

    def __init__(self, target: str, *, timeout: float = 10.0, lb_policy: str | None = None) -> None:
        """``lb_policy`` "round_robin" with a target like ``ipv4:127.0.0.1:p1,127.0.0.1:p2`` spreads the
        requests over several replicas (client-side load balancing; the default policy picks one)."""
        self.target = target
        self.timeout = timeout
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if lb_policy is not None:
            options.append(("grpc.lb_policy_name", lb_policy))
        self._channel = grpc.insecure_channel(target, options=options)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, rpc: Any, request: Any, timeout: float | None) -> Any:
        try:
            return rpc(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            raise ServerRequestError(f"{method} on {self.target}: {name}: {details}", code=name) from None

    def wait_until_reachable(self, timeout: float) -> bool:
        """True once the channel connects (a port that merely opens is not health; see deployer.health)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    # ---- ModelService ---------------------------------------------------------------------
    def model_status(
        self, model: str, *, version: int | None = None, timeout: float | None = None
    ) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        response = self._call("GetModelStatus", self._models.GetModelStatus, request, timeout)
        return [
            VersionStatus(
                version=int(s.version),
                state=_STATE_NAMES.get(s.state, str(s.state)),
                error_code=_ERROR_CODE_ENUM.values_by_number[s.status.error_code].name
                if s.status.error_code in _ERROR_CODE_ENUM.values_by_number
                else str(s.status.error_code),
                error_message=s.status.error_message,
            )
            for s in response.model_version_status
        ]

    def reload_config(self, models_config_text: str, *, timeout: float) -> None:
        """HandleReloadConfigRequest with a deadline. The text is a ModelServerConfig in text format."""
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(models_config_text, request.config)
        response = self._call("HandleReloadConfigRequest", self._models.HandleReloadConfigRequest, request, timeout)
        if response.status.error_code != 0:
            name = _ERROR_CODE_ENUM.values_by_number[response.status.error_code].name
            raise ServerRequestError(
                f"HandleReloadConfigRequest on {self.target}: {name}: {response.status.error_message}", code=name
            )

    # ---- PredictionService ----------------------------------------------------------------
    def classify(
        self,
        model: str,
        examples: Sequence[Mapping[str, FeatureValue]],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = "serving_default",
        timeout: float | None = None,
    ) -> ClassifyResult:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature_name
        _set_version_choice(request.model_spec, version, label)
        for features in examples:
            request.input.example_list.examples.append(build_example(features))
        started = time.perf_counter()
        response = self._call("Classify", self._predictions.Classify, request, timeout)
        latency = time.perf_counter() - started
        return ClassifyResult(
            model=response.model_spec.name,
            version=int(response.model_spec.version.value),
            signature_name=response.model_spec.signature_name,
            results=[[(c.label, float(c.score)) for c in cls.classes] for cls in response.result.classifications],
            latency_s=latency,
        )

    def infer(self, method: str, request: Any, *, timeout: float | None = None) -> tuple[Any, float]:
        """One PredictionService call (``Classify``, ``Regress`` or ``Predict``) of a request built by
        deployer.apis.request_builder; returns the response and its latency in seconds."""
        if method not in _INFERENCE_METHODS:
            raise ValueError(f"unknown inference method {method!r}")
        started = time.perf_counter()
        response = self._call(method, getattr(self._predictions, method), request, timeout)
        return response, time.perf_counter() - started

    def metadata(
        self, model: str, *, version: int | None = None, label: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """GetModelMetadata(signature_def) as a JSON-like dict (TF Serving's REST metadata shape)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        _set_version_choice(request.model_spec, version, label)
        request.metadata_field.append("signature_def")
        response = self._call("GetModelMetadata", self._predictions.GetModelMetadata, request, timeout)
        result: dict[str, Any] = json_format.MessageToDict(response.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" in response.metadata:
            response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": result, "metadata": {"signature_def": json_format.MessageToDict(signature_map)}}
