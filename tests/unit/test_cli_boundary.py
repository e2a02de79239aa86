"""The CLI's one error boundary: one line on stderr, the failure class's exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from deployer import errors
from deployer.cli import main


@pytest.fixture
def failing_command() -> Iterator[str]:
    @click.command("boom-for-test")
    @click.argument("kind")
    def boom(kind: str) -> None:
        classes: dict[str, type[errors.DeployerError]] = {
            "usage": errors.ManifestError,
            "runtime": errors.RuntimeUnavailable,
            "health": errors.NotHealthy,
            "smoke": errors.SmokeFailed,
            "promote": errors.PromoteFailed,
        }
        if kind == "crash":
            raise RuntimeError("kaboom")
        raise classes[kind]("it broke", hint="try this", details="log line 1\nlog line 2")

    main.add_command(boom)
    yield "boom-for-test"
    main.commands.pop("boom-for-test")


@pytest.mark.parametrize(("kind", "code"), [("usage", 2), ("runtime", 3), ("health", 4), ("smoke", 5), ("promote", 6)])
def test_deployer_errors_map_to_their_exit_codes(failing_command: str, kind: str, code: int) -> None:
    result = CliRunner().invoke(main, [failing_command, kind])
    assert result.exit_code == code
    assert result.stderr.splitlines()[0] == "deployer: error: it broke"
    assert "log line 2" in result.stderr
    assert "hint: try this" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_unexpected_errors_exit_1_without_traceback(failing_command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYER_DEBUG", raising=False)
    result = CliRunner().invoke(main, [failing_command, "crash"])
    assert result.exit_code == 1
    assert "unexpected error: RuntimeError: kaboom" in result.stderr
    assert "Traceback" not in result.stderr


def test_click_usage_errors_exit_2() -> None:
    result = CliRunner().invoke(main, ["--no-such-option"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2


def test_exit_code_table_matches_the_classes() -> None:
    assert errors.EXIT_CODES == {
        "ok": 0,
        "unexpected": 1,
        "usage": 2,
        "runtime_unavailable": 3,
        "not_healthy": 4,
        "smoke_failed": 5,
        "promote_failed": 6,
    }


# Item 14 of issue 9: click's own usage errors printed three lines (Usage/Try/Error); every one is
# now the same one line as our own errors, with exit code 2.
@pytest.mark.parametrize(
    "args",
    [
        ["--no-such-option"],
        ["no-such-command"],
        ["up", "--no-such-flag"],
        ["up", "-f"],
        ["up", "-f", "m.yaml", "--runtime", "moon"],
        ["smoke", "-f", "m.yaml", "--timeout", "soon"],
        ["promote", "-f", "m.yaml"],
        ["promote", "abc", "-f", "m.yaml"],
        ["history", "-f", "m.yaml", "--limit", "0"],
        ["logs", "-f", "m.yaml", "--tail", "x"],
        ["down", "-f", "m.yaml", "extra"],
    ],
)
def test_click_usage_errors_are_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("deployer: error: ")
    assert "Usage:" not in result.stderr and "Try " not in result.stderr


def test_usage_errors_name_the_command_and_its_help() -> None:
    result = CliRunner().invoke(main, ["up", "-f", "m.yaml", "--runtime", "moon"])
    assert result.stderr.startswith("deployer: error: up: Invalid value for '--runtime'")
    assert result.stderr.rstrip().endswith("(see `deployer up --help`)")


# Item 16: a NUL byte in an argument (which no exec can pass, but a wrapper or a test harness can)
# failed deep inside with a ValueError (exit 1); it is a usage error naming the argument.
def test_a_nul_byte_in_an_argument_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["status", "-f", "manifest\0.yaml"])
    assert result.exit_code == 2
    assert result.stderr == "deployer: error: argument 3 ('manifest'...) contains a NUL byte\n"
