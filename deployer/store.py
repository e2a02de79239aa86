"""The versioned base path: ``<base_path>/<version>/`` SavedModels, as TF Serving discovers them.

Only children whose name is an int64 are versions (TF Serving ignores the rest), so an export is written
to a hidden temporary directory and renamed to its number once complete: the server, polling the
base path, never sees a half-written version (tensorflow/serving#1086).

Nothing here imports TensorFlow: SavedModel protos are read through :func:`deployer.protos.tf_proto`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer import safe_io
from deployer import version_dirs as version_dirs_rule
from deployer.errors import StoreError, UnsafeStateError, VersionNotFound
from deployer.manifest import ModelSpec
from deployer.protos import tf_proto

TEMP_PREFIX = ".tmp-"
ASSETS_EXTRA = "assets.extra"
METADATA_FILE = "deployer_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
SAVED_MODEL_TAG = "serve"
CLASSIFY_INPUT = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
# Signatures TF writes for its own bookkeeping; not part of the model's API.
INTERNAL_SIGNATURES = frozenset({"__saved_model_init_op"})


class VersionExists(StoreError):
    """publish() found the version directory already there; the caller may allocate another."""


# ---- listing ---------------------------------------------------------------------------------
def version_dirs(base_path: Path) -> dict[int, Path]:
    """version -> its directory as found (``00000123`` is version 123), ascending; no base path → {}.

    The rule is TF Serving's, shared with the model server (:mod:`deployer.version_dirs`): a child whose
    name parses as an int64 is a version, anything else (hidden/temporary entries, ``²``, numbers beyond
    int64) is ignored.
    """
    try:
        index = version_dirs_rule.scan(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise StoreError(f"cannot list {base_path}: {exc.strerror or exc}") from None
    return {version: base_path / index[version] for version in sorted(index)}


def list_versions(base_path: Path) -> list[int]:
    """Version numbers under ``base_path``, ascending (see :func:`version_dirs`)."""
    return list(version_dirs(base_path))


def latest_version(base_path: Path) -> int | None:
    versions = list_versions(base_path)
    return versions[-1] if versions else None


def version_dir(base_path: Path, version: int) -> Path:
    """The directory of an existing version, as found. Raises VersionNotFound listing the versions there are."""
    dirs = version_dirs(base_path)
    path = dirs.get(version)
    if path is None:
        available = ", ".join(str(v) for v in dirs) if dirs else "none (run `deployer train`)"
        raise VersionNotFound(f"version {version} does not exist under {base_path}", hint=f"available: {available}")
    return path


def resolve_version(base_path: Path, version: int | None) -> tuple[int, Path]:
    """``version`` or, when None, the latest one. Raises VersionNotFound."""
    if version is None:
        latest = latest_version(base_path)
        if latest is None:
            raise VersionNotFound(f"no exported versions under {base_path}", hint="run `deployer train -f <manifest>`")
        version = latest
    return version, version_dir(base_path, version)


# ---- writing ---------------------------------------------------------------------------------
def allocate_version(base_path: Path, now: float | None = None) -> int:
    """The next version: Unix time in seconds, or one more than the highest existing version if that is >= it."""
    candidate = int(time.time() if now is None else now)
    latest = latest_version(base_path)
    if latest is not None and latest >= candidate:
        return latest + 1
    return candidate


def ensure_base_path(base_path: Path) -> None:
    """Create the base path if needed and prove it is writable. Raises StoreError."""
    try:
        # Directories created here get 0755 whatever the umask (the server, maybe another user, reads
        # them); an existing base path keeps its mode: it is not ours to change.
        safe_io.make_dirs(base_path, safe_io.SHARED_DIR)
        probe = base_path / f"{TEMP_PREFIX}probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except (OSError, UnsafeStateError) as exc:
        reason = exc.message if isinstance(exc, UnsafeStateError) else exc.strerror or exc
        raise StoreError(
            f"base path {base_path} is not writable: {reason}",
            hint="fix its permissions or change models[].base_path in the manifest",
        ) from None


def make_temp_dir(base_path: Path, version: int) -> Path:
    """A hidden directory inside the base path (same filesystem, so the final rename is atomic)."""
    ensure_base_path(base_path)
    suffix = os.urandom(4).hex()
    path = base_path / f"{TEMP_PREFIX}{version}-{os.getpid()}-{suffix}"
    try:
        # Private while it is being written; publish() opens it up (read-only) once complete.
        path.mkdir(mode=safe_io.PRIVATE_DIR)
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror or exc}") from None
    return path


def remove_stale_temp_dirs(base_path: Path, *, older_than_seconds: float = 3600.0) -> list[Path]:
    """Remove temporary export directories left by killed exports; recent ones may still be in use."""
    removed: list[Path] = []
    cutoff = time.time() - older_than_seconds
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(base_path):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _fsync_path(path: Path, *, directory: bool) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up, so the rename publishes durable content."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync_path(Path(dirpath) / name, directory=False)
        _fsync_path(Path(dirpath), directory=True)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails if ``dst`` exists: plain rename silently replaces an empty directory."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is not None:
        rc = renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks RENAME_NOREPLACE
            raise OSError(err, os.strerror(err), str(dst))
    # Fallback: check-then-rename has a race window, but a non-empty dst still makes rename fail.
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def publish(tmp_dir: Path, base_path: Path, version: int) -> Path:
    """Fix the modes of ``tmp_dir``, fsync it and atomically rename it to ``<base_path>/<version>``.
    Never overwrites.

    Modes are set explicitly (0755 directories, 0644 files) whatever the umask TensorFlow wrote them
    under: the server must read them, and nobody may write them (a SavedModel is code the server runs).
    """
    final = base_path / str(version)
    if tmp_dir.parent.resolve() != base_path.resolve():
        raise StoreError(f"{tmp_dir} must be inside {base_path} for an atomic rename")
    if version in version_dirs(base_path):
        # Another spelling (``0042`` for 42) is the same version to TF Serving; never add a twin.
        raise VersionExists(f"version {version} already exists under {base_path}; refusing to overwrite")
    try:
        safe_io.set_tree_modes(tmp_dir)
        fsync_tree(tmp_dir)
        _rename_noreplace(tmp_dir, final)
        _fsync_path(base_path, directory=True)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise VersionExists(f"version {version} already exists under {base_path}; refusing to overwrite") from None
        raise StoreError(f"cannot publish version {version} under {base_path}: {exc.strerror or exc}") from None
    return final


# ---- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # e.g. "DT_STRING"
    shape: list[int] | None  # -1 for an unknown dimension; None for unknown rank
    tensor: str  # graph tensor name, e.g. "serving_default_inputs:0"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape, "tensor": self.tensor}


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    method_name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method_name": self.method_name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


def _tensor_info(name: str, info: Any, dtype_name: Any) -> TensorInfo:
    shape = None if info.tensor_shape.unknown_rank else [int(d.size) for d in info.tensor_shape.dim]
    return TensorInfo(name=name, dtype=str(dtype_name(info.dtype)), shape=shape, tensor=str(info.name))


def read_signatures(path: Path, *, tag: str = SAVED_MODEL_TAG) -> dict[str, SignatureInfo]:
    """The signatures of the ``tag`` meta graph in ``<path>/saved_model.pb``. Raises StoreError."""
    saved_model_pb2 = tf_proto("tensorflow.core.protobuf.saved_model_pb2")
    types_pb2 = tf_proto("tensorflow.core.framework.types_pb2")
    pb = path / "saved_model.pb"
    try:
        data = pb.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} is not a SavedModel: saved_model.pb is missing") from None
    except OSError as exc:
        raise StoreError(f"cannot read {pb}: {exc.strerror or exc}") from None
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError, a private subclass tree
        raise StoreError(f"{pb} is corrupt: it does not parse as a SavedModel") from None
    for meta_graph in saved_model.meta_graphs:
        if tag in meta_graph.meta_info_def.tags:
            signatures: dict[str, SignatureInfo] = {}
            for sig_name in sorted(meta_graph.signature_def):
                sig = meta_graph.signature_def[sig_name]
                signatures[sig_name] = SignatureInfo(
                    name=sig_name,
                    method_name=sig.method_name,
                    inputs=[_tensor_info(k, sig.inputs[k], types_pb2.DataType.Name) for k in sorted(sig.inputs)],
                    outputs=[_tensor_info(k, sig.outputs[k], types_pb2.DataType.Name) for k in sorted(sig.outputs)],
                )
            return signatures
    raise StoreError(f"{pb} has no meta graph tagged {tag!r}")


def validate_version(path: Path, model: ModelSpec) -> SignatureInfo:
    """Check ``path`` is a complete SavedModel whose signature meets the contract of the model's API
    (Classify, Regress or Predict; see deployer.apis), and return that signature.

    No TensorFlow import. Raises StoreError naming the first problem found.
    """
    from deployer import apis

    if not path.is_dir():
        raise StoreError(f"{path} is not a directory")
    variables = path / "variables"
    if not (variables / "variables.index").is_file():
        raise StoreError(f"{path} is incomplete: variables/variables.index is missing")
    if not any(variables.glob("variables.data-*-of-*")):
        raise StoreError(f"{path} is incomplete: no variables/variables.data-* shard")
    sig = find_signature(path, model)
    apis.resolve(model, sig).check_contract(sig, model)
    return sig


def find_signature(path: Path, model: ModelSpec) -> SignatureInfo:
    """The manifest's signature in the SavedModel at ``path``. Raises StoreError listing the others."""
    signatures = read_signatures(path)
    sig = signatures.get(model.signature_name)
    if sig is None:
        public = sorted(set(signatures) - INTERNAL_SIGNATURES)
        raise StoreError(f"{path}: no signature {model.signature_name!r} (has: {', '.join(public) or 'none'})")
    return sig


def read_metadata(path: Path) -> dict[str, Any]:
    """``<version>/assets.extra/deployer_metadata.json``, or {} when absent. Raises StoreError if corrupt."""
    file = path / ASSETS_EXTRA / METADATA_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{file}: expected a JSON object")
    return data
