"""TF Serving's REST API (http_rest_api_handler.cc, json_tensor.cc) on a stdlib ThreadingHTTPServer.

- GET ``/v1/models/{m}[/versions/{v}|/labels/{l}]`` → model status (``/labels/l`` ignored, as upstream);
  ``.../metadata`` → model metadata.
- POST ``/v1/models/{m}[/versions/{v}|/labels/{l}]:(classify|regress|predict)``.
- Errors are ``{"error": "..."}`` with TF Serving's gRPC→HTTP status mapping.
- JSON→tf.Example: string → bytes_list, ``{"b64": ...}`` → bytes_list, integer/bool → int64_list,
  decimal/exponent number → float_list. NaN/Infinity are read and written as bare tokens.

Ours, not TF Serving's: JSON parse error texts come from Python's json module; paths outside
``/v1/`` and the metrics path get 404 with a JSON error body; ``--rest_api_timeout_in_ms`` bounds
only the time a request waits in a batching queue.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, regression_pb2

from deployer.model_server import grpc_api
from deployer.model_server.manager import STATE_NAMES, ServerCore
from deployer.model_server.metrics import Metrics
from deployer.model_server.status import HTTP_STATUS, ServingError, invalid

log = logging.getLogger(__name__)

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_RE = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# -- JSON <-> tf.Example ----------------------------------------------------------------------------


def _feature_values(name: str, value: Any) -> tuple[str, list[Any]]:
    items = value if isinstance(value, list) else [value]
    kind = ""
    out: list[Any] = []
    for item in items:
        converted: Any
        if isinstance(item, dict):
            if set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise invalid(f'Feature \'{name}\': an object value must be {{"b64": "..."}}')
            try:
                item_kind, converted = "bytes", base64.b64decode(item["b64"], validate=True)
            except ValueError as exc:
                raise invalid(f"Feature '{name}': invalid base64 in 'b64' value") from exc
        elif isinstance(item, str):
            item_kind, converted = "bytes", item.encode("utf-8")
        elif isinstance(item, bool | int):
            if not _INT64_MIN <= int(item) <= _INT64_MAX:
                raise invalid(f"Feature '{name}': integer {item} does not fit in int64")
            item_kind, converted = "int64", int(item)
        elif isinstance(item, float):
            item_kind, converted = "float", item
        else:
            raise invalid(
                f"Feature '{name}': only int64, float or bytes (string, {{\"b64\": ...}}) values are supported"
            )
        if kind and item_kind != kind:
            raise invalid(
                f"Feature '{name}': all values of a feature must have the same type (got {kind} and {item_kind})"
            )
        kind = item_kind
        out.append(converted)
    return kind or "float", out


def example_from_json(obj: Any) -> Any:
    """One JSON object → tf.Example (``1`` → int64_list, ``1.0`` → float_list, as json_tensor.cc)."""
    if not isinstance(obj, dict):
        raise invalid("Each example must be a JSON object of feature name to value(s)")
    example = example_pb2.Example()
    for name, value in obj.items():
        kind, values = _feature_values(name, value)
        feature = example.features.feature[name]
        if kind == "bytes":
            feature.CopyFrom(feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=values)))
        elif kind == "int64":
            feature.CopyFrom(feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values)))
        else:
            feature.CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values)))
    return example


def fill_input_from_json(body: dict[str, Any], input_proto: Any) -> None:
    if "examples" not in body:
        raise invalid("Missing 'examples' key in the request body")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise invalid("'examples' must be a JSON array of objects")
    if "context" in body:
        target = input_proto.example_list_with_context
        target.context.CopyFrom(example_from_json(body["context"]))
    else:
        target = input_proto.example_list
    for obj in examples:
        target.examples.add().CopyFrom(example_from_json(obj))
    if not examples:
        # An empty list still selects the kind, so the classifier reports "Input is empty."
        input_proto.example_list.SetInParent()


def _float32(value: float) -> float:
    # Print float32 results with their shortest float32 form (0.1, not 0.10000000149011612).
    return float(str(np.float32(value)))


def _tensor_json(value: np.ndarray, alias: str) -> Any:
    if value.dtype == np.object_ or value.dtype.kind == "S":
        if alias.endswith("_bytes"):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object])(value).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(value).tolist()
    if value.dtype == np.float32 or value.dtype == np.float16:
        return np.vectorize(_float32, otypes=[object])(value).tolist() if value.size else value.tolist()
    return value.tolist()


def _json_to_array(name: str, value: Any, dtype: int) -> np.ndarray:
    tf_dtype = tf.dtypes.as_dtype(dtype)

    def decode(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) != {"b64"}:
                raise invalid(f'Input \'{name}\': an object value must be {{"b64": "..."}}')
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [decode(x) for x in v]
        if isinstance(v, str):
            return v.encode("utf-8")
        return v

    try:
        if tf_dtype == tf.string:
            arr = np.array(decode(value), dtype=object)
        else:
            if _contains(value, (str, dict)):
                raise invalid(f"Input '{name}': expected {tf_dtype.name} values, got strings")
            arr = np.array(value, dtype=tf_dtype.as_numpy_dtype)
    except (ValueError, TypeError) as exc:
        raise invalid(f"Input '{name}': cannot convert to a {tf_dtype.name} tensor: {exc}") from exc
    if arr.dtype == object and tf_dtype != tf.string:
        raise invalid(f"Input '{name}': ragged lists are not allowed")
    return arr


def _contains(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, list):
        return any(_contains(v, kinds) for v in value)
    return isinstance(value, kinds)


# -- the handler ------------------------------------------------------------------------------------


class RestApi:
    def __init__(self, core: ServerCore, metrics: Metrics, prometheus_path: str | None, timeout_ms: int) -> None:
        self.core = core
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self.timeout_ms = timeout_ms

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        if method == "GET" and self.prometheus_path is not None and path == self.prometheus_path:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.exposition()
        if not path.lower().startswith("/v1/"):
            return 404, "application/json", b'{ "error": "Not found" }'
        started = time.perf_counter()
        model, api = "", "REST"
        try:
            if method == "POST" and (m := _PREDICT_RE.fullmatch(path)):
                model, api = m.group(1), m.group(4).lower()
                result = self._predict(m.group(1), m.group(2), m.group(3), api, body)
            elif method == "GET" and (m := _STATUS_RE.fullmatch(path)):
                model = m.group(1)
                if m.group(4):
                    api = "GetModelMetadata"
                    result = self._metadata(m.group(1), m.group(2), m.group(3))
                else:
                    api = "GetModelStatus"
                    result = self._status(m.group(1), m.group(2))
            else:
                raise invalid(f"Malformed request: {method} {path}")
            status, payload = 200, result
        except ServingError as exc:
            status, payload = HTTP_STATUS.get(exc.code, 500), {"error": exc.message}
            self.metrics.record_request(model, api, "REST", exc.code_name, (time.perf_counter() - started) * 1e6)
            return status, "application/json", json.dumps(payload).encode("utf-8")
        except Exception as exc:
            log.exception("REST %s %s failed", method, path)
            return 500, "application/json", json.dumps({"error": str(exc)}).encode("utf-8")
        self.metrics.record_request(model, api, "REST", "OK", (time.perf_counter() - started) * 1e6)
        return status, "application/json", json.dumps(payload, indent=1).encode("utf-8")

    def _spec(self, spec: Any, model: str, version: str | None, label: str | None) -> None:
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label

    def _status(self, model: str, version: str | None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = int(version)
        response = grpc_api.model_status(self.core, request)
        return {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": STATE_NAMES.get(s.state, "UNKNOWN"),
                    "status": {
                        "error_code": grpc_code_name(s.status.error_code),
                        "error_message": s.status.error_message,
                    },
                }
                for s in response.model_version_status
            ]
        }

    def _metadata(self, model: str, version: str | None, label: str | None) -> Any:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = grpc_api.model_metadata(self.core, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {
            "model_spec": {
                "name": response.model_spec.name,
                "signature_name": "",
                "version": str(response.model_spec.version.value),
            },
            "metadata": {"signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)},
        }

    def _parse(self, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
        except json.JSONDecodeError as exc:
            raise invalid(f"JSON Parse error: {exc.msg}. at offset: {exc.pos}") from exc
        if not isinstance(doc, dict):
            raise invalid("JSON Value not an object")
        return doc

    def _predict(self, model: str, version: str | None, label: str | None, api: str, body: bytes) -> Any:
        doc = self._parse(body)
        signature = doc.get("signature_name", "")
        if not isinstance(signature, str):
            raise invalid("'signature_name' must be a string")
        if api in ("classify", "regress"):
            request = (
                classification_pb2.ClassificationRequest() if api == "classify" else regression_pb2.RegressionRequest()
            )
            self._spec(request.model_spec, model, version, label)
            request.model_spec.signature_name = signature
            fill_input_from_json(doc, request.input)
            if api == "classify":
                response = grpc_api.classify(self.core, request, self.metrics)
                return {
                    "results": [
                        [[c.label, _float32(c.score)] for c in cls.classes] for cls in response.result.classifications
                    ]
                }
            response = grpc_api.regress(self.core, request, self.metrics)
            return {"results": [_float32(r.value) for r in response.result.regressions]}
        return self._predict_tensors(model, version, label, signature, doc)

    def _predict_tensors(self, model: str, version: str | None, label: str | None, signature: str, doc: Any) -> Any:
        has_instances, has_inputs = "instances" in doc, "inputs" in doc
        if has_instances == has_inputs:
            raise invalid(
                "Missing 'inputs' or 'instances' key"
                if not has_instances
                else "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists"
            )
        request = classification_pb2.ClassificationRequest()  # only for its ModelSpec
        self._spec(request.model_spec, model, version, label)
        servable = self.core.servable(request.model_spec)
        sig = servable.signature(signature, predict=True)
        arrays: dict[str, np.ndarray] = {}
        if has_instances:
            instances = doc["instances"]
            if not isinstance(instances, list) or not instances:
                raise invalid("'instances' must be a non-empty JSON array")
            if all(isinstance(i, dict) and "b64" not in i for i in instances):
                names = set(instances[0])
                for inst in instances:
                    if set(inst) != names:
                        raise invalid("Expecting all instances to have the same set of named inputs")
                for name in names:
                    dtype = sig.inputs[name].dtype if name in sig.inputs else tf.float32.as_datatype_enum
                    arrays[name] = _json_to_array(name, [inst[name] for inst in instances], dtype)
            else:
                if len(sig.inputs) != 1:
                    raise invalid(
                        f"Expecting instances to be JSON objects (the signature has {len(sig.inputs)} inputs)"
                    )
                (name,) = sig.inputs
                arrays[name] = _json_to_array(name, instances, sig.inputs[name].dtype)
        else:
            inputs = doc["inputs"]
            if isinstance(inputs, dict) and "b64" not in inputs:
                for name, value in inputs.items():
                    dtype = sig.inputs[name].dtype if name in sig.inputs else tf.float32.as_datatype_enum
                    arrays[name] = _json_to_array(name, value, dtype)
            else:
                if len(sig.inputs) != 1:
                    raise invalid(
                        f"Expecting 'inputs' to be a JSON object (the signature has {len(sig.inputs)} inputs)"
                    )
                (name,) = sig.inputs
                arrays[name] = _json_to_array(name, inputs, sig.inputs[name].dtype)
        outputs = servable.predict(signature, arrays)
        if has_instances:
            if len(outputs) == 1:
                ((alias, value),) = outputs.items()
                return {"predictions": _tensor_json(value, alias)}
            rows = {alias: _tensor_json(value, alias) for alias, value in outputs.items()}
            count = min(len(v) for v in rows.values()) if rows else 0
            return {"predictions": [{alias: rows[alias][i] for alias in rows} for i in range(count)]}
        if len(outputs) == 1:
            ((alias, value),) = outputs.items()
            return {"outputs": _tensor_json(value, alias)}
        return {"outputs": {alias: _tensor_json(value, alias) for alias, value in outputs.items()}}


def grpc_code_name(number: int) -> str:
    from deployer.model_server.status import code_from_number

    return "OK" if number == 0 else str(code_from_number(number).name)


class _Handler(BaseHTTPRequestHandler):
    api: RestApi
    protocol_version = "HTTP/1.1"
    server_version = "deployer-model-server"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        status, content_type, payload = self.api.handle(method, path, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("REST %s", format % args)


def start_rest_server(api: RestApi, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="rest", daemon=True).start()
    return server


__all__ = ["RestApi", "example_from_json", "fill_input_from_json", "grpc", "start_rest_server"]
