"""The versioned base path: allocation, listing, atomic publish, SavedModel validation (no TensorFlow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deployer import store
from deployer.errors import StoreError, VersionNotFound
from deployer.manifest import load_manifest
from deployer.protos import tf_proto
from tests.unit.conftest import IRIS_MANIFEST, REPO_ROOT

IRIS = load_manifest(IRIS_MANIFEST).model()


# ---- listing and allocation ------------------------------------------------------------------
def test_list_versions_ignores_what_tf_serving_ignores(tmp_path: Path) -> None:
    for name in ["10", "2", "1700000000", ".tmp-3-1-abcd", "latest", "0x5", "٣", "²", "9" * 20, "1_0"]:
        (tmp_path / name).mkdir()
    assert store.list_versions(tmp_path) == [2, 10, 1700000000]
    assert store.latest_version(tmp_path) == 1700000000


def test_a_file_named_as_a_number_is_a_version_as_for_tf_serving(tmp_path: Path) -> None:
    # FileSystemStoragePathSource looks at names only; TF Serving then fails to load it, and so does validation.
    (tmp_path / "7").write_text("a file")
    assert store.list_versions(tmp_path) == [7]
    with pytest.raises(StoreError, match="is not a directory"):
        store.validate_version(store.version_dir(tmp_path, 7), IRIS)


def test_zero_padded_versions_resolve_to_the_directory_as_found(tmp_path: Path) -> None:
    (tmp_path / "0042").mkdir()
    (tmp_path / "00000123").mkdir()
    assert store.list_versions(tmp_path) == [42, 123]
    assert store.version_dirs(tmp_path) == {42: tmp_path / "0042", 123: tmp_path / "00000123"}
    assert store.version_dir(tmp_path, 42) == tmp_path / "0042"
    assert store.resolve_version(tmp_path, None) == (123, tmp_path / "00000123")
    assert store.allocate_version(tmp_path, now=100) == 124


def test_publish_refuses_another_spelling_of_an_existing_version(tmp_path: Path) -> None:
    (tmp_path / "0042").mkdir()
    tmp_dir = store.make_temp_dir(tmp_path, 42)
    with pytest.raises(store.VersionExists):
        store.publish(tmp_dir, tmp_path, 42)
    assert not (tmp_path / "42").exists()


def test_missing_base_path_has_no_versions(tmp_path: Path) -> None:
    assert store.list_versions(tmp_path / "nope") == []
    assert store.latest_version(tmp_path / "nope") is None


def test_allocate_uses_unix_seconds(tmp_path: Path) -> None:
    assert store.allocate_version(tmp_path, now=1_700_000_000.9) == 1_700_000_000
    before = int(time.time())
    assert before <= store.allocate_version(tmp_path) <= int(time.time())


@pytest.mark.parametrize("existing", [1_700_000_000, 1_800_000_000])
def test_allocate_goes_past_existing_versions(tmp_path: Path, existing: int) -> None:
    (tmp_path / str(existing)).mkdir()
    assert store.allocate_version(tmp_path, now=1_700_000_000) == existing + 1


def test_version_dir_and_not_found_hint(tmp_path: Path) -> None:
    (tmp_path / "5").mkdir()
    (tmp_path / "9").mkdir()
    assert store.version_dir(tmp_path, 9) == tmp_path / "9"
    with pytest.raises(VersionNotFound) as info:
        store.version_dir(tmp_path, 7)
    assert "version 7 does not exist" in info.value.message
    assert info.value.hint == "available: 5, 9"


def test_resolve_version_defaults_to_latest(tmp_path: Path) -> None:
    with pytest.raises(VersionNotFound, match="no exported versions"):
        store.resolve_version(tmp_path, None)
    (tmp_path / "3").mkdir()
    (tmp_path / "12").mkdir()
    assert store.resolve_version(tmp_path, None) == (12, tmp_path / "12")
    assert store.resolve_version(tmp_path, 3) == (3, tmp_path / "3")


# ---- publishing ------------------------------------------------------------------------------
def test_publish_renames_temp_dir(tmp_path: Path) -> None:
    tmp_dir = store.make_temp_dir(tmp_path, 4)
    assert tmp_dir.name.startswith(".tmp-4-")
    (tmp_dir / "sub").mkdir()
    (tmp_dir / "sub" / "file").write_text("x")
    final = store.publish(tmp_dir, tmp_path, 4)
    assert final == tmp_path / "4"
    assert (final / "sub" / "file").read_text() == "x"
    assert not tmp_dir.exists()
    assert store.list_versions(tmp_path) == [4]


@pytest.mark.parametrize("existing_is_empty", [True, False])
def test_publish_never_overwrites(tmp_path: Path, existing_is_empty: bool) -> None:
    existing = tmp_path / "4"
    existing.mkdir()
    if not existing_is_empty:
        (existing / "keep").write_text("old")
    tmp_dir = store.make_temp_dir(tmp_path, 4)
    (tmp_dir / "new").write_text("new")
    with pytest.raises(store.VersionExists, match="already exists"):
        store.publish(tmp_dir, tmp_path, 4)
    assert sorted(p.name for p in existing.iterdir()) == ([] if existing_is_empty else ["keep"])
    assert (tmp_dir / "new").exists()


def test_publish_rejects_temp_dir_elsewhere(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(StoreError, match="atomic rename"):
        store.publish(other, tmp_path / "base", 1)


def test_unwritable_base_path(tmp_path: Path) -> None:
    # Root ignores permission bits, so make the path impossible instead: a file sits where a directory must.
    (tmp_path / "blocker").write_text("")
    with pytest.raises(StoreError, match="not writable"):
        store.ensure_base_path(tmp_path / "blocker" / "iris")


def test_stale_temp_dirs_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    stale = store.make_temp_dir(tmp_path, 1)
    fresh = store.make_temp_dir(tmp_path, 2)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert store.remove_stale_temp_dirs(tmp_path, older_than_seconds=3600) == [stale]
    assert not stale.exists()
    assert fresh.exists()


SLOW_EXPORTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from deployer import store

    base = Path(sys.argv[1])
    for attempt in range(3):
        version = store.allocate_version(base)
        tmp = store.make_temp_dir(base, version)
        for i in range(20):
            (tmp / f"part-{i}").write_bytes(b"x" * 4096)
            if attempt == 2 and i == 10:
                # The third export stalls half-written until it is killed.
                print(f"writing {version}", flush=True)
                time.sleep(600)
        (tmp / "COMPLETE").write_text("ok")
        store.publish(tmp, base, version)
        print(f"published {version}", flush=True)
    """
)


