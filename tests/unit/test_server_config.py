from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployer.errors import DeployerError
from deployer.manifest import Batching, Monitoring, ServerSettings
from deployer.server_config import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    ServedModel,
    parse_models_config,
    render_files,
    render_models_config,
    server_flags,
)


def test_render_uses_specific_policy_labels_and_tensorflow_platform() -> None:
    text = render_models_config([ServedModel("iris", "/models/iris", (2, 1), {"stable": 1, "canary": 2})])
    assert 'name: "iris"' in text
    assert 'base_path: "/models/iris"' in text
    assert 'model_platform: "tensorflow"' in text
    assert "specific {\n        versions: 1\n        versions: 2" in text
    assert 'key: "stable"\n      value: 1' in text


@given(
    versions=st.sets(st.integers(min_value=1, max_value=2**40), min_size=1, max_size=5),
    data=st.data(),
)
def test_render_then_parse_round_trips(versions: set[int], data: st.DataObject) -> None:
    ordered = tuple(sorted(versions))
    labels = data.draw(
        st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.sampled_from(ordered), max_size=3)
    )
    model = ServedModel("m", "/models/m", ordered, labels)
    assert parse_models_config(render_models_config([model])) == [model]


def test_label_on_unserved_version_is_refused_before_rendering() -> None:
    with pytest.raises(ValueError, match="unserved"):
        ServedModel("iris", "/models/iris", (1,), {"stable": 2})


def test_parse_rejects_garbage_with_a_deployer_error() -> None:
    with pytest.raises(DeployerError, match="not a valid ModelServerConfig"):
        parse_models_config("model_config_list { nonsense: 1 }")


def test_parse_rejects_a_non_specific_policy() -> None:
    text = (
        'model_config_list { config { name: "m" base_path: "/m" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 1 } } } }"
    )
    with pytest.raises(DeployerError, match="specific"):
        parse_models_config(text)


def test_optional_files_and_flags_follow_the_settings() -> None:
    model = ServedModel("iris", "/models/iris", (1,), {"stable": 1})
    plain = ServerSettings(monitoring=Monitoring(enabled=False))
    assert set(render_files(plain, [model])) == {MODELS_CONFIG}
    assert not any("monitoring" in f or "batching" in f for f in server_flags(plain, "/config"))

    full = ServerSettings(batching=Batching(enabled=True, max_batch_size=8), extra_args=["--foo=1"])
    files = render_files(full, [model])
    assert set(files) == {MODELS_CONFIG, MONITORING_CONFIG, BATCHING_CONFIG}
    assert "max_batch_size { value: 8 }" in files[BATCHING_CONFIG]
    assert 'path: "/monitoring/prometheus/metrics"' in files[MONITORING_CONFIG]
    flags = server_flags(full, "/config")
    assert "--model_config_file=/config/models.config" in flags
    assert "--enable_batching=true" in flags
    assert "--batching_parameters_file=/config/batching.config" in flags
    assert "--monitoring_config_file=/config/monitoring.config" in flags
    assert "--allow_version_labels_for_unavailable_models=true" in flags
    assert flags[-1] == "--foo=1"
