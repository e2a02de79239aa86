"""``deployer import``: publish a SavedModel built elsewhere as a new version, after proving TF Serving
can serve it the way the manifest says.

Validation comes first and publishes nothing when it fails: the directory is a SavedModel with the
manifest's signature, that signature meets the contract of the model's API (and the manifest's
declared inputs/outputs), no symlink leaves the directory, the session-based loader TF Serving uses
loads it, and the smoke cases' inputs run through the signature. Then the copy is published like an
export (hidden temp dir on the same file system, fsync, rename without replace), with the version's
metadata (source path, content sha256, time, deployer version) and warmup records from the smoke cases.

A version remembers the sha256 of the directory it was imported from, so ``deployer up`` imports a
``saved_model:`` source only when its content is not already one of the versions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployer import __version__, apis, store
from deployer.errors import StoreError, UsageError
from deployer.manifest import Manifest, ModelSpec

Progress = Callable[[str], None]
_CHUNK = 1 << 20


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ImportResult:
    model: str
    version: int
    path: Path
    sha256: str
    imported: bool  # False: this content already was ``version``; nothing was written
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "path": str(self.path)}


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative POSIX path, path), sorted. Symlinks to files inside
    ``root`` count as those files; a symlink leaving ``root``, a symlinked directory or a special file
    is refused (the copy must be self-contained and the hash must mean the content)."""
    real_root = root.resolve()
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if target != real_root and real_root not in target.parents:
                    raise StoreError(f"{root} contains a symlink leaving it: {relative} → {os.readlink(path)}")
                if target.is_dir():
                    raise StoreError(f"{root} contains a symlinked directory: {relative}")
            mode = path.stat().st_mode if path.exists() else 0
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise StoreError(f"{root} contains {relative}, which is not a regular file")
            files.append((relative, path))
    return sorted(files)


def tree_sha256(root: Path) -> str:
    """sha256 over (relative path, size, bytes) of every file: equal content, equal hash, wherever it lives."""
    digest = hashlib.sha256()
    for relative, path in _walk(root):
        digest.update(relative.encode("utf-8") + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def find_imported(base_path: Path, sha256: str) -> int | None:
    """The version imported from content ``sha256``, if any (newest first)."""
    for version, path in reversed(store.version_dirs(base_path).items()):
        try:
            metadata = store.read_metadata(path)
        except StoreError:
            continue
        if metadata.get("source_sha256") == sha256:
            return version
    return None


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy the files (symlinks to files inside: their content) with explicit modes: 0755 dirs, 0644 files."""
    for relative, path in _walk(source):
        target = dest / relative
        for parent in reversed(target.relative_to(dest).parents[:-1]):
            folder = dest / parent
            if not folder.exists():
                folder.mkdir()
                os.chmod(folder, 0o755)
        shutil.copyfile(path, target)
        os.chmod(target, 0o644)


def writable_model(model: ModelSpec) -> None:
    """A model whose versions come from another pipeline is never written to."""
    if model.source == "external":
        raise UsageError(
            f"model {model.name} takes its versions from another pipeline (no trainer or saved_model in the"
            " manifest): deployer never writes to its base_path",
            hint="give the model `saved_model: PATH` (or a trainer) to let deployer publish versions",
        )


def check_saved_model(path: Path, model: ModelSpec) -> apis.Api:
    """TF-free checks of a SavedModel directory: a SavedModel, no escaping symlinks, the manifest's
    signature meeting its API's contract. Returns the API. Raises StoreError."""
    if not path.exists():
        raise StoreError(f"{path} does not exist")
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory (a SavedModel is a directory with saved_model.pb)")
    _walk(path)
    if not (path / "saved_model.pb").is_file():
        what = "saved_model.pbtxt is not supported" if (path / "saved_model.pbtxt").exists() else "no saved_model.pb"
        raise StoreError(f"{path} is not a SavedModel: {what}")
    sig = store.find_signature(path, model)
    api = apis.resolve(model, sig)
    api.check_contract(sig, model)
    return api


def load_and_run(path: Path, model: ModelSpec, api: apis.Api) -> None:
    """TensorFlow: load as TF Serving does and run the smoke cases' inputs through the signature."""
    from deployer.local_run import LocalModel

    sig = store.find_signature(path, model)
    with LocalModel(path) as loaded:
        call = loaded.caller(sig)
        for batch in api.warmup_batches(model) if model.smoke else []:
            try:
                api.run_local(model, call, sig, batch)
            except StoreError as exc:
                raise StoreError(f"{path}: the smoke cases' inputs fail in the model: {exc.message}") from None


def import_saved_model(
    manifest: Manifest,
    model: ModelSpec,
    source: Path,
    *,
    version: int | None = None,
    now: float | None = None,
    progress: Progress = _quiet,
) -> ImportResult:
    """Validate ``source`` and publish it as a version of ``model`` (or find it already published)."""
    from deployer.export import publish_version, write_warmup

    started = time.perf_counter()
    writable_model(model)
    source = source.expanduser().resolve() if source.exists() else source
    if version is not None and version < 1:
        raise UsageError(f"--version must be a positive integer, got {version}")
    api = check_saved_model(source, model)
    base_path = manifest.base_path(model)
    sha256 = tree_sha256(source)
    existing = find_imported(base_path, sha256)
    if existing is not None and version in (None, existing):
        progress(f"{source} is already version {existing} of {model.name} (same content)")
        path = store.version_dir(base_path, existing)
        return ImportResult(model.name, existing, path, sha256, False, time.perf_counter() - started)
    store.ensure_base_path(base_path)
    store.remove_stale_temp_dirs(base_path)
    number = version if version is not None else store.allocate_version(base_path, now)
    if version is not None and version in store.list_versions(base_path):
        raise StoreError(
            f"version {version} already exists under {base_path}; versions are never overwritten",
            hint="choose another --version, or leave it out to take the next free one",
        )
    tmp_dir = store.make_temp_dir(base_path, number)
    os.chmod(tmp_dir, 0o755)
    try:
        progress(f"copying {source} and loading it as TF Serving does")
        _copy_tree(source, tmp_dir)
        if tree_sha256(tmp_dir) != sha256:
            raise StoreError(f"{source} changed while it was being imported; try again")
        check_saved_model(tmp_dir, model)
        load_and_run(tmp_dir, model, api)
        if model.smoke:
            write_warmup(tmp_dir, model, api)
        created = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
        metadata: dict[str, Any] = {
            "model": model.name,
            "version": number,
            "created_at": created.isoformat(timespec="seconds"),
            "source": "import",
            "source_path": str(source),
            "source_sha256": sha256,
            "api": api.name,
            "signature_name": model.signature_name,
            "deployer_version": __version__,
        }
        number, path = publish_version(tmp_dir, base_path, number, metadata, now=now, fixed=version is not None)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return ImportResult(model.name, number, path, sha256, True, time.perf_counter() - started)


def saved_model_source(manifest: Manifest, model: ModelSpec) -> Path:
    """The manifest's ``saved_model`` path, resolved against project_root."""
    if model.saved_model is None:
        raise UsageError(f"model {model.name} has no saved_model in the manifest")
    return manifest.resolve(model.saved_model)
