"""The one place requests are built: a smoke case (or a probe) of a model → the gRPC request of its API
with the model spec filled in, or its REST URL and body. Like TFX InfraValidator's request_builder.py,
by the signature's API; unlike it, the answers are then checked (deployer.smoke).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deployer.apis.base import Api, Batch

if TYPE_CHECKING:
    from deployer.manifest import ModelSpec


@dataclass(frozen=True)
class Target:
    """Which servable a request goes to: a version, a label, or (neither) the latest."""

    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.label is not None:
            raise ValueError("choose a version or a label, not both")


def grpc_request(api: Api, model: ModelSpec, batch: Batch, target: Target) -> Any:
    """The PredictionService request for ``batch``, addressed to ``target``."""
    request = api.grpc_request(model, batch)
    request.model_spec.name = model.name
    request.model_spec.signature_name = model.signature_name
    if target.version is not None:
        request.model_spec.version.value = target.version
    elif target.label is not None:
        request.model_spec.version_label = target.label
    return request


def rest_url(api: Api, rest_base: str, model: str, target: Target) -> str:
    """``POST /v1/models/{m}[/versions/N|/labels/L]:{classify|regress|predict}``."""
    path = f"/v1/models/{model}"
    if target.version is not None:
        path += f"/versions/{target.version}"
    elif target.label is not None:
        path += f"/labels/{target.label}"
    return rest_base.rstrip("/") + path + ":" + api.rest_verb


def rest_body(api: Api, model: ModelSpec, batch: Batch) -> dict[str, Any]:
    return {"signature_name": model.signature_name, **api.rest_body(model, batch)}


def warmup_records(api: Api, model: ModelSpec) -> list[bytes]:
    """Serialized PredictionLogs for ``assets.extra/tf_serving_warmup_requests`` from the smoke cases, or
    one probe when there are none (TF Serving replays them before it reports a version AVAILABLE)."""
    from deployer.protos import ensure_light_protos

    ensure_light_protos()
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for batch in api.warmup_batches(model):
        log = prediction_log_pb2.PredictionLog()
        getattr(log, api.log_field).request.CopyFrom(grpc_request(api, model, batch, Target()))
        records.append(log.SerializeToString())
    return records
