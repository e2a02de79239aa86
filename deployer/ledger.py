"""The promotion history: an append-only JSON-lines file in the state directory.

Every promotion or rollback that reached a decision appends exactly one line (ok, failed or
rolled_back). Writers hold a file lock around the append so lines from concurrent processes never
interleave; readers tolerate a torn last line (a crash mid-write) and skip it instead of refusing
the whole history.

The ledger never lags the served state: before a promotion moves a label it appends an *intent*
(result ``pending``, with the promotion's ``id``), and its final line carries the same id. A process
killed in between leaves a dangling intent, which is settled from ``models.config`` (the deployment's
truth, written before every reload): if the label there points at the intent's target, the move
happened (``ok``), otherwise it did not (``failed``). ``history`` settles in memory; the next
promotion settles on disk, under the state lock, before it reads the history for itself.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from deployer import safe_io
from deployer.errors import DeployerError, UnsafeStateError

Result = Literal["ok", "failed", "rolled_back", "pending"]
Kind = Literal["promote", "rollback"]
RESULTS: tuple[Result, ...] = ("ok", "failed", "rolled_back", "pending")
PENDING: Result = "pending"


def new_id() -> str:
    return uuid.uuid4().hex[:16]


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
    id: str = ""  # shared by a promotion's intent and its final line

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
            "id": self.id,
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
            id=str(data.get("id", "")),
        )


@dataclass(frozen=True)
class History:
    entries: list[LedgerEntry]
    # Lines that could not be read (a torn write after a crash); reported, never fatal.
    skipped_lines: list[int]


# Who answers "where does this label point now" (from models.config) and "is that pid still promoting".
LabelNow = Callable[[str, str], int | None]
InProgress = Callable[[int], bool]


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S, mode=safe_io.PRIVATE_FILE)

    def append(self, entry: LedgerEntry) -> None:
        line = json.dumps(entry.to_json(), sort_keys=False, separators=(",", ":")) + "\n"
        try:
            if not self.path.parent.is_dir():
                safe_io.make_dirs(self.path.parent, safe_io.PRIVATE_DIR)
            with self._lock:
                # O_NOFOLLOW: a symlink planted as the ledger must not get our lines appended to its target.
                fd = safe_io.open_nofollow(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, safe_io.PRIVATE_FILE)
                try:
                    self._repair_torn_tail(fd)
                    # O_APPEND plus fsync: the line is whole and durable before the promotion reports success.
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
            if exc.errno == errno.ELOOP:  # filelock opens its lock file with O_NOFOLLOW too
                link = exc.filename or self.path
                raise UnsafeStateError(f"{link} is a symlink; deployer does not follow symlinks in its state") from None
            raise DeployerError(f"cannot append to the ledger {self.path}: {exc.strerror or exc}") from None

    @staticmethod
    def _repair_torn_tail(fd: int) -> None:
        """Terminate a line torn by a crash, so the next entry starts on its own line and stays readable."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        if os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")

    def read(self) -> History:
        """Every decided entry, plus intents that have no final line yet (result ``pending``)."""
        try:
            fd = safe_io.open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return History(entries=[], skipped_lines=[])
        try:
            with os.fdopen(fd, "rb") as handle:
                text = handle.read().decode("utf-8", errors="replace")
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
        decided = {e.id for e in entries if e.id and e.result != PENDING}
        entries = [e for e in entries if not (e.result == PENDING and e.id in decided)]
        return History(entries=entries, skipped_lines=skipped)

    def entries(self) -> list[LedgerEntry]:
        return self.read().entries

    def settled(self, label_now: LabelNow, in_progress: InProgress) -> History:
        """The history with every dangling intent decided from the served config (see the module doc);
        an intent whose process still holds the lock stays ``pending`` (it is in progress)."""
        history = self.read()
        entries = [
            e if e.result != PENDING or in_progress(e.pid) else _settle(e, label_now(e.model, e.label))
            for e in history.entries
        ]
        return History(entries=entries, skipped_lines=history.skipped_lines)

    def complete_dangling(self, label_now: LabelNow) -> list[LedgerEntry]:
        """Append the final line of every dangling intent (call it holding the state lock: none is in
        progress then). Returns the lines written."""
        written = []
        for entry in self.read().entries:
            if entry.result == PENDING:
                final = replace(_settle(entry, label_now(entry.model, entry.label)), time=time.time())
                self.append(final)
                written.append(final)
        return written


def _settle(intent: LedgerEntry, label_now: int | None) -> LedgerEntry:
    if label_now == intent.to_version:
        return replace(
            intent,
            result="ok",
            reason=f"recovered: the {intent.kind} process (pid {intent.pid}) died after writing the switch;"
            f" models.config has {intent.label} → {intent.to_version}",
        )
    return replace(
        intent,
        result="failed",
        reason=f"interrupted: the {intent.kind} process (pid {intent.pid}) died before the switch took effect;"
        f" models.config has {intent.label} → {label_now}",
    )


def last_successful(entries: Iterable[LedgerEntry], model: str, label: str) -> LedgerEntry | None:
    """The newest ``ok`` entry that moved ``label`` of ``model`` (what a rollback undoes)."""
    found: LedgerEntry | None = None
    for entry in entries:
        if entry.model == model and entry.label == label and entry.result == "ok":
            found = entry
    return found
