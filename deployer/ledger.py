"""The promotion history: an append-only JSON-lines file in the state directory.

Every promotion or rollback that reached a decision appends exactly one line (ok, failed or
rolled_back). Writers hold a file lock around the append so lines from concurrent processes never
interleave; readers tolerate a torn last line (a crash mid-write) and skip it instead of refusing
the whole history.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from deployer.errors import DeployerError

Result = Literal["ok", "failed", "rolled_back"]
Kind = Literal["promote", "rollback"]
RESULTS: tuple[Result, ...] = ("ok", "failed", "rolled_back")

# Appends take milliseconds; a lock held this long means a wedged process, not contention.
_LOCK_TIMEOUT_S = 30.0


def current_user() -> str:
    """Who ran the command: $DEPLOYER_USER wins (CI can name the pipeline), then the login name."""
    explicit = os.environ.get("DEPLOYER_USER")
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No passwd entry (containers with arbitrary uids): still record something traceable.
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class LedgerEntry:
    """One decided promotion. ``from_version`` is None when the label did not exist before."""

    time: float
    user: str
    project: str
    model: str
    label: str
    kind: Kind
    from_version: int | None
    to_version: int
    result: Result
    reason: str = ""
    smoke: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    pid: int = 0

    @property
    def iso_time(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.iso_time,
            "timestamp": round(self.time, 3),
            "user": self.user,
            "project": self.project,
            "model": self.model,
            "label": self.label,
            "kind": self.kind,
            "from": self.from_version,
            "to": self.to_version,
            "result": self.result,
            "reason": self.reason,
            "smoke": self.smoke,
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
            "pid": self.pid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerEntry:
        result = data["result"]
        kind = data.get("kind", "promote")
        if result not in RESULTS or kind not in ("promote", "rollback"):
            raise ValueError(f"unknown result/kind {result!r}/{kind!r}")
        from_version = data.get("from")
        return cls(
            time=float(data["timestamp"]),
            user=str(data.get("user", "")),
            project=str(data.get("project", "")),
            model=str(data["model"]),
            label=str(data["label"]),
            kind=kind,
            from_version=None if from_version is None else int(from_version),
            to_version=int(data["to"]),
            result=result,
            reason=str(data.get("reason", "")),
            smoke=dict(data.get("smoke") or {}),
            durations={str(k): float(v) for k, v in (data.get("durations") or {}).items()},
            pid=int(data.get("pid", 0)),
        )


@dataclass(frozen=True)
class History:
    entries: list[LedgerEntry]
    # Lines that could not be read (a torn write after a crash); reported, never fatal.
    skipped_lines: list[int]


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S)

    def append(self, entry: LedgerEntry) -> None:
        line = json.dumps(entry.to_json(), sort_keys=False, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._repair_torn_tail()
                # O_APPEND plus fsync: the line is whole and durable before the promotion reports success.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except Timeout:
            raise DeployerError(
                f"the ledger {self.path} stayed locked for {_LOCK_TIMEOUT_S:.0f}s",
                hint=f"a deployer process may be stuck; check {self.path}.lock",
            ) from None
        except OSError as exc:
            raise DeployerError(f"cannot append to the ledger {self.path}: {exc.strerror}") from None

    def _repair_torn_tail(self) -> None:
        """Terminate a line torn by a crash, so the next entry starts on its own line and stays readable."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() == 0:
                    return
                handle.seek(-1, os.SEEK_END)
                last = handle.read(1)
        except FileNotFoundError:
            return
        if last != b"\n":
            with self.path.open("ab") as handle:
                handle.write(b"\n")

    def read(self) -> History:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return History(entries=[], skipped_lines=[])
        except OSError as exc:
            raise DeployerError(f"cannot read the ledger {self.path}: {exc.strerror}") from None
        entries: list[LedgerEntry] = []
        skipped: list[int] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                entries.append(LedgerEntry.from_json(data))
            except (ValueError, KeyError, TypeError):
                skipped.append(number)
        return History(entries=entries, skipped_lines=skipped)

    def entries(self) -> list[LedgerEntry]:
        return self.read().entries


def last_successful(entries: Iterable[LedgerEntry], model: str, label: str) -> LedgerEntry | None:
    """The newest ``ok`` entry that moved ``label`` of ``model`` (what a rollback undoes)."""
    found: LedgerEntry | None = None
    for entry in entries:
        if entry.model == model and entry.label == label and entry.result == "ok":
            found = entry
    return found
