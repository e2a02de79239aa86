"""Which version a command means when none is given: what is served, not merely the newest directory.

After a refused promotion the newest directory is the refused candidate; after a broken export it is
an incomplete one. So the default is the version the model's first label points at in the deployed
config (the state directory's models.config), and without a deployment the newest *complete*
version. The per-directory check ("ok", "incomplete: …", "corrupt: …") is shared with `versions`.

TensorFlow-free and server-free: this reads files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deployer import store
from deployer.errors import StoreError, UnsafeStateError, VersionNotFound
from deployer.manifest import Manifest, ModelSpec
from deployer.server_config import ServedModel, parse_models_config
from deployer.state import StateDir


def deployed(manifest: Manifest, model: ModelSpec) -> ServedModel | None:
    """The model's entry in the deployed config, or None when nothing was deployed."""
    try:
        text = StateDir(manifest.state_path, manifest.project).read_models_config()
        entries = parse_models_config(text) if text else []
    except (OSError, StoreError, UnsafeStateError, ValueError):
        return None
    return next((entry for entry in entries if entry.name == model.name), None)


def problem(path: Path, model: ModelSpec) -> str | None:
    """None for a usable version, else "incomplete: …", "corrupt: …" or "unusable: …" (one line)."""
    try:
        store.validate_version(path, model)
    except StoreError as exc:
        message = exc.message
        for prefix in (f"{path}/", f"{path}: ", f"{path} "):
            message = message.replace(prefix, "")
        for noise in ("is incomplete: ", "is not a SavedModel: "):
            message = message.removeprefix(noise)
        if "missing" in message or "no variables" in message or "not a directory" in message:
            return f"incomplete: {message}"
        if "corrupt" in message or "does not parse" in message:
            return f"corrupt: {message}"
        return f"unusable: {message}"
    return None


@dataclass(frozen=True)
class Choice:
    version: int
    path: Path
    why: str  # for people: "the version label stable points at in the deployed config"


def default_version(manifest: Manifest, model: ModelSpec) -> Choice:
    """The version to use when the user gave none. Raises VersionNotFound when there is none usable."""
    base = manifest.base_path(model)
    dirs = store.version_dirs(base)  # as found: 0042 is version 42 in 0042/
    on_disk = list(dirs)
    entry = deployed(manifest, model)
    label = model.primary_label
    if entry is not None and entry.labels.get(label) in on_disk:
        version = entry.labels[label]
        return Choice(version, dirs[version], f"the version label {label} points at in the deployed config")
    skipped: list[str] = []
    for version in reversed(on_disk):
        trouble = problem(dirs[version], model)
        if trouble is None:
            why = "the newest complete version (nothing deployed yet)"
            if skipped:
                why += "; skipped " + ", ".join(skipped)
            return Choice(version, dirs[version], why)
        skipped.append(f"{version} ({trouble})")
    if not on_disk:
        raise VersionNotFound(f"no exported versions under {base}", hint="run `deployer train -f <manifest>`")
    raise VersionNotFound(
        f"no usable version under {base}: " + "; ".join(skipped), hint="re-export with `deployer train`"
    )
