"""``--num_server_processes N`` (ours): N processes serve one gRPC port and one REST port.

Why: a Python process is bound by its gRPC layer, not by the model (docs/BENCHMARKS.md, server
section); N processes binding the same ports with SO_REUSEPORT let the kernel spread *connections*
over N interpreters. Each process loads every model (memory: N times one server).

One truth. The process the user started is the **owner** (process 0). It spawns N-1 **followers**
(process 1..N-1: the same command line; their index and a private control socket are passed in
``$_DEPLOYER_MODEL_SERVER_PROCESS``). Only the owner reads the config, polls the file system and runs
ServerCore; a follower holds servables and answers requests, nothing else:

- The owner's ServerCore loads a version through :meth:`ProcessGroup.load`, which loads it in every process
  at once (a follower keeps it hidden), and only when every process has it publishes it everywhere
  and reports it AVAILABLE. So a version is AVAILABLE — may take a label, may replace the version
  before it — only once it is available in every process: TF Serving's rules, applied to them all. A
  load failing in any process fails the version everywhere (END with that error).
- Unloads, label maps and the set of configured models reach every process before the owner's
  ServerCore moves on (so before HandleReloadConfigRequest answers).
- A follower forwards HandleReloadConfigRequest and GetModelStatus (gRPC and REST) to the owner and
  answers what the owner answers, whichever process a connection landed on.
- Every process's Prometheus page is the sum over all processes (metrics.py).

Liveness: a follower that exits while the server runs is logged and restarted: the replacement
loads every version the others serve, takes the current labels, and only then binds the ports. If a
replacement cannot be brought up 3 times in a row, or processes exited 5 times within 10 minutes,
the server stops with exit status 1 and says why (its supervisor decides what next). A follower
whose owner is gone (its control socket closes) stops. SIGTERM/SIGINT to the owner stops every
process in order; followers ignore SIGINT (Ctrl-C reaches the whole process group).

The control socket is a socketpair between the owner and each of its children carrying pickled
tuples (multiprocessing.connection): both ends are this program, nothing else can connect to it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from deployer.model_server.manager import LoadFn, ModelEntry, ServableLookup, VersionState
from deployer.model_server.metrics import Metrics, Snapshot, merge
from deployer.model_server.status import ServingError

log = logging.getLogger(__name__)

PROCESS_ENV = "_DEPLOYER_MODEL_SERVER_PROCESS"  # "<index>:<fd>" in a follower's environment
MAX_PROCESSES = 64
RESTART_ATTEMPTS = 3  # consecutive failures to bring a replacement up before the server gives up
RESTART_BUDGET = 5  # exits tolerated within RESTART_WINDOW_SECONDS
RESTART_WINDOW_SECONDS = 600.0
READY_TIMEOUT_SECONDS = 300.0  # a replacement's start (imports TensorFlow on a busy machine)
STOP_TIMEOUT_SECONDS = 20.0
GATHER_TIMEOUT_SECONDS = 10.0


class PeerGone(Exception):
    """The process at the other end of a control socket exited or closed it."""


class RemoteError(Exception):
    """A control call failed on the other side with something other than a ServingError."""


class ProcessGroupError(Exception):
    """The server processes could not be started or kept in step."""


def follower_role() -> tuple[int, int] | None:
    """(index, control fd) when this process is a follower; the variable is removed from the environment."""
    raw = os.environ.pop(PROCESS_ENV, "")
    if not raw:
        return None
    index, _, fd = raw.partition(":")
    return int(index), int(fd)


def ensure_port_free(host: str, port: int) -> None:
    """Fail like a plain bind would if anything listens on ``port``.

    The processes bind with SO_REUSEPORT, which would let it *share* a port another server of the same user
    already holds (with SO_REUSEPORT too) instead of failing: probe without it first.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no listener
        probe.bind((host, port))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- the control link ----------------------------------------------------------------------------------

Handler = Callable[[str, tuple[Any, ...], threading.Event], Any]


