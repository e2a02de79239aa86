"""Issue 9's manifest items: finite, strict, bounded numbers; NUL bytes; nesting; host; extra_args;
smoke inputs; explicit weakenings; manifests that are not small regular files.

The structural tests walk the model classes, so a field added later is held to the same rules.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from deployer.cli import main
from deployer.errors import ManifestError
from deployer.manifest import Manifest, load_manifest
from tests.unit.conftest import iris_manifest_doc, write_manifest

# ---- structure: rules that hold for every field, present and future ------------------------------


def _models(cls: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> Iterator[type[BaseModel]]:
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    yield cls
    for field in cls.model_fields.values():
        for tp in _types(field.annotation):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from _models(tp, seen)


def _types(tp: Any) -> Iterator[Any]:
    yield tp
    for arg in get_args(tp):
        yield from _types(arg)


def _unbounded(tp: Any, metadata: list[Any], where: str) -> list[str]:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        flat = [m for item in meta for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
        return _unbounded(base, metadata + flat, where)
    if origin in (Union, types.UnionType):
        return [w for arg in get_args(tp) if arg is not type(None) for w in _unbounded(arg, metadata, where)]
    if origin in (list, tuple):
        return _unbounded(get_args(tp)[0], [], f"{where}[]")
    if origin is dict:
        return _unbounded(get_args(tp)[1], [], f"{where}{{}}")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return []  # walked on its own by _models
    if tp in (int, float):
        lower = any(isinstance(m, annotated_types.Ge | annotated_types.Gt) for m in metadata)
        upper = any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata)
        return [] if lower and upper else [where]
    return []


MODELS = list(_models(Manifest))


def test_the_walk_reaches_every_section() -> None:
    names = {m.__name__ for m in MODELS}
    assert {"Manifest", "ModelSpec", "SmokeCase", "ServerSettings", "Batching", "ContainerSettings"} <= names


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_model_is_strict_and_finite(model: type[BaseModel]) -> None:
    # Item 3: allow_inf_nan=False on the base model covers every float field, including later ones.
    assert model.model_config.get("allow_inf_nan") is False
    # Item 18: strict, so `grpc_port: true` is not the port 1.
    assert model.model_config.get("strict") is True


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_number_is_bounded_on_both_sides(model: type[BaseModel]) -> None:
    # Item 13: every numeric field has a lower and an upper bound.
    unbounded = [
        where
        for name, field in model.model_fields.items()
        for where in _unbounded(field.annotation, list(field.metadata), f"{model.__name__}.{name}")
    ]
    assert unbounded == []


# ---- values -----------------------------------------------------------------------------------


def _load_text(tmp_path: Path, text: str) -> Manifest:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return load_manifest(path)


def _with(tmp_path: Path, replacements: dict[str, Any]) -> Path:
    """The iris manifest with dotted paths set (as YAML values, so `.nan` stays YAML's NaN)."""
    doc = iris_manifest_doc()
    for dotted, value in replacements.items():
        *parents, last = dotted.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value
    return write_manifest(tmp_path, doc)


def _error(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "\n" not in info.value.message
    return info.value.message


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "field",
    [
        "server.health_deadline_seconds",
        "server.reload_deadline_seconds",
        "models.0.smoke.0.min_score",
        "models.0.smoke.0.features.SepalLength",
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path: Path, field: str, value: float) -> None:
    # Items 3 and 20 (the smoke inputs; their values are checked per API by deployer.apis).
    message = _error(_with(tmp_path, {field: value}))
    shown = field.replace(".0.", "[0].").replace("models.0", "models[0]")
    if ".features." in field:
        assert "models[0].smoke[0].features" in message and "SepalLength" in message
        assert "is not a finite number" in message
    else:
        assert f"{shown}: Input should be a finite number" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("server.file_system_poll_wait_seconds", 10_000_000_000, "less than or equal to 86400"),
        ("server.reload_deadline_seconds", 1e9, "less than or equal to 3600"),
        ("server.health_deadline_seconds", 1e12, "less than or equal to 86400"),
        ("server.batching", {"batch_timeout_micros": 2**62}, "less than or equal to 60000000"),
        ("server.batching", {"num_batch_threads": 100_000}, "less than or equal to 256"),
        ("server.container", {"pids_limit": 2**40}, "less than or equal to 4194304"),
        ("server.container", {"memory": "99999999999g"}, "must be between 6m and 16384g"),
        ("server.container", {"memory": "1k"}, "must be between 6m and 16384g"),
        ("models.0.smoke.0.features.SepalLength", 1e308, "features.SepalLength: 1e+308 is not a finite float32"),
        ("models.0.smoke.0.features.SepalLength", -1e39, "features.SepalLength: -1e+39 is not a finite float32"),
        ("server.monitoring", {"path": '/metrics"}evil{'}, "server.monitoring.path: String should match"),
    ],
)
def test_numbers_beyond_what_works_are_refused(tmp_path: Path, field: str, value: Any, expected: str) -> None:
    # Items 13 and 20: values the server or runtime could not live with fail here, not later.
    assert expected in _error(_with(tmp_path, {field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("server.grpc_port", True), ("server.rest_port", False), ("server.batching", {"max_batch_size": True}),
     ("models.0.smoke.0.features.SepalLength", True), ("server.grpc_port", 8500.0)],
)  # fmt: skip
def test_booleans_and_floats_are_not_integers(tmp_path: Path, field: str, value: Any) -> None:
    # Item 18: `grpc_port: true` was accepted as port 1.
    message = _error(_with(tmp_path, {field: value}))
    assert "Input should be a valid" in message or "True is not a number" in message


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("models.0.base_path", "models[0].base_path"),
        ("state_dir", "state_dir"),
        ("project_root", "project_root"),
        ("models.0.trainer", "models[0].trainer"),
        ("server.image", "server.image"),
        ("models.0.smoke.0.name", "models[0].smoke[0].name"),
    ],
)
def test_a_nul_byte_is_refused_naming_the_field(tmp_path: Path, field: str, shown: str) -> None:
    # Item 16: it was exit 1 (ValueError: embedded null byte) from deep inside.
    message = _error(_with(tmp_path, {field: "ab\0cd"}))
    assert f"{shown}: NUL byte in 'ab'..." in message


