"""TF Serving's REST API (http_rest_api_handler.cc, http_rest_api_util.cc, json_tensor.cc) on waitress
(see "the transport" below).

- GET ``/v1/models[/{m}][/versions/{v}|/labels/{l}]`` → model status (``/labels/l`` ignored, as upstream);
  ``.../metadata`` → model metadata, printed with ``always_print_fields_with_no_presence``.
- POST ``/v1/models/{m}[/versions/{v}|/labels/{l}]:(classify|regress|predict)``.
- Model names and labels are URL-decoded; a version that is not an int64 is 400 ``Failed to convert
  version: V to numeric.``
- Request/response JSON follows :mod:`deployer.model_server.json_tensor`; errors are ``{"error": "..."}``
  with TF Serving's gRPC→HTTP status mapping.

Ours, not TF Serving's: JSON syntax error texts come from Python's json module (RapidJSON words them
differently; the status is the same 400); paths outside ``/v1/`` and the metrics path get 404 with a
JSON error body; ``--rest_api_timeout_in_ms`` is accepted but not enforced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, model_pb2, regression_pb2
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from deployer.model_server import grpc_api
from deployer.model_server import json_tensor as jt
from deployer.model_server.limits import (
    MAX_REQUEST_BYTES,
    REST_IDLE_SECONDS,
    REST_MAX_CONNECTIONS,
    REST_MAX_HEADER_BYTES,
    REST_READ_SECONDS,
)
from deployer.model_server.manager import STATE_NAMES, Core
from deployer.model_server.metrics import Metrics
from deployer.model_server.servable import DEFAULT_SIGNATURE
from deployer.model_server.status import HTTP_STATUS, ServingError, invalid

log = logging.getLogger(__name__)

# http_rest_api_util.cc kPredictionApiGegex / kModelStatusApiRegex (RE2's \d is ASCII only).
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE
)

def metadata_json(response: Any) -> str:
    """http_rest_api_util.cc ToJsonString(GetModelMetadataResponse): model_spec and the SignatureDefMap
    printed with always_print_fields_with_no_presence and proto field names."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signature_map):
        raise ServingError(grpc.StatusCode.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'.")
    spec, signatures = (
        json_format.MessageToJson(
            message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True, indent=1
        )
        for message in (response.model_spec, signature_map)
    )
    return '{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + signatures + "}\n}\n"


def status_json(response: Any) -> str:
    """ToJsonString(GetModelStatusResponse) with always_print_fields_with_no_presence."""
    doc = {
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
    return json.dumps(doc, indent=1) + "\n"


# -- the handler ------------------------------------------------------------------------------------


class RestApi:
    def __init__(self, core: Core, metrics: Metrics, prometheus_path: str | None, timeout_ms: int) -> None:
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
                model, version, label = _model_info(m.group(1), m.group(2), m.group(3))
                api = m.group(4).lower()
                output = self._predict(model, version, label, api, body)
            elif method == "GET" and (m := _STATUS_RE.fullmatch(path)):
                model, version, label = _model_info(m.group(1) or "", m.group(2), m.group(3))
                if not model:
                    raise invalid("Missing model name in request.")
                if m.group(4):
                    api = "GetModelMetadata"
                    output = self._metadata(model, version, label)
                else:
                    api = "GetModelStatus"
                    output = self._status(model, version, label)
            else:
                raise invalid(f"Malformed request: {method} {path}")
        except ServingError as exc:
            self.metrics.record_request(model, api, "REST", exc.code_name, (time.perf_counter() - started) * 1e6)
            return HTTP_STATUS.get(exc.code, 500), "application/json", jt.error_response(exc.message).encode()
        except Exception as exc:
            log.exception("REST %s %s failed", method, path)
            return 500, "application/json", jt.error_response(str(exc)).encode()
        self.metrics.record_request(model, api, "REST", "OK", (time.perf_counter() - started) * 1e6)
        return 200, "application/json", output.encode("utf-8")

    def _status(self, model: str, version: int | None, label: str | None) -> str:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, model, version, label)
        return status_json(grpc_api.model_status(self.core, request))

    def _metadata(self, model: str, version: int | None, label: str | None) -> str:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, model, version, label)
        return metadata_json(grpc_api.model_metadata(self.core, request))

    def _predict(self, model: str, version: int | None, label: str | None, api: str, body: bytes) -> str:
        if api in ("classify", "regress"):
            request: Any = (
                classification_pb2.ClassificationRequest() if api == "classify" else regression_pb2.RegressionRequest()
            )
            _fill_spec(request.model_spec, model, version, label)
            doc = jt.parse_json(body)
            request.model_spec.signature_name = jt.fill_signature(doc)
            jt.fill_classify_regress_request(doc, request, api)
            if api == "classify":
                return jt.classify_response(grpc_api.classify(self.core, request, self.metrics).result)
            return jt.regress_response(grpc_api.regress(self.core, request, self.metrics).result)
        spec = model_pb2.ModelSpec()
        _fill_spec(spec, model, version, label)
        doc = jt.parse_json(body)
        signature = jt.fill_signature(doc)
        # GetInfoMap: the servable and its signature's inputs, before the body's tensors are read.
        servable = self.core.servable(spec)
        key = signature or DEFAULT_SIGNATURE
        sig = servable.signatures.get(key)
        if sig is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        if not sig.inputs:
            raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
        arrays, fmt = jt.predict_inputs(doc, {alias: meta.dtype for alias, meta in sig.inputs.items()})
        outputs = servable.predict(signature, arrays)
        return jt.predict_response(outputs, fmt)


def _model_info(name: str, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
    """ParseModelInfo: URL-decoded name and label; the version as an int64."""
    number = None
    if version:
        number = int(version)
        if not jt.INT64_MIN <= number <= jt.INT64_MAX:
            raise invalid(f"Failed to convert version: {version} to numeric.")
    decoded_label = urllib.parse.unquote(label, errors="surrogateescape") if label else None
    return urllib.parse.unquote(name, errors="surrogateescape"), number, decoded_label


def _fill_spec(spec: Any, model: str, version: int | None, label: str | None) -> None:
    """FillModelSpecWithNameVersionAndLabel."""
    spec.name = model
    if version is not None and label is not None:
        raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label


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

    def __init__(self, *args: Any, read_seconds: float, reuse_port: bool = False, **kwargs: Any) -> None:
        self._read_seconds = read_seconds
        self._reuse_port = reuse_port
        # channel fd -> (the request parser in progress, weakly, and when it was first seen). A new
        # request has a new parser, so a connection that keeps completing requests is never cut; the
        # weak reference cannot be confused with a later parser that reuses the id or the fd.
        self._reading: dict[int, tuple[weakref.ref[Any], float]] = {}
        super().__init__(*args, **kwargs)

    def bind_server_socket(self) -> None:
        if self._reuse_port:  # --num_server_processes: every process binds the port
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().bind_server_socket()

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

    def __init__(
        self, api: RestApi, host: str, port: int, threads: int, max_request_bytes: int, reuse_port: bool = False
    ) -> None:
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
            reuse_port=reuse_port,
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
    api: RestApi,
    host: str,
    port: int,
    threads: int = 0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    *,
    reuse_port: bool = False,
) -> RestServer:
    """``threads`` 0 = TF Serving's default for --rest_api_num_threads (4 per CPU); ``reuse_port``: SO_REUSEPORT."""
    threads = threads if threads > 0 else 4 * (os.cpu_count() or 1)
    return RestServer(api, host, port, threads, max_request_bytes, reuse_port)


__all__ = ["RestApi", "RestServer", "start_rest_server"]
