"""Versions, labels, reloads, polling and startup semantics of deployer-model-server (real subprocesses)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.grpc.conftest import (
    RunningServer,
    classify,
    config_text,
    model_entry,
    model_states,
    reload_config,
    rpc_error,
    run_to_exit,
    top_classes,
    wait_for,
)
from tests.savedmodels import IRIS_ROWS, write_model

pytestmark = pytest.mark.grpc


def _answer(server: RunningServer, **spec: object) -> tuple[str, int]:
    response = classify(server.channel, "clf", [IRIS_ROWS[0]], **spec)  # type: ignore[arg-type]
    return top_classes(response)[0], response.model_spec.version.value  # type: ignore[attr-defined]


def _available(server: RunningServer, model: str, version: int) -> Callable[[], bool]:
    return lambda: model_states(server.channel, model).get(version, ("",))[0] == "AVAILABLE"


class TestLabelsAndReloads:
    """One server walked through a promotion: ordered steps share its state."""

    @pytest.fixture(scope="class")
    def setup(
        self, model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory
    ) -> tuple[RunningServer, Path]:
        root = tmp_path_factory.mktemp("models")
        write_model(root / "clf", 1, "good")
        server = model_server(
            config_text(model_entry("clf", root / "clf", "specific { versions: 1 }")),
            "--file_system_poll_wait_seconds=1",
        )
        return server, root

    def test_1_label_on_available_version(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        reload_config(
            server.channel, config_text(model_entry("clf", root / "clf", "specific { versions: 1 }", {"stable": 1}))
        )
        assert _answer(server, label="stable") == ("0", 1)

    def test_2_label_to_unavailable_version_is_rejected(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        err = rpc_error(
            lambda: reload_config(
                server.channel, config_text(model_entry("clf", root / "clf", "specific { versions: 1 }", {"stable": 2}))
            )
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert err.details() == (  # type: ignore[attr-defined]
            "Request to assign label to version 2 of model clf, which is not currently available for inference"
        )
        assert _answer(server, label="stable") == ("0", 1)

    def test_3_two_step_label_move(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        write_model(root / "clf", 2, "wrong")
        both = "specific { versions: 1 versions: 2 }"
        # Step 1: load N+1 beside N, label unchanged; new versions of a known model load asynchronously.
        reload_config(server.channel, config_text(model_entry("clf", root / "clf", both, {"stable": 1})))
        wait_for(_available(server, "clf", 2), what="version 2 AVAILABLE")
        assert _answer(server, label="stable") == ("0", 1)
        assert _answer(server, version=2) == ("2", 2)
        assert _answer(server) == ("2", 2)  # latest
        # Step 2: move the label.
        reload_config(server.channel, config_text(model_entry("clf", root / "clf", both, {"stable": 2, "old": 1})))
        assert _answer(server, label="stable") == ("2", 2)
        assert _answer(server, label="old") == ("0", 1)

    def test_4_policy_change_unloads_versions(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        reload_config(
            server.channel, config_text(model_entry("clf", root / "clf", "specific { versions: 2 }", {"stable": 2}))
        )
        wait_for(lambda: model_states(server.channel, "clf").get(1, ("",))[0] == "END", what="version 1 END")
        assert model_states(server.channel, "clf") == {2: ("AVAILABLE", 0, ""), 1: ("END", 0, "")}
        err = rpc_error(lambda: _answer(server, version=1))
        assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert _answer(server, label="stable") == ("2", 2)

    def test_5_latest_policy_picks_up_new_version_by_polling(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        reload_config(server.channel, config_text(model_entry("clf", root / "clf", "latest { num_versions: 1 }")))
        write_model(root / "clf", 3, "good")
        (root / "clf" / "not-a-version").mkdir()
        wait_for(_available(server, "clf", 3), what="version 3 AVAILABLE")
        wait_for(lambda: model_states(server.channel, "clf")[2][0] == "END", what="version 2 END")
        assert _answer(server) == ("0", 3)

    def test_6_failed_new_version_keeps_old_one_serving(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        write_model(root / "clf", 4, "broken")
        wait_for(lambda: model_states(server.channel, "clf").get(4, ("",))[0] == "END", what="version 4 END")
        _state, code, message = model_states(server.channel, "clf")[4]
        assert code != 0 and message
        assert model_states(server.channel, "clf")[3][0] == "AVAILABLE"
        assert _answer(server) == ("0", 3)

    def test_7_reload_adding_a_model_blocks_until_available(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        write_model(root / "other", 5, "wrong")
        reload_config(
            server.channel,
            config_text(
                model_entry("clf", root / "clf", "specific { versions: 3 }"), model_entry("other", root / "other")
            ),
        )
        # No polling: the call returned only once the new name was AVAILABLE.
        assert model_states(server.channel, "other") == {5: ("AVAILABLE", 0, "")}

    def test_8_reload_removing_a_model_unloads_it(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        reload_config(server.channel, config_text(model_entry("clf", root / "clf", "specific { versions: 3 }")))
        wait_for(lambda: model_states(server.channel, "other").get(5, ("",))[0] == "END", what="other END")
        err = rpc_error(lambda: classify(server.channel, "other", [IRIS_ROWS[0]]))
        assert err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

    def test_9_invalid_configs_are_rejected_and_change_nothing(self, setup: tuple[RunningServer, Path]) -> None:
        server, root = setup
        relative = 'model_config_list { config { name: "clf" base_path: "rel/clf" model_platform: "tensorflow" } }'
        err = rpc_error(lambda: reload_config(server.channel, relative))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "absolute path" in err.details()  # type: ignore[attr-defined]
        duplicate = config_text(model_entry("clf", root / "clf"), model_entry("clf", root / "clf"))
        err = rpc_error(lambda: reload_config(server.channel, duplicate))
        assert err.details() == "Illegal to list model clf multiple times in config list"  # type: ignore[attr-defined]
        no_platform = f'model_config_list {{ config {{ name: "clf" base_path: "{root / "clf"}" }} }}'
        err = rpc_error(lambda: reload_config(server.channel, no_platform))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert _answer(server) == ("0", 3)


def test_labels_for_unavailable_models_flag_and_config_file_polling(
    model_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    root = tmp_path / "models"
    write_model(root / "clf", 1, "good")
    server = model_server(
        config_text(model_entry("clf", root / "clf", "", {"stable": 1})),
        "--allow_version_labels_for_unavailable_models",
        "--model_config_file_poll_wait_seconds=1",
        rest=False,
    )
    assert server.config_path is not None
    # The flag let a new label through at startup (before version 1 was AVAILABLE).
    assert _answer(server, label="stable") == ("0", 1)
    # Moving an existing label to a version that is not loaded is still rejected: only logged.
    server.config_path.write_text(config_text(model_entry("clf", root / "clf", "", {"stable": 9})))
    wait_for(lambda: "Request to assign label to version 9" in server.log(), what="label rejection in the log")
    assert _answer(server, label="stable") == ("0", 1)
    # A good new config file is picked up.
    write_model(root / "more", 1, "wrong")
    server.config_path.write_text(config_text(model_entry("clf", root / "clf"), model_entry("more", root / "more")))
    wait_for(_available(server, "more", 1), what="polled config adds a model")
    assert server.alive()


def test_label_in_initial_config_fails_startup(tmp_path: Path) -> None:
    write_model(tmp_path / "clf", 1, "good")
    config = tmp_path / "models.config"
    config.write_text(config_text(model_entry("clf", tmp_path / "clf", "", {"stable": 1})))
    result = run_to_exit(f"--model_config_file={config}", "--port=1")
    # main.cc: "Failed to start server. Error: <status>" on stdout, return -1.
    assert result.returncode == 255
    assert "Failed to start server. Error: FAILED_PRECONDITION: " in result.stdout
    assert "Request to assign label to version 1 of model clf" in result.stdout


def test_failed_initial_load_exits_nonzero(tmp_path: Path) -> None:
    write_model(tmp_path / "clf", 1, "broken")
    result = run_to_exit("--model_name=clf", f"--model_base_path={tmp_path / 'clf'}", "--port=1")
    assert result.returncode == 255
    assert "Failed to start server" in result.stdout
    assert "Some models did not become available" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--frobnicate=1", "--model_base_path=/x"], "unknown argument: --frobnicate=1"),
        (["--model_base_path=/x", "stray"], "unknown argument: stray"),
        (["--model_base_path=/x", "--batching_parameters_file=/b"], "without setting server_options.enable_batching"),
        (["--port=1"], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (
            ["--model_base_path=/x", "--enable_batching=maybe"],
            "Couldn't interpret value maybe for flag enable_batching",
        ),
    ],
)
def test_bad_command_lines_fail_at_startup(flags: list[str], message: str) -> None:
    result = run_to_exit(*flags, timeout=30)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_same_rest_and_grpc_port_skips_rest(model_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    write_model(tmp_path / "clf", 1, "good")
    server = model_server(None, "--model_name=clf", f"--model_base_path={tmp_path / 'clf'}", rest="same")
    assert _answer(server) == ("0", 1)
    wait_for(lambda: "--rest_api_port cannot be same as --port" in server.log(), what="REST skipped log line")
