"""The state directory of one manifest: rendered config, the running server's handle, logs, ledger.

Files are replaced atomically (write a temp file, fsync, rename) so a crash never leaves a torn
config for the server to read at its next start.

The directory is deployer's own: created with mode 0700 (its ``config/`` 0755, since a server
running as another user reads it), marked with ``.deployer-state`` naming its project, owned by the
user who runs deployer and writable by nobody else. An existing directory is adopted only when it is
empty or holds nothing but state files; it is never chmodded. Every state file is opened without
following symlinks (see deployer.safe_io).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from deployer import safe_io
from deployer.errors import DeployerError, UnsafeStateError, UsageError
from deployer.runtime.base import ServerHandle
from deployer.server_config import MODELS_CONFIG

MARKER = ".deployer-state"
_STATE_FILES = frozenset(
    {
        MARKER,
        "config",
        "server.json",
        "server.log",
        "server.pid",
        "ledger.jsonl",
        "ledger.jsonl.lock",
        "promote.lock",
        "promote.lock.owner",
        "last-server.json",
        "deployment.json",
    }
)
# Bounds for files deployer writes itself: anything bigger was not written by deployer.
_SMALL_FILE = 1024 * 1024
_CONFIG_FILE = 16 * 1024 * 1024


def write_atomic(path: Path, text: str, mode: int = safe_io.SHARED_FILE) -> None:
    """Atomic replace (see safe_io.write_atomic); config files default to world-readable for the server."""
    safe_io.write_atomic(path, text, mode)


class StateLockBusy(DeployerError):
    """Another deployer operation holds the state directory's lock (``holder`` describes it, may be empty)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class CorruptHandle(UsageError):
    """server.json cannot be read as a server handle (torn, garbage, a FIFO, a symlink)."""


def _is_state_entry(name: str) -> bool:
    # write_atomic's temp files are ".<name>.<random>".
    return name in _STATE_FILES or any(name.startswith(f".{known}.") for known in _STATE_FILES)


