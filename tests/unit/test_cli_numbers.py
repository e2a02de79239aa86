"""Every numeric flag and argument of every command: bounded on both sides, finite, one-line exit 2.

Issue 9, items 3 and 21: `promote --max-score-delta nan` switched the gate off (every comparison with
NaN is false), `smoke --timeout inf` failed every case as a model failure, `--rest --timeout inf` and
`--version 99999999999999999999` exited 1. The checks here walk the commands as registered, so a flag
added later is covered without being listed.
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from deployer.cli import main
from deployer.commands.options import BoundedInt, FiniteFloatRange


def numeric_params() -> Iterator[tuple[str, click.Parameter]]:
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param.type, click.types.FloatParamType | click.types.IntParamType):
                yield name, param


NUMERIC = list(numeric_params())


def _ids(item: tuple[str, click.Parameter]) -> str:
    return f"{item[0]}:{item[1].name}"


def test_the_commands_have_numeric_params_to_check() -> None:
    names = {_ids(item) for item in NUMERIC}
    assert {"promote:max_delta", "smoke:timeout", "smoke:version", "promote:version"} <= names


@pytest.mark.parametrize("item", NUMERIC, ids=_ids)
def test_every_numeric_param_is_bounded_on_both_sides(item: tuple[str, click.Parameter]) -> None:
    _, param = item
    if isinstance(param.type, click.types.FloatParamType):
        assert isinstance(param.type, FiniteFloatRange), f"{param.name} must use FiniteFloatRange"
    else:
        assert isinstance(param.type, BoundedInt), f"{param.name} must use BoundedInt"
    assert param.type.min is not None and param.type.max is not None


def _invoke(command: str, param: click.Parameter, value: str) -> tuple[int, str]:
    args = [command, "-f", "no-such-manifest.yaml"]
    if isinstance(param, click.Option):
        args += [param.opts[-1], value]
    positional = [p for p in main.commands[command].params if isinstance(p, click.Argument)]
    # After "--": a negative number is an argument, not an unknown option.
    args += ["--", *(value if arg is param else "1" for arg in positional)]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stderr


@pytest.mark.parametrize("item", NUMERIC, ids=_ids)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "99999999999999999999", "-99999999999999999999"])
def test_non_finite_and_huge_values_are_usage_errors(item: tuple[str, click.Parameter], value: str) -> None:
    command, param = item
    code, stderr = _invoke(command, param, value)
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("deployer: error: ")
    shown = param.opts[-1] if isinstance(param, click.Option) else param.human_readable_name
    assert shown in stderr, stderr


def test_max_score_delta_nan_names_finiteness() -> None:
    result = CliRunner().invoke(main, ["promote", "1", "-f", "m.yaml", "--max-score-delta", "nan"])
    assert result.exit_code == 2
    assert "'nan' is not a finite number" in result.stderr


def test_smoke_version_beyond_int64_is_refused_before_any_request() -> None:
    result = CliRunner().invoke(main, ["smoke", "-f", "m.yaml", "--version", "99999999999999999999"])
    assert result.exit_code == 2
    assert "--version" in result.stderr and "9223372036854775807" in result.stderr
