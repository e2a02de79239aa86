"""File-system primitives for the files deployer owns: explicit modes, no symlink following, bounded reads.

deployer often runs as root (CI, Docker hosts). A state directory another user can write to, or a
symlink planted in it, would let that user make deployer truncate or append to any file on the
machine; a FIFO in place of a state file would hang every command. So:

* every file and directory deployer creates gets an explicit mode, whatever the umask (``mkdir``
  and ``open`` only ever *remove* bits through the umask; a chmod after creation sets them exactly);
* only directories deployer itself just created are chmodded, never one that was already there;
* state files are opened with ``O_NOFOLLOW`` (a symlink is refused, not followed) and ``O_NONBLOCK``
  (a FIFO is detected by fstat instead of blocking the open), and must be regular files;
* reads are bounded.

Nothing here prints; failures are :class:`deployer.errors.UnsafeStateError` (exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from deployer.errors import UnsafeStateError

# Private to the user who runs deployer: state, logs, ledger, locks.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
# Read by a server that may run as another user (the compatible image's uid 10001): config and models.
SHARED_FILE = 0o644
SHARED_DIR = 0o755

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def make_dirs(path: Path, mode: int) -> list[Path]:
    """``mkdir -p`` with ``mode`` set exactly on each directory created here (and only on those).

    Returns the directories created, outermost first.
    """
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue  # someone else made it in the meantime: not ours to chmod
        os.chmod(directory, mode)
        created.append(directory)
    if not path.is_dir():
        raise UnsafeStateError(f"{path} is not a directory")
    return created


def check_private_dir(path: Path, what: str) -> os.stat_result:
    """``path`` is a real directory (not a symlink) owned by us and writable by nobody else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeStateError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UnsafeStateError(f"cannot inspect {what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeStateError(f"{what} {path} is a symlink; deployer does not follow symlinks in its state")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeStateError(f"{what} {path} is not a directory", hint="point state_dir at a directory")
    euid = os.geteuid()
    if info.st_uid != euid:
        raise UnsafeStateError(
            f"{what} {path} is owned by uid {info.st_uid}, not by uid {euid} who runs deployer",
            hint="use a state_dir you own; another user's directory could redirect what deployer writes",
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStateError(
            f"{what} {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o})",
            hint=f"chmod go-w {path}",
        )
    return info


def _refuse(path: Path, exc: OSError) -> UnsafeStateError:
    if exc.errno == errno.ELOOP:
        return UnsafeStateError(f"{path} is a symlink; deployer does not follow symlinks in its state directory")
    if exc.errno == errno.ENOTDIR:
        return UnsafeStateError(f"{path.parent} is not a directory")
    if exc.errno == errno.ENXIO:
        return UnsafeStateError(f"{path} is not a regular file (a FIFO or socket?)")
    return UnsafeStateError(f"cannot open {path}: {exc.strerror or exc}")


def open_nofollow(path: Path, flags: int, mode: int = PRIVATE_FILE) -> int:
    """An fd for the regular file ``path``; a symlink, FIFO, device or directory there is refused."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise UnsafeStateError(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise _refuse(path, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeStateError(f"{path} is not a regular file (a FIFO, socket or device?)")
        if flags & os.O_CREAT:
            # A file that existed before (e.g. from an older deployer under umask 000) gets the mode too.
            os.fchmod(fd, mode)
        # Back to blocking I/O: O_NONBLOCK was only there so that opening a FIFO could not hang.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: Path, limit: int) -> bytes | None:
    """The content of the regular file ``path`` (None when it does not exist), at most ``limit`` bytes."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnsafeStateError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UnsafeStateError(f"{path} is larger than {limit} bytes; it is not a file deployer wrote")
    return data


def read_text(path: Path, limit: int) -> str | None:
    data = read_bytes(path, limit)
    if data is None:
        return None
    return data.decode("utf-8", errors="replace")


class UserFileError(Exception):
    """A file the user named (manifest, input) that cannot be read; ``reason`` completes "cannot read X: "."""

    def __init__(self, reason: str, *, missing: bool = False, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing
        self.too_large = too_large


def read_user_text(path: Path, limit: int) -> str:
    """The UTF-8 text of a file the user named: a regular file (a FIFO would hang, /dev/zero never end)
    of at most ``limit`` bytes. Symlinks are followed: the user chose the path. Raises UserFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserFileError("not found", missing=True) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise UserFileError(str(getattr(exc, "strerror", None) or exc)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UserFileError("it is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError("not a regular file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:  # e.g. /proc/self/mem: a "regular" file whose read fails
        raise UserFileError(str(exc.strerror or exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserFileError("too large", too_large=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def write_atomic(path: Path, text: str, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``text``: temp file, fsync, rename (which replaces a symlink, never follows it)."""
    if not path.parent.is_dir():
        make_dirs(path.parent, PRIVATE_DIR)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_file(path: Path) -> None:
    """Unlink a state file of any kind (a symlink is removed itself; a FIFO too). A directory is refused."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise UnsafeStateError(f"{path} is a directory, not a state file; remove it by hand") from None
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EPERM) and path.is_dir():
            raise UnsafeStateError(f"{path} is a directory, not a state file; remove it by hand") from None
        raise UnsafeStateError(f"cannot remove {path}: {exc.strerror or exc}") from None


def set_tree_modes(root: Path, *, dir_mode: int = SHARED_DIR, file_mode: int = SHARED_FILE) -> None:
    """Give every directory and regular file under ``root`` (inclusive) exactly these modes.

    For trees deployer wrote itself (an export in its hidden temp directory): the server must read a
    SavedModel, and nobody may change it, because a writable SavedModel is code the server runs.
    Symlinks are left alone (chmod would follow them).
    """
    os.chmod(root, dir_mode)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, dir_mode)
        for name in filenames:
            full = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(full).st_mode):
                    os.chmod(full, file_mode)
