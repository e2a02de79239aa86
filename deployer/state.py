"""The state directory of one manifest: rendered config, the running server's handle, logs, ledger.

Files are replaced atomically (write a temp file, fsync, rename) so a crash never leaves a torn
config for the server to read at its next start.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from deployer.errors import DeployerError, StoreError
from deployer.runtime.base import ServerHandle
from deployer.server_config import MODELS_CONFIG


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600; the server may run as another user (the compatible image's uid 10001).
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateLockBusy(DeployerError):
    """Another deployer operation holds the state directory's lock (``holder`` describes it, may be empty)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

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
            write_atomic(self.log_file, log_text)
        doc = {"server": handle.to_json(), "ended": ended, "at": time.time()}
        write_atomic(self.last_server_file, json.dumps(doc, indent=2) + "\n")

    @property
    def deployment_file(self) -> Path:
        # What the last `up` started: runtime, image and the spec's parts (compose keeps the same).
        return self.root / "deployment.json"

    def save_deployment(self, record: dict[str, Any]) -> None:
        write_atomic(self.deployment_file, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def load_deployment(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.deployment_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def last_server(self) -> tuple[ServerHandle, str, float] | None:
        """(handle, why it ended, when) of the last recorded server, or None."""
        try:
            doc = json.loads(self.last_server_file.read_text(encoding="utf-8"))
            return ServerHandle.from_json(doc["server"]), str(doc["ended"]), float(doc["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def lock_owner_file(self) -> Path:
        # filelock truncates the lock file on open, so the holder's identity lives beside it.
        return self.promote_lock.with_name(self.promote_lock.name + ".owner")

    def describe_lock_holder(self) -> str:
        """``pid N`` of the holder, plus its operation when that is not a promotion; empty if unknown."""
        try:
            data = json.loads(self.lock_owner_file.read_text(encoding="utf-8"))
            operation = "" if data["operation"] == "promote" else f", {data['operation']}"
            return f"pid {int(data['pid'])}{operation}"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

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
        lock = FileLock(str(self.promote_lock), thread_local=False)
        started = time.monotonic()
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
                    f"{holder or 'another deployer operation'} still holds {self.promote_lock} after {timeout:.0f} s",
                    holder,
                ) from None
        waited = time.monotonic() - started
        try:
            owner = {"operation": operation, "pid": os.getpid(), "since": time.time()}
            write_atomic(self.lock_owner_file, json.dumps(owner))
            yield waited
        finally:
            self.lock_owner_file.unlink(missing_ok=True)
            lock.release()

    def ensure(self) -> None:
        try:
            self.config_dir.mkdir(parents=True, exist_ok=True)
            # Whatever the umask, a containerised server running as another user must reach the config.
            self.config_dir.chmod(0o755)
        except OSError as exc:
            raise StoreError(f"cannot create the state directory {self.root}: {exc.strerror}") from None

    def write_config_files(self, files: dict[str, str]) -> None:
        self.ensure()
        for name, text in files.items():
            write_atomic(self.config_dir / name, text)

    def read_models_config(self) -> str | None:
        try:
            return self.models_config.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def load_handle(self) -> ServerHandle | None:
        try:
            data: Any = json.loads(self.handle_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DeployerError(f"corrupt server state {self.handle_file}: {exc}", hint="run `deployer down`") from None
        return ServerHandle.from_json(data)

    def save_handle(self, handle: ServerHandle) -> None:
        write_atomic(self.handle_file, json.dumps(handle.to_json(), indent=2) + "\n")

    def clear_handle(self) -> None:
        self.handle_file.unlink(missing_ok=True)