def test_a_nul_byte_in_extra_args_is_refused_naming_the_item(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, {"server.extra_args": ["--rest_api_timeout_in_ms=5", "--x=1\0"]}))
    assert "server.extra_args[1]: NUL byte" in message


def test_a_nul_byte_in_a_key_is_refused(tmp_path: Path) -> None:
    doc = iris_manifest_doc()
    doc["models"][0]["smoke"][0]["features"]["Sepal\0"] = 1.0
    assert "models[0].smoke[0].features: NUL byte in the key 'Sepal'" in _error(write_manifest(tmp_path, doc))


@pytest.mark.parametrize(
    "text", ["project: p\nmodels: " + "[" * 100_000, "project: p\nmodels: " + "{a: " * 100_000, "- " * 100_000 + "x"],
    ids=["flow sequences", "flow mappings", "block sequences"],
)
def test_deep_nesting_is_refused_before_parsing(tmp_path: Path, text: str) -> None:
    # Item 17 (client half): 100k `[` made PyYAML's composer raise RecursionError (exit 1). libyaml's
    # scanner may stop it first, at its own limit: either way one line, exit 2.
    with pytest.raises(ManifestError, match=r"nested deeper than 32 levels|exceeded maximum nesting depth"):
        _load_text(tmp_path, text)


def test_nesting_beyond_32_levels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="nested deeper than 32 levels at line 2"):
        _load_text(tmp_path, "project: p\nmodels: " + "[" * 40 + "]" * 40 + "\n")


