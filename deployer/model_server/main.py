"""``deployer-model-server``: tensorflow_model_server's command line (model_servers/main.cc, server.cc).

Flags take ``--flag=value`` or ``--flag value``; booleans also ``--flag``. Startup order follows
server.cc: validate flags, build the config, load every initial model (ports stay closed until all are
AVAILABLE), then open gRPC (TCP ``--port`` unless 0, and ``unix:<--grpc_socket_path>`` when set) and, if
``--rest_api_port`` is set, REST. A failure in BuildAndStart prints ``Failed to start server. Error:
<CODE>: <message>`` on stdout and exits 255 (main.cc returns -1), as TF Serving does.

Ours, not TF Serving's: an unknown flag or stray argument is fatal (TF Serving prints "unknown
argument" and usage, then carries on); servers bind the host in ``$DEPLOYER_MODEL_SERVER_HOST``
(default 127.0.0.1; TF Serving binds 0.0.0.0 — set it to 0.0.0.0 in containers);
``--num_server_processes N`` runs N processes on the same ports (server_processes.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("deployer.model_server")


# server_processes.MAX_PROCESSES (not imported here: flags are checked before anything heavy is imported)
MAX_SERVER_PROCESSES = 64


class FlagError(Exception):
    pass


@dataclass(frozen=True)
class _Flag:
    kind: type
    default: Any
    help: str
    ignored: bool = False


FLAGS: dict[str, _Flag] = {
    "port": _Flag(int, 8500, "gRPC TCP port; 0 disables it (then --grpc_socket_path is required)"),
    "grpc_socket_path": _Flag(str, "", "also serve gRPC on this UNIX socket (relative or absolute path)"),
    "rest_api_port": _Flag(int, 0, "REST port; 0 disables REST"),
    "rest_api_timeout_in_ms": _Flag(int, 30000, "REST request timeout"),
    "rest_api_num_threads": _Flag(int, 0, "REST handler threads; 0 = 4 per CPU"),
    "model_name": _Flag(str, "default", "model name when --model_config_file is not set"),
    "model_base_path": _Flag(str, "", "model base path when --model_config_file is not set"),
    "model_config_file": _Flag(str, "", "ASCII ModelServerConfig"),
    "model_config_file_poll_wait_seconds": _Flag(int, 0, "re-read the config file every N s; 0 = once"),
    "file_system_poll_wait_seconds": _Flag(int, 1, "version discovery period; 0 = once, <0 = never"),
    "allow_version_labels_for_unavailable_models": _Flag(bool, False, "allow new labels on unloaded versions"),
    "monitoring_config_file": _Flag(str, "", "MonitoringConfig text proto (Prometheus on the REST port)"),
    "enable_batching": _Flag(bool, False, "batch concurrent requests"),
    "batching_parameters_file": _Flag(str, "", "BatchingParameters text proto"),
    "enable_model_warmup": _Flag(bool, True, "replay assets.extra/tf_serving_warmup_requests on load"),
    "tensorflow_intra_op_parallelism": _Flag(int, 0, "session intra-op threads; 0 = auto"),
    "tensorflow_inter_op_parallelism": _Flag(int, 0, "session inter-op threads; 0 = auto"),
    "tensorflow_session_parallelism": _Flag(int, 0, "both of the above when they are 0"),
    "num_load_threads": _Flag(int, 0, "loads are serial here", ignored=True),
    "num_unload_threads": _Flag(int, 0, "unloads are serial here", ignored=True),
    "max_num_load_retries": _Flag(int, 5, "failed loads are not retried here", ignored=True),
    "load_retry_interval_micros": _Flag(int, 60000000, "failed loads are not retried here", ignored=True),
    "grpc_channel_arguments": _Flag(str, "", "gRPC server channel arguments k=v,k=v"),
    "enable_signature_method_name_check": _Flag(bool, False, "only false is supported"),
    "saved_model_tags": _Flag(str, "serve", "only 'serve' is supported"),
    "per_process_gpu_memory_fraction": _Flag(float, 0.0, "no GPU here", ignored=True),
    "flush_filesystem_caches": _Flag(bool, True, "no effect here", ignored=True),
    "enable_grpc_healthcheck_service": _Flag(bool, False, "not provided here", ignored=True),
    "grpc_max_threads": _Flag(int, 0, "gRPC handler threads; 0 = 4 x CPUs (ours: Python thread pool)"),
    "prefer_tflite_model": _Flag(bool, False, "serve <version>/model.tflite (TF's TFLite interpreter) when present"),
    "num_tflite_pools": _Flag(int, 0, "one interpreter per TFLite model here", ignored=True),
    "num_tflite_interpreters_per_pool": _Flag(int, 1, "one interpreter per TFLite model here", ignored=True),
    "enable_profiler": _Flag(bool, True, "serve tensorflow.ProfilerService on the gRPC port"),
    "num_server_processes": _Flag(int, 1, "processes serving the same ports, each loading every model (ours)"),
}

_TRUE = {"true", "1", "t", "yes"}
_FALSE = {"false", "0", "f", "no"}


def usage() -> str:
    lines = ["usage: deployer-model-server [--flag=value ...]", "Flags:"]
    for name, flag in FLAGS.items():
        note = " (accepted, ignored)" if flag.ignored else ""
        lines.append(f"\t--{name}={flag.default!r}\t{flag.kind.__name__}\t{flag.help}{note}")
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> dict[str, Any]:
    """Parse tensorflow::Flags style arguments; raises FlagError on anything unknown or malformed."""
    values: dict[str, Any] = {name: flag.default for name, flag in FLAGS.items()}
    given: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unknown argument: {arg}")
        name, eq, raw = arg.lstrip("-").partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            raise FlagError(f"unknown argument: {arg}")
        if flag.kind is bool:
            if not eq or raw.lower() in _TRUE:
                values[name] = True
            elif raw.lower() in _FALSE:
                values[name] = False
            else:
                raise FlagError(f"Couldn't interpret value {raw} for flag {name}.")
        else:
            if not eq:
                if i >= len(argv):
                    raise FlagError(f"flag --{name} needs a value")
                raw = argv[i]
                i += 1
            try:
                values[name] = flag.kind(raw)
            except ValueError as exc:
                raise FlagError(f"Couldn't interpret value {raw} for flag {name}.") from exc
        given.add(name)
    values["_given"] = given
    return values


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _validate(flags: dict[str, Any]) -> None:
    if flags["enable_signature_method_name_check"]:
        raise FlagError("--enable_signature_method_name_check=true is not supported by deployer-model-server")
    if flags["saved_model_tags"] != "serve":
        raise FlagError("--saved_model_tags other than 'serve' is not supported by deployer-model-server")
    if not 1 <= flags["num_server_processes"] <= MAX_SERVER_PROCESSES:
        raise FlagError(f"--num_server_processes must be between 1 and {MAX_SERVER_PROCESSES}")
    if flags["num_server_processes"] > 1 and flags["port"] == 0:
        raise FlagError("--num_server_processes above 1 needs --port: processes share a TCP port, not a UNIX socket")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname).1s %(name)s] %(message)s"
    )
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("--help", "-h", "--helpfull") for a in args):
        print(usage())
        return 0
    try:
        flags = parse_flags(args)
        _validate(flags)
    except FlagError as exc:
        print(f"{exc}\n{usage()}", file=sys.stderr)
        return 1
    for name in sorted(flags["_given"]):
        if FLAGS[name].ignored:
            log.info("Flag --%s is accepted for compatibility and ignored: %s", name, FLAGS[name].help)
    try:
        return _run(flags, args)
    except _StartupError as exc:
        # main.cc: std::cout << "Failed to start server. Error: " << status; return -1.
        print(f"Failed to start server. Error: {exc}", flush=True)
        return 255


class _StartupError(Exception):
    pass


def _build_checks(flags: dict[str, Any]) -> None:
    """Server::BuildAndStart's checks, before anything is loaded (INVALID_ARGUMENT)."""
    if flags["port"] == 0 and not flags["grpc_socket_path"]:
        raise _StartupError(
            "INVALID_ARGUMENT: At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
        )
    if not flags["model_config_file"] and not flags["model_base_path"]:
        raise _StartupError(
            "INVALID_ARGUMENT: Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if flags["batching_parameters_file"] and not flags["enable_batching"]:
        raise _StartupError(
            "INVALID_ARGUMENT: server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )


def _freeze_imported_objects() -> None:
    """Move what the imports created (TensorFlow's ~300k Python objects, never freed) out of the cyclic
    GC's reach (``gc.freeze``, as CPython's docs advise for servers). Otherwise each full collection
    under load walks all of them while holding the GIL: a 110-190 ms stall of every request, seen
    ~10 s after start in the promote benchmark. Called before any model loads, so a model's objects
    stay collectable when its version is unloaded."""
    gc.collect()
    gc.freeze()


def _register_tf_text_ops() -> None:
    """The TF Serving binary links TF Text's kernels; models using them need the ops before loading."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError as exc:
        log.warning("TF Text ops are not available (%s): models using them will fail to load", exc)


def _run(flags: dict[str, Any], args: list[str]) -> int:
    _build_checks(flags)
    # Heavy imports after flag checks, so a bad command line fails fast.
    from deployer.model_server import config as cfg
    from deployer.model_server import server_processes as processes
    from deployer.model_server.status import ServingError

    # --num_server_processes: a follower is this program, started by the owner with the same flags.
    role = processes.follower_role()
    try:
        initial = None
        if role is not None:
            pass  # a follower loads what its owner tells it; only the owner reads the model config
        elif flags["model_config_file"]:
            initial = cfg.read_model_server_config(flags["model_config_file"])
        else:
            initial = cfg.single_model_config(flags["model_name"], flags["model_base_path"])
        batching = None
        if flags["enable_batching"]:
            batching = cfg.BatchingParameters()
            if flags["batching_parameters_file"]:
                path = flags["batching_parameters_file"]
                batching = cfg.parse_batching_parameters(_read(path), path)
        monitoring = cfg.MonitoringConfig()
        if flags["monitoring_config_file"]:
            path = flags["monitoring_config_file"]
            monitoring = cfg.parse_monitoring_config(_read(path), path)
    except ServingError as exc:
        raise _StartupError(str(exc)) from exc
    except OSError as exc:
        raise _StartupError(f"{exc.filename}: {exc.strerror}") from exc

    stopping = threading.Event()
    group: Any = None
    if role is not None or flags["num_server_processes"] > 1:
        processes.set_log_prefix(role[0] if role is not None else 0)
    if role is None and flags["num_server_processes"] > 1:
        # Started before TensorFlow is imported here, so every process imports it at the same time.
        try:
            group = processes.ProcessGroup(
                flags["num_server_processes"], processes.follower_argv(args), on_failure=stopping.set
            )
        except OSError as exc:
            raise _StartupError(f"cannot start the server processes: {exc}") from exc
    try:
        return _serve(flags, initial, batching, monitoring, stopping, group, role)
    finally:
        if group is not None:
            group.stop()


def _make_loader(flags: dict[str, Any], batching: Any, metrics: Any) -> Callable[[str, int, str], Any]:
    """(name, version, path) → a loaded, warmed-up servable; load attempts and warmup recorded in ``metrics``."""
    from deployer.model_server.servable import Servable
    from deployer.model_server.status import ServingError
    from deployer.model_server.tflite import TFLITE_MODEL_FILE, TfLiteServable

    intra = flags["tensorflow_intra_op_parallelism"] or flags["tensorflow_session_parallelism"]
    inter = flags["tensorflow_inter_op_parallelism"] or flags["tensorflow_session_parallelism"]

    def load(name: str, version: int, path: str) -> Any:
        try:
            if flags["prefer_tflite_model"] and os.path.exists(os.path.join(path, TFLITE_MODEL_FILE)):
                servable: Any = TfLiteServable(name, version, path)
            else:
                servable = Servable(
                    name, version, path, batching=batching, intra_op_threads=intra, inter_op_threads=inter
                )
        except ServingError:
            metrics.record_load(path, ok=False)
            raise
        metrics.record_load(path, ok=True)
        if flags["enable_model_warmup"]:
            started = time.perf_counter()
            try:
                count = servable.warmup()
            except ServingError:
                servable.close()
                raise
            if count:
                metrics.record_warmup(path, (time.perf_counter() - started) * 1e6)
                log.info(
                    "Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, count
                )
        return servable

    return load


def _serve(
    flags: dict[str, Any],
    initial: Any,
    batching: Any,
    monitoring: Any,
    stopping: threading.Event,
    group: Any,
    role: tuple[int, int] | None,
) -> int:
    """Load, open the ports, serve until a signal. ``group``: this process owns --num_server_processes'
    followers; ``role``: this process is follower ``role[0]`` (its owner drives what it loads)."""
    from deployer.model_server.grpc_api import max_request_bytes, parse_channel_arguments, start_grpc_server
    from deployer.model_server.manager import ServerCore
    from deployer.model_server.metrics import Metrics
    from deployer.model_server.rest_api import RestApi, start_rest_server
    from deployer.model_server.server_processes import Follower, ProcessGroupError, ensure_port_free
    from deployer.model_server.status import ServingError

    _register_tf_text_ops()
    metrics = Metrics()
    load = _make_loader(flags, batching, metrics)
    _freeze_imported_objects()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("Received signal %d, shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    follower = None
    if role is not None:
        # Ctrl-C reaches the whole process group: the owner stops its followers in order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        follower = Follower(role[0], role[1], load, metrics, stopping)
        core: Any = follower.core
        follower.start()
    else:
        signal.signal(signal.SIGINT, on_signal)
        core = ServerCore(
            group.load if group is not None else load,
            file_system_poll_wait_seconds=flags["file_system_poll_wait_seconds"],
            allow_version_labels_for_unavailable_models=flags["allow_version_labels_for_unavailable_models"],
            unload=group.unload if group is not None else None,
            on_config=group.on_config if group is not None else None,
        )
    if group is not None:
        group.attach(core, load, metrics)
    shared_ports = group is not None or follower is not None

    try:
        if follower is not None:
            if not follower.wait_for_serve():
                core.stop()
                follower.close()
                return 0
        else:
            if group is not None:
                group.wait_ready(still_waiting=lambda: not stopping.is_set())
            core.reload_config(initial, still_waiting=lambda: not stopping.is_set())
    except (ServingError, ProcessGroupError) as exc:
        core.stop()
        raise _StartupError(str(exc)) from exc

    host = os.environ.get("DEPLOYER_MODEL_SERVER_HOST", "127.0.0.1")
    if group is not None:
        # The processes bind with SO_REUSEPORT, which would share a port another server already holds.
        for port in {flags["port"], flags["rest_api_port"]} - {0}:
            try:
                ensure_port_free(host, port)
            except OSError as exc:
                core.stop()
                raise _StartupError(f"INVALID_ARGUMENT: cannot listen on {host}:{port}: {exc}") from exc
    workers = flags["grpc_max_threads"] or max(8, 4 * (os.cpu_count() or 1))
    addresses = []
    if flags["port"]:
        addresses.append(f"{host}:{flags['port']}")
    if flags["grpc_socket_path"] and follower is None:  # a UNIX socket cannot be shared: the owner serves it
        addresses.append(f"unix:{flags['grpc_socket_path']}")
    try:
        grpc_server = start_grpc_server(
            core,
            metrics,
            addresses,
            workers,
            flags["grpc_channel_arguments"],
            profiler=flags["enable_profiler"],
            reuse_port=shared_ports,
        )
    except (OSError, RuntimeError) as exc:
        core.stop()
        raise _StartupError(f"INVALID_ARGUMENT: Failed to BuildAndStart gRPC server: {exc}") from exc
    if flags["enable_profiler"]:
        log.info("Profiler service is enabled")
    if flags["port"]:
        log.info("Running gRPC ModelServer at %s:%d ...", host, flags["port"])
    if flags["grpc_socket_path"] and follower is None:
        log.info("Running gRPC ModelServer at UNIX socket %s ...", flags["grpc_socket_path"])
    rest_server = None
    if flags["rest_api_port"]:
        if flags["rest_api_port"] == flags["port"]:
            log.error(
                "--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST API. "
                "Skipped exporting HTTP/REST API."
            )
        else:
            prometheus = monitoring.prometheus_path if monitoring.prometheus_enable else None
            api = RestApi(core, metrics, prometheus, flags["rest_api_timeout_in_ms"])
            try:
                rest_server = start_rest_server(
                    api,
                    host,
                    flags["rest_api_port"],
                    flags["rest_api_num_threads"],
                    max_request_bytes(parse_channel_arguments(flags["grpc_channel_arguments"])),
                    reuse_port=shared_ports,
                )
            except OSError as exc:
                grpc_server.stop(0)
                core.stop()
                raise _StartupError(f"cannot listen on {host}:{flags['rest_api_port']}: {exc}") from exc
            log.info("Exporting HTTP/REST API at:%s:%d ...", host, flags["rest_api_port"])

    if follower is not None:
        follower.serving()
    if group is not None:
        try:
            group.serve()  # the followers bind the same ports
        except ProcessGroupError as exc:
            grpc_server.stop(0)
            if rest_server is not None:
                rest_server.shutdown()
            core.stop()
            raise _StartupError(str(exc)) from exc

    poller = None
    if follower is None and flags["model_config_file"] and flags["model_config_file_poll_wait_seconds"] > 0:
        poller = threading.Thread(
            target=_poll_config_file,
            args=(core, flags["model_config_file"], flags["model_config_file_poll_wait_seconds"], stopping),
            name="config-poll",
            daemon=True,
        )
        poller.start()

    while not stopping.wait(1.0):
        pass
    if group is not None:
        group.request_stop()  # followers close their ports while this process closes its own
    grpc_server.stop(grace=2)
    if rest_server is not None:
        rest_server.shutdown()
    if group is not None:
        group.stop()
    core.stop()
    if follower is not None:
        follower.close()
    if group is not None and group.failure is not None:
        print(f"Server stopped: {group.failure}", file=sys.stderr, flush=True)
        return 1
    return 0


def _poll_config_file(core: Any, path: str, period: int, stopping: threading.Event) -> None:
    """--model_config_file_poll_wait_seconds: re-read and ReloadConfig; errors are only logged."""
    from deployer.model_server.config import read_model_server_config
    from deployer.model_server.status import ServingError

    while not stopping.wait(period):
        try:
            config = read_model_server_config(path)
        except ServingError as exc:
            log.error("Failed to read ModelServerConfig file: %s", exc.message)
            continue
        try:
            core.reload_config(config, still_waiting=lambda: not stopping.is_set())
        except ServingError as exc:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)


if __name__ == "__main__":
    raise SystemExit(main())
