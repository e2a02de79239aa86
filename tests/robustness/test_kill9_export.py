"""kill -9 at each phase of an export, and the permissions of an export made under umask 000.

Each case runs a real export (a tiny Keras model through deployer.export.export_model) in a child
process that SIGKILLs itself right after one phase. Afterwards the base path must list only complete,
valid versions (a killed export leaves at most a hidden temp directory, never a numeric one), and the
next export must still work. The control case exports under umask 000 and checks the modes: a
SavedModel is code the server runs, so nobody but its owner may write it (issue 9, item 6).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import store
from deployer.manifest import load_manifest
from tests import manifests
from tests.conftest import skip_or_fail

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, signal, sys
point, manifest_path = sys.argv[1], sys.argv[2]
os.umask(0)  # the worst case: everything must still get explicit modes

from deployer import export, safe_io, store
from deployer.manifest import load_manifest

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name, label):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if point == label:
            die()
        return result
    setattr(module, name, wrapper)

after(store, "make_temp_dir", "temp dir made")
after(export, "write_saved_model", "SavedModel written")
after(export, "write_warmup", "warmup written")
after(export, "write_metadata", "metadata written")
after(safe_io, "set_tree_modes", "modes set")
after(store, "fsync_tree", "fsynced")
after(store, "_rename_noreplace", "renamed")

import keras
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
manifest = load_manifest(manifest_path)
result = export.export_model(model, manifest, manifest.model(), metrics={"accuracy": 1.0}, data_hash="fuzz")
print("exported", result.version, flush=True)
"""

POINTS = ["temp dir made", "SavedModel written", "warmup written", "metadata written", "modes set", "fsynced",
          "renamed"]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill9-export")
    return manifests.write_manifest(root, "kill9", server={"runtime": "local", "grpc_port": 0, "rest_port": 0})


def _export(manifest: Path, point: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, point, str(manifest)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False,
    )  # fmt: skip


def _check_base(manifest: Path) -> list[int]:
    loaded = load_manifest(manifest)
    spec = loaded.model()
    base = loaded.base_path(spec)
    versions = store.list_versions(base)
    for version in versions:
        store.validate_version(base / str(version), spec)  # complete, or it would not be numeric
    leftovers = [e for e in os.listdir(base) if not e.isdecimal()] if base.exists() else []
    assert all(e.startswith(store.TEMP_PREFIX) for e in leftovers), leftovers
    return versions


@pytest.mark.parametrize("point", POINTS)
def test_an_export_killed_at_any_phase_never_publishes_a_partial_version(manifest: Path, point: str) -> None:
    before = _check_base(manifest)
    result = _export(manifest, point)
    if result.returncode not in (-signal.SIGKILL, 0):
        skip_or_fail(f"the export child failed before its kill point: {result.stderr[-2000:]}")
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr[-2000:]
    after = _check_base(manifest)
    # Only the rename publishes: a kill after it leaves exactly one new, complete version.
    assert len(after) == len(before) + (1 if point == "renamed" else 0)


def test_after_the_kills_an_export_under_umask_000_works_and_is_read_only(manifest: Path) -> None:
    before = _check_base(manifest)
    result = _export(manifest, "never")
    assert result.returncode == 0, result.stderr[-2000:]
    after = _check_base(manifest)
    assert len(after) == len(before) + 1
    loaded = load_manifest(manifest)
    version_dir = loaded.base_path(loaded.model()) / str(after[-1])
    for path in [version_dir, *version_dir.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        assert mode & (stat.S_IWGRP | stat.S_IWOTH) == 0, f"{path} is writable by others ({mode:04o})"
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {mode:04o}"