def test_killed_export_never_leaves_a_numeric_directory(tmp_path: Path) -> None:
    """SIGKILL an exporter mid-write through the real temp-dir/publish path: only complete versions appear."""
    base = tmp_path / "base"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORTER, str(base)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    published: list[int] = []
    in_flight = None
    try:
        for line in proc.stdout:
            verb, number = line.split()
            if verb == "published":
                published.append(int(number))
            else:
                in_flight = int(number)
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert in_flight is not None and len(published) == 2
    versions = store.list_versions(base)
    assert in_flight not in versions
    assert versions == published
    for version in versions:
        assert (base / str(version) / "COMPLETE").exists()
    leftovers = [p for p in base.iterdir() if p.name.startswith(store.TEMP_PREFIX)]
    assert len(leftovers) == 1 and not (leftovers[0] / "COMPLETE").exists()


# ---- validation ------------------------------------------------------------------------------
def _fake_saved_model(
    path: Path,
    *,
    inputs: dict[str, tuple[str, list[int] | None]] | None = None,
    outputs: dict[str, tuple[str, list[int] | None]] | None = None,
    signature: str = "serving_default",
    tags: tuple[str, ...] = ("serve",),
    variables: tuple[str, ...] = ("variables.index", "variables.data-00000-of-00001"),
) -> Path:
    """A SavedModel on disk with just the protos validate_version reads; no TensorFlow needed."""
    saved_model_pb2 = tf_proto("tensorflow.core.protobuf.saved_model_pb2")
    types_pb2 = tf_proto("tensorflow.core.framework.types_pb2")
    inputs = {"inputs": ("DT_STRING", [-1])} if inputs is None else inputs
    outputs = {"classes": ("DT_STRING", [-1, 3]), "scores": ("DT_FLOAT", [-1, 3])} if outputs is None else outputs
    saved_model = saved_model_pb2.SavedModel()
    meta_graph = saved_model.meta_graphs.add()
    meta_graph.meta_info_def.tags.extend(tags)
    sig = meta_graph.signature_def[signature]
    sig.method_name = "tensorflow/serving/predict"
    for target, specs in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for name, (dtype, shape) in specs.items():
            info = target[name]
            info.name = f"{name}:0"
            info.dtype = types_pb2.DataType.Value(dtype)
            if shape is None:
                info.tensor_shape.unknown_rank = True
            for size in shape or []:
                info.tensor_shape.dim.add().size = size
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    (path / "variables").mkdir()
    for name in variables:
        (path / "variables" / name).write_bytes(b"\0")
    return path


