"""TF Serving's REST API (http_rest_api_handler.cc, json_tensor.cc) on waitress (see "the transport" below).

- GET ``/v1/models/{m}[/versions/{v}|/labels/{l}]`` → model status (``/labels/l`` ignored, as upstream);
  ``.../metadata`` → model metadata.
- POST ``/v1/models/{m}[/versions/{v}|/labels/{l}]:(classify|regress|predict)``.
- Errors are ``{"error": "..."}`` with TF Serving's gRPC→HTTP status mapping.
- JSON→tf.Example: string → bytes_list, ``{"b64": ...}`` → bytes_list, integer/bool → int64_list,
  decimal/exponent number → float_list. NaN/Infinity are read and written as bare tokens.

Ours, not TF Serving's: JSON parse error texts come from Python's json module; paths outside
``/v1/`` and the metrics path get 404 with a JSON error body; ``--rest_api_timeout_in_ms`` is
accepted but not enforced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import resource
import threading
import time
import weakref
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, regression_pb2
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from deployer.model_server import grpc_api
from deployer.model_server.limits import (
    MAX_REQUEST_BYTES,
    REST_IDLE_SECONDS,
    REST_MAX_CONNECTIONS,
    REST_MAX_HEADER_BYTES,
    REST_READ_SECONDS,
)
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


# -- the transport ----------------------------------------------------------------------------------
#
# waitress (a pinned runtime dependency): one asyncore I/O thread reads whole requests and writes whole
# responses; a fixed pool of threads runs the handler. So an idle or half-open connection costs a
# socket, not a thread (1,000 idle connections used to be 1,000 threads), bad or oversized
# Content-Length headers get 400/413 from its parser (they used to drop the connection with a traceback
# in the log), keep-alive is HTTP/1.1's, and TCP_NODELAY is set on every connection (headers and body
# written separately with Nagle on used to wait ~40 ms for the client's delayed ACK).


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's own errors (bad Content-Length, too large, bad request line) as TF Serving's JSON error."""

    def execute(self) -> None:
        error = self.request.error
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        body = json.dumps({"error": f"{error.reason}: {error.body}"}).encode("utf-8")
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _JsonErrorTask


class _Server(TcpWSGIServer):  # type: ignore[misc]
    """waitress's TCP server, closing connections whose request does not arrive whole in time."""

    channel_class = _Channel

    def __init__(self, *args: Any, read_seconds: float, **kwargs: Any) -> None:
        self._read_seconds = read_seconds
        # channel fd -> (the request parser in progress, weakly, and when it was first seen). A new
        # request has a new parser, so a connection that keeps completing requests is never cut; the
        # weak reference cannot be confused with a later parser that reuses the id or the fd.
        self._reading: dict[int, tuple[weakref.ref[Any], float]] = {}
        super().__init__(*args, **kwargs)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections (channel_timeout)
        reading: dict[int, tuple[weakref.ref[Any], float]] = {}
        for fd, channel in list(self.active_channels.items()):
            request = getattr(channel, "request", None)
            if request is None or channel.requests:
                continue
            seen, since = self._reading.get(fd, (None, now))
            if seen is None or seen() is not request:
                since = now
            if now - since > self._read_seconds:
                channel.will_close = True
            else:
                reading[fd] = (weakref.ref(request), since)
        self._reading = reading


class RestServer:
    """The REST API served by waitress on a background thread."""

    def __init__(self, api: RestApi, host: str, port: int, threads: int, max_request_bytes: int) -> None:
        self.api = api
        connections = _connection_limit()
        adjustments = Adjustments(
            host=host,
            port=port,
            threads=threads,
            connection_limit=connections,
            backlog=1024,
            channel_timeout=int(max(1, REST_IDLE_SECONDS)),
            # maintenance (idle and read deadlines) runs this often
            cleanup_interval=max(1, int(min(REST_IDLE_SECONDS, REST_READ_SECONDS) / 4)),
            max_request_body_size=max_request_bytes,
            max_request_header_size=REST_MAX_HEADER_BYTES,
            asyncore_use_poll=True,  # select() stops at fd 1024
            ident="deployer-model-server",
            expose_tracebacks=False,
            log_socket_errors=False,
        )
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        # waitress warns "Task queue depth is N" whenever a request waits for a free handler thread:
        # under load that is every request, and a busy server is not a fault worth a log line each.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self._map: dict[int, Any] = {}
        self._server = _Server(
            self._wsgi,
            self._map,
            dispatcher=dispatcher,
            adj=adjustments,
            sockinfo=adjustments.listen[0],
            read_seconds=REST_READ_SECONDS,
        )
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="rest-io", daemon=True)
        self._thread.start()

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        # The raw request target, as TF Serving matches it (PATH_INFO is percent-decoded).
        path = str(environ.get("REQUEST_URI") or environ.get("PATH_INFO") or "/").split("?", 1)[0]
        status, content_type, payload = self.api.handle(environ["REQUEST_METHOD"], path, body)
        start_response(
            f"{status} {_reason(status)}", [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        )
        return [payload]

    def shutdown(self) -> None:
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self._map)
        self._thread.join(timeout=5)


def _connection_limit() -> int:
    """REST_MAX_CONNECTIONS, after raising the open-file limit as far as allowed (as Go's runtime does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = REST_MAX_CONNECTIONS + 1024  # gRPC, model files and the process's own
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return REST_MAX_CONNECTIONS
    return max(16, min(REST_MAX_CONNECTIONS, soft - 1024))


def start_rest_server(
    api: RestApi, host: str, port: int, threads: int = 0, max_request_bytes: int = MAX_REQUEST_BYTES
) -> RestServer:
    """``threads`` 0 = TF Serving's default for --rest_api_num_threads (4 per CPU)."""
    return RestServer(api, host, port, threads if threads > 0 else 4 * (os.cpu_count() or 1), max_request_bytes)


__all__ = ["RestApi", "RestServer", "example_from_json", "fill_input_from_json", "grpc", "start_rest_server"]
