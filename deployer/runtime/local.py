"""The local runtime: the model server as a detached process on this machine.

``tensorflow_model_server`` when it is on PATH, else deployer's compatible server from this very
Python environment. The pid and log files live in the state directory; a pid is only ever signalled
after it proves to be the server of *this manifest's* state directory: its command line names that
directory's models.config, and its start time matches the one recorded when it was started (a
reused pid has another). The state directory comes from the manifest, never from the process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from deployer import safe_io
from deployer.errors import RuntimeUnavailable
from deployer.runtime.base import LaunchSpec, Layout, ProcessState, Replica, ServerHandle, single_replica
from deployer.server_config import MODELS_CONFIG
from deployer.state import StateDir

TF_SERVING_BINARY = "tensorflow_model_server"
STOP_GRACE_SECONDS = 10.0

# Children started by this process: only they can be reaped, which turns a zombie into an exit code.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_codes: dict[int, int] = {}


def server_command() -> list[str]:
    binary = shutil.which(TF_SERVING_BINARY)
    if binary is not None:
        return [binary]
    # sys.executable, not a PATH lookup of deployer-model-server: the venv that runs deployer serves too.
    return [sys.executable, "-m", "deployer.model_server"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The same option servers set, so a port in TIME_WAIT from a stopped server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise RuntimeUnavailable(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return True


def free_port(host: str, avoid: Sequence[int] = ()) -> int:
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeUnavailable(f"cannot find a free port on {host}")


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None when it is gone (or a zombie, which serves nothing)."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.split() or None


def _flag(argv: Sequence[str], name: str) -> str | None:
    prefix = f"--{name}="
    for index, arg in enumerate(argv):
        if arg.startswith(prefix):
            return arg[len(prefix) :]
        if arg == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def _config_marker(state_dir: Path) -> str:
    return str(StateDir(state_dir.resolve()).config_dir / MODELS_CONFIG)


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ")".
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def binds_every_interface(command: Sequence[str]) -> bool:
    """tensorflow_model_server has no bind-address flag: it listens on 0.0.0.0 whatever server.host says."""
    return Path(command[0]).name == TF_SERVING_BINARY


class LocalRuntime:
    name: ClassVar[str] = "local"

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        command: Sequence[str] | None = None,
        stop_grace_s: float = STOP_GRACE_SECONDS,
    ) -> None:
        self._state_dir = state_dir
        self._command = list(command) if command is not None else None
        self._stop_grace_s = stop_grace_s

    # ---- Runtime contract ---------------------------------------------------------------------
    def layout(self, model_base_paths: dict[str, Path], config_dir: Path) -> Layout:
        return Layout(
            model_paths={name: str(path.resolve()) for name, path in model_base_paths.items()},
            config_dir=str(config_dir.resolve()),
        )

    def start(self, spec: LaunchSpec) -> ServerHandle:
        command = self._command or server_command()
        if shutil.which(command[0]) is None:
            raise RuntimeUnavailable(f"the model server command {command[0]} is not installed")
        grpc_port = self._port(spec.host, spec.grpc_port, "gRPC", avoid=())
        rest_port = self._port(spec.host, spec.rest_port, "REST", avoid=(grpc_port,))
        state = StateDir(spec.state_dir, spec.project or None)
        state.ensure()
        argv = [*command, f"--port={grpc_port}", f"--rest_api_port={rest_port}", *spec.args]
        if _config_marker(spec.state_dir) not in " ".join(argv):
            # find() recognises our process by this path in its command line; without it we could not stop it.
            raise RuntimeUnavailable("the local runtime needs the config under the state directory (bug)")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The compatible server binds this address (tensorflow_model_server always binds 0.0.0.0).
        env["DEPLOYER_MODEL_SERVER_HOST"] = spec.host
        log_fd = state.open_log()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(spec.state_dir),
                # Its own session: Ctrl-C in the terminal that ran `deployer up` must not kill the server.
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot start {command[0]}: {exc.strerror}") from None
        finally:
            os.close(log_fd)
        _children[process.pid] = process
        ticks = start_ticks(process.pid)
        state.write_pid(process.pid, ticks)
        return ServerHandle(
            runtime=self.name,
            ident=str(process.pid),
            name=Path(command[-1] if command[0] == sys.executable else command[0]).name,
            grpc_target=f"{_dial(spec.host)}:{grpc_port}",
            rest_url=f"http://{_dial(spec.host)}:{rest_port}",
            spec_hash=spec.spec_hash,
            image=None,
            started_at=time.time(),
            project=spec.project,
            state_dir=str(spec.state_dir),
            start_ticks=ticks,
            weakenings=spec.weakenings,
        )

    def find(self, project: str, state_dir: Path) -> ServerHandle | None:
        state = StateDir(state_dir)
        recorded_pid = state.read_pid()
        if recorded_pid is None:
            return None
        pid, ticks = recorded_pid
        if not self._is_ours(pid, state_dir, ticks):
            return None
        recorded = _safe_handle(state)
        if (
            recorded is not None
            and recorded.runtime == self.name
            and recorded.ident == str(pid)
            and recorded.claims(project, state_dir)
        ):
            return recorded
        # The handle file is gone or stale: rebuild what we can from the command line. An empty spec
        # hash makes the next `up` recreate the server rather than trust a spec it cannot verify.
        argv = _cmdline(pid) or []
        host = "127.0.0.1"
        grpc_port, rest_port = _flag(argv, "port"), _flag(argv, "rest_api_port")
        return ServerHandle(
            runtime=self.name,
            ident=str(pid),
            name=Path(argv[0]).name if argv else "model-server",
            grpc_target=f"{host}:{grpc_port}",
            rest_url=f"http://{host}:{rest_port}" if rest_port and rest_port != "0" else None,
            spec_hash="",
            image=None,
            started_at=0.0,
            project=project,
            state_dir=str(state_dir),
            start_ticks=ticks,
        )

    def state(self, handle: ServerHandle) -> ProcessState:
        pid = int(handle.ident)
        child = _children.get(pid)
        if child is not None:
            code = child.poll()
            if code is not None:
                return ProcessState(running=False, exit_code=code, detail=_describe_exit(code))
            return ProcessState(running=True, detail="running")
        if _cmdline(pid) is None:
            # Not our child (or reaped by stop()): only our own children leave an exit code behind.
            code = _exit_codes.get(pid)
            detail = "exited" if code is None else _describe_exit(code)
            return ProcessState(running=False, exit_code=code, detail=detail)
        return ProcessState(running=True, detail="running")

    def logs(self, handle: ServerHandle, tail: int = 50) -> str:
        log_file = self._log_file(handle)
        if log_file is None:
            return ""
        return _tail(log_file, tail)

    def follow_logs(self, handle: ServerHandle, tail: int = 50, *, poll_s: float = 0.2) -> Iterator[str]:
        log_file = self._log_file(handle)
        if log_file is None or not log_file.is_file():
            return
        yield from _tail(log_file, tail).splitlines()
        with open(log_file, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            pending = b""
            while True:
                alive = self.state(handle).running
                chunk = stream.read()
                if chunk:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.decode("utf-8", errors="replace")
                elif not alive:
                    if pending:
                        yield pending.decode("utf-8", errors="replace")
                    return
                else:
                    time.sleep(poll_s)

    def replicas(self, handle: ServerHandle) -> list[Replica]:
        return single_replica(handle, self.state(handle))

    def stop(self, handle: ServerHandle) -> None:
        pid = int(handle.ident)
        state_dir = self._state_dir_of(handle)
        if state_dir is not None and not self._is_ours(pid, state_dir, handle.start_ticks):
            self._forget(pid, state_dir)
            return
        if state_dir is None and pid not in _children:
            # Without a state directory the command line cannot be checked: refuse to signal a stranger.
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_grace_s
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.05)
        if self._alive(pid):
            _signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self._alive(pid):
                time.sleep(0.05)
        self._forget(pid, state_dir)

    def restart(self, handle: ServerHandle) -> ServerHandle:
        pid = int(handle.ident)
        argv = _cmdline(pid)
        state_dir = self._state_dir_of(handle)
        if argv is None or state_dir is None or not self._is_ours(pid, state_dir, handle.start_ticks):
            raise RuntimeUnavailable(
                f"cannot restart the local server {handle.ident}: it is not running", hint="run `deployer up`"
            )
        self.stop(handle)
        # Same command, flags and ports: the config on disk decides what comes back.
        split = next((i for i, arg in enumerate(argv) if arg.startswith("--")), len(argv))
        command, flags = argv[:split], argv[split:]
        args = tuple(a for a in flags if not a.startswith(("--port=", "--rest_api_port=")))
        host = handle.grpc_target.rpartition(":")[0]
        runtime = LocalRuntime(state_dir, command=command, stop_grace_s=self._stop_grace_s)
        spec = LaunchSpec(
            project=handle.project,
            spec_hash=handle.spec_hash,
            image="",
            host=host,
            grpc_port=int(_flag(argv, "port") or 0),
            rest_port=int(_flag(argv, "rest_api_port") or 0),
            args=args,
            layout=Layout(model_paths={}, config_dir=str(StateDir(state_dir).config_dir)),
            state_dir=state_dir,
            weakenings=handle.weakenings,
        )
        return runtime.start(spec)

    def recognises(self, handle: ServerHandle) -> bool:
        """False when the handle's pid is alive but is not this state directory's server (another
        project's, or a reused pid); a gone process is recognised (there is nothing to confuse)."""
        try:
            pid = int(handle.ident)
        except ValueError:
            return False
        state_dir = self._state_dir_of(handle)
        if not self._alive(pid) or state_dir is None:
            return True
        return self._is_ours(pid, state_dir, handle.start_ticks)

    # ---- helpers --------------------------------------------------------------------------------
    def _port(self, host: str, port: int, what: str, avoid: Sequence[int]) -> int:
        if port == 0:
            return free_port(host, avoid)
        if not _port_free(host, port):
            raise RuntimeUnavailable(
                f"the {what} port {host}:{port} is already in use",
                hint="stop whatever listens there, or set server.grpc_port: 0 / server.rest_port: 0 to pick free ports",
            )
        return port

    def _is_ours(self, pid: int, state_dir: Path, ticks: int | None) -> bool:
        """The server of ``state_dir``: its command line names that config, and (when recorded) it
        started when the recorded process did; a pid reused by anything else fails one or the other."""
        argv = _cmdline(pid)
        if argv is None or _config_marker(state_dir) not in " ".join(argv) or not self._alive(pid):
            return False
        return ticks is None or start_ticks(pid) == ticks

    @staticmethod
    def _alive(pid: int) -> bool:
        child = _children.get(pid)
        if child is not None:
            return child.poll() is None
        return _cmdline(pid) is not None and not _zombie(pid)

    def _state_dir_of(self, handle: ServerHandle) -> Path | None:
        """The state directory to check the process against: this runtime's (the manifest's), else the
        handle's own record. Never the process's command line: a stranger's server names its own
        directory there, which is how a copied handle once made `down -f B` stop project A's server."""
        if self._state_dir is not None:
            return self._state_dir
        return Path(handle.state_dir) if handle.state_dir else None

    def _log_file(self, handle: ServerHandle) -> Path | None:
        state_dir = self._state_dir_of(handle)
        return StateDir(state_dir).log_file if state_dir is not None else None

    def _forget(self, pid: int, state_dir: Path | None) -> None:
        child = _children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _exit_codes[pid] = child.wait(timeout=1.0)
        if state_dir is not None:
            StateDir(state_dir).remove_pid(pid)


def _dial(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _safe_handle(state: StateDir) -> ServerHandle | None:
    try:
        return state.load_handle()
    except Exception:  # a corrupt handle file must not hide a live server from find()
        return None


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The server leads its own session (start_new_session), so its group is only it and its children.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "exited"


def _tail(path: Path, lines: int) -> str:
    try:
        fd = safe_io.open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, max(4096, lines * 400))
        handle.seek(size - block)
        data = handle.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:]) + ("\n" if data else "")
