"""Manifest fuzzing: hostile values anywhere in a valid manifest, and hostile YAML text.

Property: load_manifest returns a valid Manifest or raises ManifestError with one line, nothing else
(no ValueError, RecursionError, OverflowError...). A manifest that loads keeps the rules of issue 9:
every float finite, no NUL byte anywhere, the host an IPv4 address, no runtime-owned flag in
extra_args, every weakening listed; and it renders to server files without an error.

In-process and cheap (one small file rewritten per example), so hundreds of examples cost seconds.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.errors import ManifestError
from deployer.manifest import RUNTIME_OWNED_FLAGS, Manifest, load_manifest
from deployer.server_config import ServedModel, render_files, server_flags
from tests.robustness.fuzzing import examples
from tests.unit.conftest import iris_manifest_doc

BASE = iris_manifest_doc()
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

SPECIAL: list[Any] = [
    float("nan"), float("inf"), float("-inf"), 1e308, -1e39, 3.5e38, 0, -1, 2**63, 2**64, 10**400, True, False,
    None, "", "\0", "a\0b", "0.0.0.0", "::1", "--port=1", "../../etc", "/", "x" * 5000, "ℌ𝔢𝔩𝔩𝔬", "1e10",
    ".nan", "8500", [], {}, [[]], {"a": None},
]  # fmt: skip
HOSTILE_SCALARS = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.booleans(),
)
VALUES = st.recursive(HOSTILE_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into the document, including where a new key could go."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


PATHS = [p for p in _paths(BASE) if p] + [
    ("server", "host"), ("server", "weakenings"), ("server", "extra_args"), ("server", "container", "memory"),
    ("server", "container", "pids_limit"), ("server", "container", "read_only_root"), ("server", "batching"),
    ("server", "file_system_poll_wait_seconds"), ("server", "reload_deadline_seconds"), ("server", "grpc_port"),
    ("server", "monitoring", "path"), ("state_dir",), ("project_root",), ("models", 0, "version_policy"),
]  # fmt: skip


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set ``path`` if it still leads somewhere (an earlier mutation may have replaced a parent)."""
    node: Any = doc
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
        node[last] = value


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-manifest-") as name:
        yield Path(name)


def _check_loaded(manifest: Manifest) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, str):
            assert "\0" not in value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(manifest.model_dump(mode="python"))
    server = manifest.server
    assert set(server.weakenings_in_effect()) == set(server.weakenings)
    for arg in server.extra_args:
        assert arg.lstrip("-").split("=", 1)[0] not in RUNTIME_OWNED_FLAGS
    served = [ServedModel(m.name, f"/models/{m.name}", (1,), {label: 1 for label in m.labels}) for m in manifest.models]
    render_files(server, served)
    flags = server_flags(server, "/config")
    assert sum(flag.startswith("--model_config_file=") for flag in flags) == 1
    assert '"' not in server.monitoring.path  # it is rendered between quotes


def _load(workdir: Path, text: str) -> Manifest | None:
    path = workdir / "manifest.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        assert exc.message and "\n" not in exc.message
        assert "Traceback" not in exc.message
        return None
    return manifest


@settings(max_examples=examples(500))
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=4))
def test_hostile_values_anywhere_load_cleanly_or_fail_with_one_line(
    workdir: Path, mutations: list[tuple[tuple[Any, ...], Any]]
) -> None:
    doc = copy.deepcopy(BASE)
    for path, value in mutations:
        _set(doc, path, value)
    try:
        text = yaml.dump(doc, Dumper=DUMPER, allow_unicode=True)
    except yaml.YAMLError:
        return
    manifest = _load(workdir, text)
    if manifest is not None:
        _check_loaded(manifest)


YAML_FRAGMENTS = st.sampled_from(
    ["[", "]", "{", "}", "- ", ": ", "&a ", "*a ", "!!python/object:os.system ", "!!binary ", "\t", "\n", "\"\\0\"",
     "'", "#", "? ", "|\n", ">\n", "%YAML 1.1\n", "---\n", "...\n", ".nan", ".inf", "1e999", "~", "0x10", "0o7"]
)  # fmt: skip


@settings(max_examples=examples(300))
@given(
    prefix=st.integers(min_value=0, max_value=400),
    noise=st.lists(YAML_FRAGMENTS | st.text(max_size=5), max_size=30),
    repeat=st.integers(min_value=1, max_value=3000),
)
def test_hostile_yaml_text_fails_with_one_line(workdir: Path, prefix: int, noise: list[str], repeat: int) -> None:
    base = yaml.dump(BASE, Dumper=DUMPER)
    text = base[:prefix] + "".join(noise) * (repeat if len("".join(noise)) < 3 else 1) + base[prefix:]
    manifest = _load(workdir, text)
    if manifest is not None:
        _check_loaded(manifest)
