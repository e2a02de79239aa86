"""Pure pieces of deployer-model-server: flags, config files, JSON→tf.Example."""

from __future__ import annotations

import pytest

from deployer.model_server.config import (
    BatchingParameters,
    aspired_versions,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
    validate_model_config_list,
)
from deployer.model_server.main import FlagError, parse_flags
from deployer.model_server.status import ServingError


def test_flag_syntaxes() -> None:
    flags = parse_flags(
        [
            "--port=9",
            "--rest_api_port",
            "10",
            "--enable_batching",
            "--allow_version_labels_for_unavailable_models=false",
        ]
    )
    assert (flags["port"], flags["rest_api_port"], flags["enable_batching"]) == (9, 10, True)
    assert flags["allow_version_labels_for_unavailable_models"] is False
    assert flags["model_name"] == "default" and flags["file_system_poll_wait_seconds"] == 1


@pytest.mark.parametrize("argv", [["--nope=1"], ["positional"], ["--port=x"], ["--port"], ["--enable_batching=2"]])
def test_bad_flags(argv: list[str]) -> None:
    with pytest.raises(FlagError):
        parse_flags(argv)


def test_config_validation() -> None:
    ok = parse_model_server_config(
        'model_config_list { config { name: "a" base_path: "/a" model_platform: "tensorflow" } }'
    )
    validate_model_config_list(ok)
    for text, message in [
        ('model_config_list { config { name: "a" base_path: "a" model_platform: "tensorflow" } }', "absolute path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" } }',
            "neither model_type(deprecated) nor model_platform",
        ),
    ]:
        with pytest.raises(ServingError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate_model_config_list(parse_model_server_config(text))
    with pytest.raises(ServingError, match="Invalid protobuf file"):
        parse_model_server_config("model_config_list { bogus: 1 }")


def test_version_policies() -> None:
    config = parse_model_server_config(
        'model_config_list { config { name: "a" base_path: "/a" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 2 } } } "
        'config { name: "b" base_path: "/b" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 versions: 7 } } } "
        'config { name: "c" base_path: "/c" model_platform: "tensorflow" model_version_policy { all {} } } '
        'config { name: "d" base_path: "/d" model_platform: "tensorflow" } }'
    )
    a, b, c, d = config.model_config_list.config
    disk = ["1", "3", "2", "latest", ".tmp-4"]
    assert aspired_versions(a, disk) == {2: "2", 3: "3"}
    assert aspired_versions(b, disk) == {1: "1"}
    assert aspired_versions(c, disk) == {1: "1", 2: "2", 3: "3"}
    assert aspired_versions(d, disk) == {3: "3"}


def test_version_policies_serve_zero_padded_dirs_as_found() -> None:
    """file_system_storage_path_source.cc: 00000123 is version 123 loaded from 00000123; of two spellings
    of one version latest/specific take the last child (bytewise), ``all`` keeps the first."""
    config = parse_model_server_config(
        'model_config_list { config { name: "l" base_path: "/l" model_platform: "tensorflow" } '
        'config { name: "s" base_path: "/s" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 123 versions: 7 } } } "
        'config { name: "a" base_path: "/a" model_platform: "tensorflow" model_version_policy { all {} } } }'
    )
    latest, specific, every = config.model_config_list.config
    disk = sorted(["00000123", "007", "7", "00000009"])
    assert aspired_versions(latest, disk) == {123: "00000123"}
    assert aspired_versions(specific, disk) == {123: "00000123", 7: "7"}
    assert aspired_versions(every, disk) == {9: "00000009", 7: "007", 123: "00000123"}


def test_batching_and_monitoring_files() -> None:
    assert parse_batching_parameters(
        "max_batch_size { value: 8 } num_batch_threads { value: 2 }"
    ) == BatchingParameters(max_batch_size=8, num_batch_threads=2)
    with pytest.raises(ServingError):
        parse_batching_parameters("max_batch_size { value: 8 } bogus { value: 1 }")
    monitoring = parse_monitoring_config('prometheus_config { enable: true, path: "/m" }')
    assert (monitoring.prometheus_enable, monitoring.prometheus_path) == (True, "/m")


def test_json_examples_map_numbers_like_tf_serving() -> None:
    from deployer.model_server.json_tensor import example_from_json

    example = example_from_json({"i": 1, "f": 1.0, "b": True, "s": "x", "raw": {"b64": "AAE="}, "fl": [1.5, 2e3]})
    feature = example.features.feature
    assert list(feature["i"].int64_list.value) == [1]
    assert list(feature["f"].float_list.value) == [1.0]
    assert list(feature["b"].int64_list.value) == [1]
    assert list(feature["s"].bytes_list.value) == [b"x"]
    assert list(feature["raw"].bytes_list.value) == [b"\x00\x01"]
    assert list(feature["fl"].float_list.value) == [1.5, 2000.0]
    with pytest.raises(ServingError):
        example_from_json({"mixed": [1, "a"]})


def test_version_policies_ignore_what_tf_serving_ignores() -> None:
    """Issue 9 item 9, server side: ``²`` and a number beyond int64 are not versions (they raised on every poll)."""
    config = parse_model_server_config(
        'model_config_list { config { name: "l" base_path: "/l" model_platform: "tensorflow" } '
        'config { name: "a" base_path: "/a" model_platform: "tensorflow" model_version_policy { all {} } } }'
    )
    latest, every = config.model_config_list.config
    disk = sorted(["0042", "²", "٣", "99999999999999999999", "latest"])
    assert aspired_versions(latest, disk) == {42: "0042"}
    assert aspired_versions(every, disk) == {42: "0042"}
