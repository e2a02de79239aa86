"""``tensorflow.ProfilerService`` on the gRPC port (server.cc registers it when ``--enable_profiler``).

What TF's profiler client (``tf.profiler.experimental.client.trace`` / TensorBoard's "capture profile")
needs is ``Profile``: trace this process for ``duration_ms`` with the request's ProfileOptions, save the
XSpace as ``<repository_root>/<session_id>/<host_name>.xplane.pb`` (what TSL's profiler service does,
so TensorBoard finds it under ``<logdir>/plugins/profile/<run>/``), return it inline when
``emit_xspace`` is set, and report ``empty_trace``. ``Terminate`` ends a running ``Profile`` early. One
profiling session at a time: a second concurrent ``Profile`` gets ALREADY_EXISTS "Another profiling
session active." (TSL's ProfilerLock contention). ``Monitor`` and the continuous-profiling methods answer UNIMPLEMENTED.

The wheel ships no Python stubs for profiler_service.proto, so its two request/response messages are
declared here from their field numbers (profiler_service.pb.h) in a private descriptor pool; the
XSpace travels as bytes (the same wire encoding as the embedded message).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

log = logging.getLogger(__name__)

SERVICE = "tensorflow.ProfilerService"
_MAX_DURATION_MS = 3_600_000  # an hour: a bound on how long one request may hold the session


def _message_classes() -> dict[str, Any]:
    from tensorflow.tsl.profiler.protobuf import profiler_options_pb2

    pool = descriptor_pool.DescriptorPool()
    options_file = descriptor_pb2.FileDescriptorProto()
    profiler_options_pb2.DESCRIPTOR.CopyToProto(options_file)
    pool.Add(options_file)

    proto = descriptor_pb2.FileDescriptorProto(
        name="deployer/profiler_service.proto", package="tensorflow", syntax="proto3"
    )
    proto.dependency.append(options_file.name)
    f = descriptor_pb2.FieldDescriptorProto
    optional, repeated = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    message(
        "ProfileRequest",
        ("duration_ms", 1, f.TYPE_UINT64, optional, ""),
        ("max_events", 2, f.TYPE_UINT64, optional, ""),
        ("tools", 3, f.TYPE_STRING, repeated, ""),
        ("opts", 4, f.TYPE_MESSAGE, optional, ".tensorflow.ProfileOptions"),
        ("repository_root", 5, f.TYPE_STRING, optional, ""),
        ("session_id", 6, f.TYPE_STRING, optional, ""),
        ("host_name", 7, f.TYPE_STRING, optional, ""),
        ("emit_xspace", 9, f.TYPE_BOOL, optional, ""),
    )
    message("ProfileToolData", ("name", 1, f.TYPE_STRING, optional, ""), ("data", 2, f.TYPE_BYTES, optional, ""))
    message(
        "ProfileResponse",
        ("tool_data", 6, f.TYPE_MESSAGE, repeated, ".tensorflow.ProfileToolData"),
        ("empty_trace", 7, f.TYPE_BOOL, optional, ""),
        ("xspace", 8, f.TYPE_BYTES, optional, ""),  # an XSpace message on the wire
    )
    message("TerminateRequest", ("session_id", 1, f.TYPE_STRING, optional, ""))
    message("TerminateResponse")
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
        for name in ("ProfileRequest", "ProfileResponse", "TerminateRequest", "TerminateResponse")
    }


class ProfilerService:
    def __init__(self) -> None:
        self.messages = _message_classes()
        self._lock = threading.Lock()
        self._active: tuple[str, threading.Event] | None = None

    def profile(self, request: Any, context: Any) -> Any:
        response = self.messages["ProfileResponse"]()
        stop = threading.Event()
        with self._lock:
            if self._active is not None:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Another profiling session active.")
            self._active = (request.session_id, stop)
        log.info("Profiling session %r started (%d ms requested)", request.session_id, request.duration_ms)
        try:
            xspace = self._trace(request, stop, context)
        finally:
            with self._lock:
                self._active = None
        if request.repository_root:
            self._save(request, xspace)
        if request.emit_xspace:
            response.xspace = xspace
        response.empty_trace = not xspace
        return response

    def _trace(self, request: Any, stop: threading.Event, context: Any) -> bytes:
        from tensorflow.python.profiler.internal import _pywrap_profiler

        opts = request.opts
        options = {
            "host_tracer_level": opts.host_tracer_level or 2,
            "python_tracer_level": opts.python_tracer_level,
            "device_tracer_level": opts.device_tracer_level or 1,
        }
        duration = min(request.duration_ms or opts.duration_ms or 1000, _MAX_DURATION_MS) / 1000.0
        session = _pywrap_profiler.ProfilerSession()
        try:
            session.start("", options)
        except Exception:  # e.g. an in-process tf.profiler session holds TSL's profiler lock
            context.abort(grpc.StatusCode.ALREADY_EXISTS, "Another profiling session active.")
        deadline = time.monotonic() + duration
        while not stop.is_set() and context.is_active():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stop.wait(min(remaining, 0.1))
        return bytes(session.stop() or b"")

    @staticmethod
    def _save(request: Any, xspace: bytes) -> None:
        directory = os.path.join(request.repository_root, request.session_id)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        host = request.host_name or "localhost"
        path = os.path.join(directory, f"{host}.xplane.pb")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(xspace)
        log.info("Profile of session %s saved to %s", request.session_id, path)

    def terminate(self, request: Any, _context: Any) -> Any:
        with self._lock:
            if self._active is not None and self._active[0] == request.session_id:
                self._active[1].set()
        return self.messages["TerminateResponse"]()


def add_profiler_service_to_server(server: Any) -> ProfilerService:
    service = ProfilerService()
    messages = service.messages
    handlers = {
        "Profile": grpc.unary_unary_rpc_method_handler(
            service.profile,
            request_deserializer=messages["ProfileRequest"].FromString,
            response_serializer=messages["ProfileResponse"].SerializeToString,
        ),
        "Terminate": grpc.unary_unary_rpc_method_handler(
            service.terminate,
            request_deserializer=messages["TerminateRequest"].FromString,
            response_serializer=messages["TerminateResponse"].SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return service