def test_validate_accepts_classify_contract(tmp_path: Path) -> None:
    store.validate_version(_fake_saved_model(tmp_path / "1"), IRIS)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"variables": ("variables.data-00000-of-00001",)}, "variables/variables.index is missing"),
        ({"variables": ("variables.index",)}, "no variables/variables.data-* shard"),
        ({"signature": "other"}, "no signature 'serving_default' (has: other)"),
        ({"tags": ("train",)}, "no meta graph tagged 'serve'"),
        ({"inputs": {"examples": ("DT_STRING", [-1])}}, "exactly one input 'inputs'"),
        ({"inputs": {"inputs": ("DT_STRING", [-1]), "x": ("DT_FLOAT", [-1])}}, "exactly one input 'inputs'"),
        ({"inputs": {"inputs": ("DT_FLOAT", [-1])}}, "must be rank-1 DT_STRING"),
        ({"inputs": {"inputs": ("DT_STRING", [-1, 4])}}, "must be rank-1 DT_STRING"),
        ({"outputs": {"probabilities": ("DT_FLOAT", [-1, 3])}}, "expected outputs 'classes' and/or 'scores'"),
        (
            {"outputs": {"classes": ("DT_STRING", [-1, 3]), "scores": ("DT_FLOAT", [-1, 3]), "x": ("DT_FLOAT", [-1])}},
            "expected outputs 'classes' and/or 'scores'",
        ),
        ({"outputs": {"classes": ("DT_STRING", [-1, 3]), "scores": ("DT_DOUBLE", [-1, 3])}}, "must be DT_FLOAT"),
        ({"outputs": {"classes": ("DT_INT64", [-1, 3]), "scores": ("DT_FLOAT", [-1, 3])}}, "must be DT_STRING"),
        ({"outputs": {"classes": ("DT_STRING", [-1]), "scores": ("DT_FLOAT", [-1, 3])}}, "must have shape [-1, 3]"),
        ({"outputs": {"classes": ("DT_STRING", None), "scores": ("DT_FLOAT", [-1, 3])}}, "must have shape [-1, 3]"),
        ({"outputs": {"classes": ("DT_STRING", [-1, 3]), "scores": ("DT_FLOAT", [8, 3])}}, "must have shape [-1, 3]"),
        (
            {"outputs": {"classes": ("DT_STRING", [-1, 2]), "scores": ("DT_FLOAT", [-1, 2])}},
            "has 2 columns, the manifest lists 3 classes",
        ),
    ],
)
def test_validate_rejects(tmp_path: Path, kwargs: dict[str, object], expected: str) -> None:
    path = _fake_saved_model(tmp_path / "1", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StoreError) as info:
        store.validate_version(path, IRIS)
    assert expected in info.value.message


def test_validate_rejects_missing_and_corrupt_saved_model_pb(tmp_path: Path) -> None:
    path = _fake_saved_model(tmp_path / "1")
    (path / "saved_model.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(StoreError, match="corrupt"):
        store.validate_version(path, IRIS)
    (path / "saved_model.pb").unlink()
    with pytest.raises(StoreError, match=r"saved_model\.pb is missing"):
        store.validate_version(path, IRIS)
    with pytest.raises(StoreError, match="not a directory"):
        store.validate_version(tmp_path / "2", IRIS)


def test_validate_does_not_import_tensorflow(tmp_path: Path) -> None:
    path = _fake_saved_model(tmp_path / "1")
    code = (
        "import sys; from pathlib import Path; from deployer import store; from deployer.manifest import load_manifest;"
        f"store.validate_version(Path({str(path)!r}), load_manifest({str(IRIS_MANIFEST)!r}).model());"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_read_metadata(tmp_path: Path) -> None:
    assert store.read_metadata(tmp_path) == {}
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "deployer_metadata.json").write_text(json.dumps({"version": 3}))
    assert store.read_metadata(tmp_path) == {"version": 3}
    (tmp_path / "assets.extra" / "deployer_metadata.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot read"):
        store.read_metadata(tmp_path)