class Link:
    """Calls both ways over one control socket.

    Messages: ``("call", id, op, args)``, ``("reply", id, outcome, value)``, ``("cancel", id)``. Each
    incoming call runs in its own thread (calls are rare: loads, reloads, status, metrics), so a long
    one (a load, a reload waiting for models) never holds up the others. ``cancelled`` is set when the
    caller cancels or the link closes.
    """

    def __init__(self, fd: int, handler: Handler, name: str, on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self._fd = fd
        self._conn = Connection(fd)
        self._handler = handler
        self._on_close = on_close
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._incoming: dict[int, threading.Event] = {}
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"control-{name}", daemon=True)

    def start(self) -> None:
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start_call(self, op: str, *args: Any) -> tuple[int, Future[Any]]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed.is_set():
                future.set_exception(PeerGone(self.name))
                return 0, future
            call_id = next(self._ids)
            self._pending[call_id] = future
        try:
            self._send(("call", call_id, op, args))
        except (OSError, ValueError):
            with self._lock:
                self._pending.pop(call_id, None)
            if not future.done():
                future.set_exception(PeerGone(self.name))
        return call_id, future

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        _call_id, future = self.start_call(op, *args)
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            raise RemoteError(f"{self.name} did not answer {op} within {timeout:.0f}s") from exc

    def cancel(self, call_id: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send(("cancel", call_id))

    def close(self) -> None:
        """Shut the socket down: the reader sees EOF, fails pending calls and closes the connection."""
        if self._closed.is_set():
            return
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._fd)) as dup:
            dup.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float) -> None:
        if self._reader.is_alive():
            self._reader.join(timeout)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "reply":
                _kind, call_id, outcome, value = message
                with self._lock:
                    future = self._pending.pop(call_id, None)
                if future is not None:
                    _settle(future, outcome, value)
            elif kind == "call":
                _kind, call_id, op, args = message
                cancelled = threading.Event()
                with self._lock:
                    self._incoming[call_id] = cancelled
                threading.Thread(
                    target=self._serve, args=(call_id, op, args, cancelled), name=f"control-{op}", daemon=True
                ).start()
            elif kind == "cancel":
                with self._lock:
                    event = self._incoming.get(message[1])
                if event is not None:
                    event.set()
        with self._lock:
            self._closed.set()
            pending, self._pending = self._pending, {}
            incoming = list(self._incoming.values())
        for future in pending.values():
            if not future.done():
                future.set_exception(PeerGone(self.name))
        for event in incoming:
            event.set()
        with contextlib.suppress(OSError):
            self._conn.close()
        if self._on_close is not None:
            self._on_close()

    def _serve(self, call_id: int, op: str, args: tuple[Any, ...], cancelled: threading.Event) -> None:
        try:
            reply: tuple[Any, ...] = ("reply", call_id, "ok", self._handler(op, args, cancelled))
        except ServingError as exc:
            reply = ("reply", call_id, "serving_error", (exc.code.name, exc.message))
        except Exception as exc:
            if not isinstance(exc, PeerGone):
                log.exception("control call %s from %s failed", op, self.name)
            reply = ("reply", call_id, "error", f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._incoming.pop(call_id, None)
        with contextlib.suppress(OSError, ValueError):
            self._send(reply)


def _settle(future: Future[Any], outcome: str, value: Any) -> None:
    if outcome == "ok":
        future.set_result(value)
    elif outcome == "serving_error":
        code_name, message = value
        future.set_exception(ServingError(grpc.StatusCode[code_name], message))
    else:
        future.set_exception(RemoteError(str(value)))


def _encode_states(states: dict[int, VersionState]) -> dict[int, tuple[int, str | None, str]]:
    return {
        version: (s.state, s.error.code.name if s.error else None, s.error.message if s.error else "")
        for version, s in states.items()
    }


def _decode_states(raw: dict[int, tuple[int, str | None, str]]) -> dict[int, VersionState]:
    return {
        version: VersionState(state, ServingError(grpc.StatusCode[code], message) if code else None)
        for version, (state, code, message) in raw.items()
    }


# -- the owner's side ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Member:
    index: int
    process: subprocess.Popen[bytes]
    link: Link
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return int(self.process.pid)


@dataclass
class _Published:
    """A version every member holds, under the owner's load id."""

    name: str
    version: int
    path: str
    retired: bool = False  # its model left the config: hidden everywhere, waiting to be unloaded


class ProcessGroup:
    """The owner's view of its followers: spawns them, keeps them in step with ServerCore, restarts them.

    ServerCore calls :meth:`load`, :meth:`unload` (from its manager thread, one at a time) and
    :meth:`on_config` (from reload_config). ``_op_lock`` serialises loads, unloads and a replacement's
    catch-up; ``_config_lock`` serialises label pushes and a replacement joining, so a member list read
    under either lock cannot change under it.
    """

    def __init__(
        self, count: int, argv: list[str], *, on_failure: Callable[[], None], env: dict[str, str] | None = None
    ) -> None:
        """Spawns processes 1..count-1 at once (they start up while the owner does); :meth:`attach` follows."""
        self._argv = argv
        self._env = dict(os.environ if env is None else env)
        self._on_failure = on_failure
        self._core: Any = None  # the owner's ServerCore, for calls forwarded by followers
        self._load: LoadFn | None = None
        self._metrics: Metrics | None = None
        self._op_lock = threading.Lock()
        self._config_lock = threading.Lock()
        self._published: dict[int, _Published] = {}
        self._by_servable: dict[int, int] = {}  # id(owner's servable) -> load id
        self._load_ids = itertools.count(1)
        self._config: tuple[dict[str, dict[str, int]], list[str]] = ({}, [])
        self._stopping = threading.Event()
        self._restarts: deque[float] = deque()
        self.failure: str | None = None
        self._watcher = threading.Thread(target=self._watch, name="process-watch", daemon=True)
        self._members: tuple[_Member, ...] = ()
        try:
            for index in range(1, count):
                self._members = (*self._members, self._spawn(index))
        except OSError:
            self.stop()
            raise

    def attach(self, core: Any, load: LoadFn, metrics: Metrics) -> None:
        """The owner's ServerCore (built with :meth:`load`, :meth:`unload`, :meth:`on_config`), its own
        loader, and its metrics, whose page becomes every process's sum."""
        self._core = core
        self._load = load
        self._metrics = metrics
        metrics.gather = self.gather

    # -- start and stop --

    def _spawn(self, index: int) -> _Member:
        ours, theirs = socket.socketpair()
        env = dict(self._env)
        env[PROCESS_ENV] = f"{index}:{theirs.fileno()}"
        try:
            process = subprocess.Popen(
                self._argv, env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        holder: list[_Member] = []
        link = Link(
            ours.detach(), lambda op, args, cancelled: self._handle(holder[0], op, args, cancelled), f"process {index}"
        )
        member = _Member(index, process, link)
        holder.append(member)
        link.start()
        log.info("Started server process %d (pid %d)", index, process.pid)
        return member

    def _await_ready(self, member: _Member, still_waiting: Callable[[], bool], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not member.ready.wait(0.2):
            code = member.process.poll()
            if code is not None or member.link.closed:
                why = f"server process {member.index} (pid {member.pid}) exited ({describe_exit(code)})"
                raise ProcessGroupError(f"{why} before it was ready")
            if not still_waiting() or self._stopping.is_set():
                raise ProcessGroupError("stopped while waiting for the server processes")
            if deadline is not None and time.monotonic() > deadline:
                raise ProcessGroupError(f"server process {member.index} was not ready within {timeout:.0f}s")

    def wait_ready(self, still_waiting: Callable[[], bool]) -> None:
        """Every follower has started (imported its modules) and said hello. Raises ProcessGroupError."""
        for member in self._members:
            self._await_ready(member, still_waiting, None)

    def serve(self) -> None:
        """Every follower binds the ports (the owner bound them first); then they are watched. Raises
        ProcessGroupError."""
        for member in self._members:
            try:
                member.link.call("serve")
            except (PeerGone, RemoteError) as exc:
                why = self._why(member, exc)
                raise ProcessGroupError(f"server process {member.index} could not open its ports: {why}") from exc
        self._watcher.start()

    def request_stop(self) -> None:
        """Ask every follower to stop (no restarts from now on); :meth:`stop` waits for them."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(STOP_TIMEOUT_SECONDS)
        for member in self._members:
            member.link.start_call("stop")

    def stop(self) -> None:
        """Stop every follower (asked first, killed after STOP_TIMEOUT_SECONDS). Idempotent."""
        self.request_stop()
        members = self._members
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for member in members:
            try:
                member.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("Server process %d (pid %d) did not stop; killing it", member.index, member.pid)
                member.process.kill()
                member.process.wait(5)
            member.link.close()
            member.link.join(5)

    # -- what ServerCore calls --

    def load(self, name: str, version: int, path: str) -> Any:
        """Load in every process; publish in every follower only when all succeeded. Returns the owner's servable."""
        with self._op_lock:
            load_id = next(self._load_ids)
            members = self._live()
            calls = [(m, m.link.start_call("prepare", load_id, name, version, path)[1]) for m in members]
            servable: Any = None
            error: BaseException | None = None
            try:
                assert self._load is not None, "attach() first"
                servable = self._load(name, version, path)
            except Exception as exc:
                error = exc
            prepared: list[_Member] = []
            for member, future in calls:
                try:
                    future.result()
                    prepared.append(member)
                except PeerGone:
                    pass  # it exited: its replacement catches up with what is published
                except (ServingError, RemoteError) as exc:
                    log.error("%s version %d failed to load in server process %d: %s", name, version, member.index, exc)
                    if error is None:
                        error = exc
            if error is not None:
                self._each(prepared, "discard", load_id)
                if servable is not None:
                    servable.close()
                if isinstance(error, RemoteError):  # the follower's load crashed: ServerCore reports UNKNOWN
                    raise ServingError(grpc.StatusCode.UNKNOWN, str(error)) from error
                raise error  # the owner's own, or a follower's ServingError, as ServerCore reports it
            self._each(prepared, "publish", load_id)
            self._published[load_id] = _Published(name, version, path)
            self._by_servable[id(servable)] = load_id
            return servable

    def unload(self, name: str, version: int, servable: Any) -> None:
        with self._op_lock:
            load_id = self._by_servable.pop(id(servable), None)
            calls = [m.link.start_call("unload", load_id)[1] for m in self._live()] if load_id is not None else []
            try:
                servable.close()
            finally:
                self._wait_all(calls, f"unload of {name} version {version}")
                if load_id is not None:
                    self._published.pop(load_id, None)

    def on_config(self, labels: dict[str, dict[str, int]], names: list[str]) -> None:
        with self._config_lock:
            retired = [load_id for load_id, p in self._published.items() if not p.retired and p.name not in names]
            for load_id in retired:
                self._published[load_id].retired = True
            self._config = (labels, names)
            calls = [m.link.start_call("config", labels, names, retired)[1] for m in self._live()]
            self._wait_all(calls, "config push")

    def gather(self) -> Snapshot:
        """Every process's metrics: this process's snapshot plus every live follower's, summed."""
        assert self._metrics is not None, "attach() first"
        snaps = [self._metrics.snapshot((0, os.getpid()))]
        calls = [m.link.start_call("snapshot")[1] for m in self._live()]
        deadline = time.monotonic() + GATHER_TIMEOUT_SECONDS
        for future in calls:
            try:
                snaps.append(future.result(max(0.0, deadline - time.monotonic())))
            except (PeerGone, RemoteError, FutureTimeout) as exc:
                log.warning("metrics of a server process are missing from this page: %s", exc or "no answer")
        return merge(snaps)

    # -- what followers call --

    def _handle(self, member: _Member, op: str, args: tuple[Any, ...], cancelled: threading.Event) -> Any:
        if op == "hello":
            member.ready.set()
            return None
        if op == "states":
            return _encode_states(self._core.version_states(args[0]))
        if op == "reload":
            from tensorflow_serving.config import model_server_config_pb2

            config = model_server_config_pb2.ModelServerConfig.FromString(args[0])
            self._core.reload_config(
                config, still_waiting=lambda: not cancelled.is_set() and not self._stopping.is_set()
            )
            return None
        if op == "metrics":
            return self.gather()
        raise RemoteError(f"unknown control call {op!r}")

    # -- keeping followers alive --

    def _live(self) -> list[_Member]:
        return [m for m in self._members if not m.link.closed]

    def _each(self, members: list[_Member], op: str, *args: Any) -> None:
        self._wait_all([m.link.start_call(op, *args)[1] for m in members], op)

    @staticmethod
    def _wait_all(calls: list[Future[Any]], what: str) -> None:
        for future in calls:
            try:
                future.result()
            except PeerGone:
                pass  # the watcher replaces it; the replacement catches up
            except (ServingError, RemoteError) as exc:
                log.error("%s failed in a server process: %s", what, exc)

    def _why(self, member: _Member, exc: BaseException) -> str:
        if isinstance(exc, PeerGone):
            with contextlib.suppress(subprocess.TimeoutExpired):
                member.process.wait(5)
            return describe_exit(member.process.poll())
        return str(exc)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for member in self._members:
                code = member.process.poll()
                if code is None and not member.link.closed:
                    continue
                if self._stopping.is_set():
                    return
                if code is None:  # it closed its control socket but lives on: not ours to trust any more
                    member.process.kill()
                    code = member.process.wait(10)
                self._replace(member, code)
                if self.failure is not None:
                    return

    def _set_members(self, members: list[_Member]) -> None:
        with self._op_lock, self._config_lock:
            self._members = tuple(sorted(members, key=lambda m: m.index))

    def _replace(self, dead: _Member, code: int) -> None:
        why = describe_exit(code)
        log.error("Server process %d (pid %d) exited unexpectedly (%s); restarting it", dead.index, dead.pid, why)
        dead.link.close()
        self._set_members([m for m in self._members if m is not dead])
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_SECONDS:
            self._restarts.popleft()
        if len(self._restarts) > RESTART_BUDGET:
            self._fail(
                f"server processes exited {len(self._restarts)} times within {RESTART_WINDOW_SECONDS / 60:.0f} "
                f"minutes (last: process {dead.index}, {describe_exit(code)})"
            )
            return
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            if self._stopping.is_set():
                return
            member: _Member | None = None
            try:
                member = self._spawn(dead.index)
                self._await_ready(member, lambda: True, READY_TIMEOUT_SECONDS)
                self._catch_up(member)
                member.link.call("serve")
                log.info("Server process %d restarted (pid %d) and serving", member.index, member.pid)
                return
            except (ProcessGroupError, PeerGone, RemoteError, ServingError, OSError) as exc:
                reason = self._why(member, exc) if member is not None else str(exc)
                if member is not None:
                    self._discard(member)
                if self._stopping.is_set():
                    return
                if attempt == RESTART_ATTEMPTS:
                    self._fail(f"server process {dead.index} could not be restarted ({attempt} attempts): {reason}")
                    return
                delay = 2 ** (attempt - 1)
                log.error("Restarting server process %d failed (%s); retrying in %d s", dead.index, reason, delay)
                self._stopping.wait(delay)

    def _catch_up(self, member: _Member) -> None:
        """Load what every process serves into a replacement, give it the labels, and make it a member."""
        with self._op_lock:
            for load_id, published in sorted(self._published.items()):
                if published.retired:
                    continue
                member.link.call("prepare", load_id, published.name, published.version, published.path)
                member.link.call("publish", load_id)
            with self._config_lock:
                if self._stopping.is_set():
                    raise ProcessGroupError("stopping")
                labels, names = self._config
                member.link.call("config", labels, names, [])
                self._members = tuple(sorted((*self._members, member), key=lambda m: m.index))

    def _discard(self, member: _Member) -> None:
        self._set_members([m for m in self._members if m is not member])
        member.link.close()
        if member.process.poll() is None:
            member.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            member.process.wait(10)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.error("Stopping the server: %s", reason)
        self._on_failure()


# -- a follower's side ---------------------------------------------------------------------------------


@dataclass
class _Held:
    name: str
    version: int
    servable: Any
    published: bool = False
    retired: bool = False


class ReplicaCore(ServableLookup):
    """A follower's core: the servables the owner told it to hold, resolved like the owner's ServerCore.

    Versions and labels change only on the owner's word; status and reloads are the owner's (asked
    over the control link), so they answer the same in every process.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._models: dict[str, ModelEntry] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._names: list[str] = []
        self._held: dict[int, _Held] = {}
        self.owner: Link | None = None

    def _owner(self) -> Link:
        if self.owner is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "this server process is not connected to its owner")
        return self.owner

    # -- the owner's orders --

    def prepare(self, load_id: int, name: str, version: int, servable: Any) -> None:
        with self._lock:
            self._held[load_id] = _Held(name, version, servable)

    def publish(self, load_id: int) -> None:
        with self._lock:
            self._held[load_id].published = True
            self._rebuild()

    def drop(self, load_id: int | None) -> None:
        """Discard a prepared version or unload a published one (waits for its runs in flight)."""
        with self._lock:
            held = self._held.pop(load_id, None) if load_id is not None else None
            self._rebuild()
        if held is not None:
            held.servable.close()

    def configure(self, labels: dict[str, dict[str, int]], names: list[str], retired: list[int]) -> None:
        with self._lock:
            for load_id in retired:
                if load_id in self._held:
                    self._held[load_id].retired = True
            self._labels = labels
            self._names = list(names)
            self._rebuild()

    def _rebuild(self) -> None:
        models = {name: ModelEntry(None) for name in self._names}
        for held in self._held.values():
            model = models.get(held.name)
            if model is not None and held.published and not held.retired:
                model.loaded[held.version] = held.servable
        self._models = models

    # -- the Core protocol --

    def version_states(self, name: str) -> dict[int, VersionState]:
        try:
            return _decode_states(self._owner().call("states", name, timeout=30))
        except (PeerGone, RemoteError) as exc:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"model status unavailable: {exc}") from exc

    def reload_config(self, config: Any, *, still_waiting: Callable[[], bool] = lambda: True) -> None:
        """Applied by the owner to every process; answers when, and what, the owner answers."""
        owner = self._owner()
        call_id, future = owner.start_call("reload", config.SerializeToString())
        cancelled = False
        while True:
            try:
                future.result(0.2)
                return
            except FutureTimeout:
                if not cancelled and not still_waiting():
                    owner.cancel(call_id)  # the owner gives up as it would for its own caller
                    cancelled = True
            except (PeerGone, RemoteError) as exc:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"config reload failed: {exc}") from exc

    def stop(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
            self._models = {}
        for item in held:
            item.servable.close()


class Follower:
    """Process ``index`` of the group: obeys its owner over the control socket ``fd``.

    main.py runs a follower through the same start-up as the owner, with three differences: its core
    is a :class:`ReplicaCore`, it loads nothing until told, and it binds its ports when the owner says
    so (:meth:`wait_for_serve`), reporting the outcome (:meth:`serving`).
    """

    def __init__(self, index: int, fd: int, load: LoadFn, metrics: Metrics, stopping: threading.Event) -> None:
        self.index = index
        self.core = ReplicaCore()
        self._load = load
        self._metrics = metrics
        self._stopping = stopping
        self._serve_asked = threading.Event()
        self._serve_done = threading.Event()
        self._serve_error: str | None = None
        self.link = Link(fd, self._handle, "the owner process", on_close=self._owner_gone)
        self.core.owner = self.link
        metrics.gather = self._gather

    def start(self) -> None:
        self.link.start()
        try:
            self.link.call("hello", os.getpid())
        except PeerGone:
            self._stopping.set()  # the owner is gone already: nothing to serve for

    def wait_for_serve(self) -> bool:
        """True when the owner asks this process to bind its ports; False when it is stopping instead."""
        while not self._serve_asked.wait(0.5):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def serving(self, error: str | None = None) -> None:
        self._serve_error = error
        self._serve_done.set()

    def close(self) -> None:
        self.link.close()
        self.link.join(5)

    def _owner_gone(self) -> None:
        if not self._stopping.is_set():
            log.error("The owner process is gone; stopping")
        self._stopping.set()
        self._serve_done.set()

    def _gather(self) -> Snapshot:
        snapshot = self.link.call("metrics", timeout=GATHER_TIMEOUT_SECONDS * 2)
        assert isinstance(snapshot, Snapshot)
        return snapshot

    def _handle(self, op: str, args: tuple[Any, ...], _cancelled: threading.Event) -> Any:
        if op == "prepare":
            load_id, name, version, path = args
            self.core.prepare(load_id, name, version, self._load(name, version, path))
            log.info("Loaded %s version %d (served once every process has it)", name, version)
        elif op == "publish":
            self.core.publish(args[0])
        elif op in ("discard", "unload"):
            self.core.drop(args[0])
        elif op == "config":
            self.core.configure(*args)
        elif op == "snapshot":
            return self._metrics.snapshot((self.index, os.getpid()))
        elif op == "serve":
            self._serve_asked.set()
            self._serve_done.wait()
            if self._serve_error is not None or self._stopping.is_set():
                raise RemoteError(self._serve_error or "stopping")
        elif op == "stop":
            log.info("Stopping (asked by the owner process)")
            self._stopping.set()
        else:
            raise RemoteError(f"unknown control call {op!r}")
        return None


def follower_argv(args: list[str]) -> list[str]:
    """A follower runs this program with the owner's flags."""
    return [sys.executable, "-m", "deployer.model_server", *args]


def set_log_prefix(index: int) -> None:
    """Tell the processes' interleaved log lines apart: ``p<index>:<pid>`` after the logger name."""
    formatter = logging.Formatter(f"%(asctime)s %(levelname).1s %(name)s p{index}:{os.getpid()}] %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