class StateDir:
    def __init__(self, root: Path, project: str | None = None) -> None:
        self.root = root
        self.project = project
        self._checked = False

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def models_config(self) -> Path:
        return self.config_dir / MODELS_CONFIG

    @property
    def handle_file(self) -> Path:
        return self.root / "server.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def promote_lock(self) -> Path:
        return self.root / "promote.lock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def last_server_file(self) -> Path:
        # The last server that stopped or failed, and why: `deployer logs` after a failed `up`.
        return self.root / "last-server.json"

    def record_last_server(self, handle: ServerHandle, ended: str, log_text: str | None = None) -> None:
        """Remember a server that is going away; ``log_text`` (a container's log read before its removal)
        replaces server.log, which a local server writes itself."""
        self.ensure()
        if log_text is not None:
            safe_io.write_atomic(self.log_file, log_text, safe_io.PRIVATE_FILE)
        doc = {"server": handle.to_json(), "ended": ended, "at": time.time()}
        safe_io.write_atomic(self.last_server_file, json.dumps(doc, indent=2) + "\n", safe_io.PRIVATE_FILE)

    @property
    def deployment_file(self) -> Path:
        # What the last `up` started: runtime, image and the spec's parts (compose keeps the same).
        return self.root / "deployment.json"

    def save_deployment(self, record: dict[str, Any]) -> None:
        self.ensure()
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        safe_io.write_atomic(self.deployment_file, text, safe_io.PRIVATE_FILE)

    def load_deployment(self) -> dict[str, Any] | None:
        try:
            if not self.check():
                return None
            data = json.loads(safe_io.read_text(self.deployment_file, _SMALL_FILE) or "null")
        except (DeployerError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def last_server(self) -> tuple[ServerHandle, str, float] | None:
        """(handle, why it ended, when) of the last recorded server, or None."""
        try:
            if not self.check():
                return None
            doc = json.loads(safe_io.read_text(self.last_server_file, _SMALL_FILE) or "null")
            return ServerHandle.from_json(doc["server"]), str(doc["ended"]), float(doc["at"])
        except (DeployerError, ValueError, KeyError, TypeError):
            return None

    @property
    def marker_file(self) -> Path:
        return self.root / MARKER

    @property
    def lock_owner_file(self) -> Path:
        # filelock truncates the lock file on open, so the holder's identity lives beside it.
        return self.promote_lock.with_name(self.promote_lock.name + ".owner")

    # ---- the directory ------------------------------------------------------------------------
    def check(self) -> bool:
        """Validate an existing state directory (owner, mode, kind, project); False when there is none.

        Every reader calls this first, so a state directory planted by another user is refused before a
        single file in it is read or a pid from it is signalled.
        """
        if self._checked:
            return True
        if not os.path.lexists(self.root):
            return False
        safe_io.check_private_dir(self.root, "state_dir")
        marker = self._read_marker()
        if marker is None:
            self._refuse_foreign()
        elif self.project is not None and marker.get("project") not in (None, self.project):
            raise UnsafeStateError(
                f"state_dir {self.root} belongs to project {marker.get('project')!r}, not {self.project!r}",
                hint="give each manifest its own state_dir; two projects sharing one would act on each other's server",
            )
        if os.path.lexists(self.config_dir):
            safe_io.check_private_dir(self.config_dir, "config directory")
        self._checked = True
        return True

    def ensure(self) -> None:
        """Create the state directory (or adopt an empty or state-only one) and its config directory."""
        try:
            if not os.path.lexists(self.root):
                safe_io.make_dirs(self.root.parent, safe_io.SHARED_DIR)
                safe_io.make_dirs(self.root, safe_io.PRIVATE_DIR)
            self.check()
            if self._read_marker() is None or (self.project is not None and not self._marker_names_project()):
                marker = {"project": self.project, "created_by": "deployer", "time": round(time.time(), 3)}
                safe_io.write_atomic(self.marker_file, json.dumps(marker) + "\n", safe_io.PRIVATE_FILE)
            if not os.path.lexists(self.config_dir):
                # Whatever the umask, a containerised server running as another user must reach the config.
                safe_io.make_dirs(self.config_dir, safe_io.SHARED_DIR)
        except OSError as exc:
            raise UnsafeStateError(f"cannot create the state directory {self.root}: {exc.strerror or exc}") from None

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            text = safe_io.read_text(self.marker_file, _SMALL_FILE)
        except UnsafeStateError:
            raise
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _marker_names_project(self) -> bool:
        marker = self._read_marker() or {}
        return marker.get("project") == self.project

    def _refuse_foreign(self) -> None:
        try:
            foreign = sorted(name for name in os.listdir(self.root) if not _is_state_entry(name))
        except OSError as exc:
            raise UnsafeStateError(f"cannot list state_dir {self.root}: {exc.strerror}") from None
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise UnsafeStateError(
                f"state_dir {self.root} is a non-empty directory deployer did not create (it holds {shown})",
                hint="point state_dir at a new or empty directory",
            )

    # ---- the lock -----------------------------------------------------------------------------
    def describe_lock_holder(self) -> str:
        """``pid N`` of the holder, plus its operation when that is not a promotion; empty if unknown."""
        try:
            data = json.loads(safe_io.read_text(self.lock_owner_file, _SMALL_FILE) or "")
            operation = "" if data["operation"] == "promote" else f", {data['operation']}"
            return f"pid {int(data['pid'])}{operation}"
        except (DeployerError, ValueError, KeyError, TypeError):
            return ""

    def lock_holder_pid(self) -> int | None:
        try:
            data = json.loads(safe_io.read_text(self.lock_owner_file, _SMALL_FILE) or "")
            return int(data["pid"])
        except (DeployerError, ValueError, KeyError, TypeError):
            return None

    @contextmanager
    def operation_lock(
        self,
        operation: str,
        *,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[float]:
        """Serialize operations that rewrite models.config (up, promote, rollback); yields seconds waited.

        ``timeout`` None waits forever, 0 fails at once; on failure raises StateLockBusy naming the holder.
        """
        self.ensure()
        # thread_local=False: the lock belongs to the operation, not to whichever thread acquired it.
        lock = FileLock(str(self.promote_lock), thread_local=False, mode=safe_io.PRIVATE_FILE)
        started = time.monotonic()
        try:
            try:
                lock.acquire(blocking=False)
            except Timeout:
                holder = self.describe_lock_holder()
                if timeout == 0:
                    busy = f"{holder or 'another deployer operation'} holds {self.promote_lock}"
                    raise StateLockBusy(busy, holder) from None
                if on_wait is not None:
                    on_wait(holder)
                try:
                    lock.acquire(timeout=-1 if timeout is None else timeout)
                except Timeout:
                    raise StateLockBusy(
                        f"{holder or 'another deployer operation'} still holds {self.promote_lock}"
                        f" after {timeout:.0f} s",
                        holder,
                    ) from None
        except OSError as exc:
            # filelock opens with O_NOFOLLOW: a symlink planted as the lock file lands here.
            raise UnsafeStateError(f"cannot lock {self.promote_lock}: {exc.strerror or exc}") from None
        waited = time.monotonic() - started
        try:
            owner = {"operation": operation, "pid": os.getpid(), "since": time.time()}
            safe_io.write_atomic(self.lock_owner_file, json.dumps(owner), safe_io.PRIVATE_FILE)
            yield waited
        finally:
            safe_io.remove_file(self.lock_owner_file)
            lock.release()

    # ---- files --------------------------------------------------------------------------------
    def write_config_files(self, files: dict[str, str]) -> None:
        self.ensure()
        for name, text in files.items():
            write_atomic(self.config_dir / name, text, safe_io.SHARED_FILE)

    def read_models_config(self) -> str | None:
        if not self.check():
            return None
        return safe_io.read_text(self.models_config, _CONFIG_FILE)

    def load_handle(self) -> ServerHandle | None:
        """The recorded server, None when there is none; CorruptHandle when server.json is unusable."""
        if not self.check():
            return None
        try:
            text = safe_io.read_text(self.handle_file, _SMALL_FILE)
        except UnsafeStateError as exc:
            raise CorruptHandle(f"unusable server state: {exc.message}", hint="run `deployer down`") from None
        if text is None:
            return None
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return ServerHandle.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptHandle(f"corrupt server state {self.handle_file}: {exc}", hint="run `deployer down`") from None

    def save_handle(self, handle: ServerHandle) -> None:
        self.ensure()
        safe_io.write_atomic(self.handle_file, json.dumps(handle.to_json(), indent=2) + "\n", safe_io.PRIVATE_FILE)

    def clear_handle(self) -> None:
        if self.check():
            safe_io.remove_file(self.handle_file)

    def open_log(self) -> int:
        """A fresh server log (truncated), for the local runtime's server to write to."""
        self.ensure()
        return safe_io.open_nofollow(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, safe_io.PRIVATE_FILE)

    def write_pid(self, pid: int, start_ticks: int | None) -> None:
        self.ensure()
        lines = f"{pid}\n" + (f"{start_ticks}\n" if start_ticks is not None else "")
        safe_io.write_atomic(self.pid_file, lines, safe_io.PRIVATE_FILE)

    def read_pid(self) -> tuple[int, int | None] | None:
        """(pid, start time in clock ticks or None) from the pid file; None when absent or unreadable."""
        try:
            if not self.check():
                return None
            text = safe_io.read_text(self.pid_file, 4096)
        except UnsafeStateError:
            return None
        if text is None:
            return None
        parts = text.split()
        try:
            pid = int(parts[0])
            start = int(parts[1]) if len(parts) > 1 else None
        except (IndexError, ValueError):
            return None
        return (pid, start) if pid > 0 else None

    def remove_pid(self, pid: int) -> None:
        recorded = self.read_pid()
        if recorded is not None and recorded[0] == pid:
            safe_io.remove_file(self.pid_file)