def test_deep_nesting_through_the_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("a: " + "[" * 100_000, encoding="utf-8")
    result = CliRunner().invoke(main, ["status", "-f", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("deployer: error: ")
    assert "nested deeper" in result.stderr or "maximum nesting depth" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    with pytest.raises(ManifestError, match="YAML aliases expand to too much"):
        _load_text(tmp_path, "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("::1", "'::1' is not an IPv4 address"),
        ("no-such-host.invalid", "'no-such-host.invalid' is not an IPv4 address"),
        ("localhost", "'localhost' is not an IPv4 address"),
        ("", "'' is not an IPv4 address"),
        ("0.0.0.0", "add listen_beyond_loopback to server.weakenings"),
        ("192.168.1.10", "add listen_beyond_loopback to server.weakenings"),
    ],
)
def test_server_host_is_validated(tmp_path: Path, host: str, expected: str) -> None:
    # Item 18: an unresolvable host or ::1 was exit 1 later; 0.0.0.0 was silently accepted.
    message = _error(_with(tmp_path, {"server.host": host}))
    assert message.split(": ", 1)[1].startswith("server.host: ") and expected in message


def test_a_loopback_host_other_than_127_0_0_1_is_fine(tmp_path: Path) -> None:
    assert load_manifest(_with(tmp_path, {"server.host": "127.0.0.2"})).server.host == "127.0.0.2"


@pytest.mark.parametrize(
    ("args", "index", "flag"),
    [
        (["--port=1"], 0, "port"),
        (["--rest_api_timeout_in_ms=5", "--rest_api_port", "9"], 1, "rest_api_port"),
        (["-port=1"], 0, "port"),
        (["--model_config_file=/etc/evil.config"], 0, "model_config_file"),
        (["--model_base_path=/x"], 0, "model_base_path"),
        (["--monitoring_config_file=/x"], 0, "monitoring_config_file"),
        (["--enable_batching"], 0, "enable_batching"),
        (["--file_system_poll_wait_seconds=0"], 0, "file_system_poll_wait_seconds"),
    ],
)
def test_extra_args_may_not_set_runtime_owned_flags(tmp_path: Path, args: list[str], index: int, flag: str) -> None:
    # Item 19: `extra_args: ['--port=N']` overrode the flags deployer owns.
    message = _error(_with(tmp_path, {"server.extra_args": args}))
    assert f"server.extra_args[{index}]: " in message and f"sets --{flag}, which deployer owns" in message


def test_extra_args_must_be_flags(tmp_path: Path) -> None:
    assert "is not a --flag or --flag=value" in _error(_with(tmp_path, {"server.extra_args": ["rm -rf /"]}))


def test_other_extra_args_pass(tmp_path: Path) -> None:
    manifest = load_manifest(_with(tmp_path, {"server.extra_args": ["--rest_api_timeout_in_ms=5000", "--tensorflow_intra_op_parallelism=2"]}))  # noqa: E501
    assert manifest.server.extra_args == ["--rest_api_timeout_in_ms=5000", "--tensorflow_intra_op_parallelism=2"]


# ---- item 7: weakenings are explicit -----------------------------------------------------------

WEAKENING_SETTINGS = [
    ("listen_beyond_loopback", {"server.host": "0.0.0.0"}, "server.host: 0.0.0.0"),
    ("writable_root_filesystem", {"server.container": {"read_only_root": False}}, "read_only_root: false"),
    ("no_memory_limit", {"server.container": {"memory": None}}, "server.container.memory: null"),
    ("no_pids_limit", {"server.container": {"pids_limit": None}}, "server.container.pids_limit: null"),
]


@pytest.mark.parametrize(("name", "settings", "where"), WEAKENING_SETTINGS, ids=[w[0] for w in WEAKENING_SETTINGS])
def test_a_weakening_must_be_listed(tmp_path: Path, name: str, settings: dict[str, Any], where: str) -> None:
    message = _error(_with(tmp_path, settings))
    assert f"{where} weakens the default hardening" in message
    assert f"add {name} to server.weakenings" in message
    listed = load_manifest(_with(tmp_path / "ok", {**settings, "server.weakenings": [name]}))
    assert list(listed.server.weakenings_in_effect()) == [name]


def test_a_weakening_listed_but_not_made_is_refused(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, {"server.weakenings": ["no_pids_limit"]}))
    assert "server.weakenings: no_pids_limit is listed but the settings do not make it" in message


def test_unknown_weakenings_are_refused(tmp_path: Path) -> None:
    assert "server.weakenings[0]: Input should be" in _error(_with(tmp_path, {"server.weakenings": ["no_seccomp"]}))


def test_the_defaults_weaken_nothing(tmp_path: Path) -> None:
    assert load_manifest(_with(tmp_path, {})).server.weakenings_in_effect() == {}


# ---- the file itself ----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_fifo_manifest_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def load() -> None:
        try:
            load_manifest(fifo)
        except ManifestError as exc:
            outcome.append(exc.message)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome and "not a regular file" in outcome[0]


def test_dev_zero_and_huge_manifests_are_refused(tmp_path: Path) -> None:
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ManifestError, match="not a regular file"):
        load_manifest(link)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 * 1024 * 1024) + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="larger than 1024 KiB"):
        load_manifest(big)
    with pytest.raises(ManifestError, match="it is a directory"):
        load_manifest(tmp_path)


def test_yaml_round_trip_of_the_shipped_manifest_still_loads(tmp_path: Path) -> None:
    # The strict rules must not refuse what the README and manifests/ teach.
    doc = iris_manifest_doc()
    assert load_manifest(write_manifest(tmp_path, yaml.safe_load(yaml.safe_dump(doc)))).project == doc["project"]


def test_a_key_with_newlines_or_escapes_stays_on_one_quoted_line(tmp_path: Path) -> None:
    # Found by tests/robustness/test_fuzz_manifest.py: the field path printed the raw key.
    doc = iris_manifest_doc()
    doc["models"][0]["smoke"][0]["features"] = {"\n\x1b[31m": float("nan")}
    message = _error(write_manifest(tmp_path, doc))
    assert "models[0].smoke[0].features" in message and "\\n\\x1b[31m" in message
    result = CliRunner().invoke(main, ["status", "-f", str(write_manifest(tmp_path, doc))])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr


def test_an_unreadable_regular_file_is_a_manifest_error() -> None:
    # Found by tests/robustness/test_fuzz_cli.py: /proc/self/mem opens as a regular file and fails on read.
    with pytest.raises(ManifestError, match="cannot read manifest /proc/self/mem"):
        load_manifest("/proc/self/mem")


def test_num_server_processes_passes_through_extra_args(tmp_path: Path) -> None:
    """The compatible server's --num_server_processes is the user's to set: deployer needs nothing else."""
    manifest = load_manifest(_with(tmp_path, {"server.extra_args": ["--num_server_processes=2"]}))
    assert manifest.server.extra_args == ["--num_server_processes=2"]
