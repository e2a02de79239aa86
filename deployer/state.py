"""The state directory of one manifest: rendered config, the running server's handle, logs, ledger.

Files are replaced atomically (write a temp file, fsync, rename) so a crash never leaves a torn
config for the server to read at its next start.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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

    def ensure(self) -> None:
        try:
            self.config_dir.mkdir(parents=True, exist_ok=True)
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
