"""CLI-argument fuzzing: every command with hostile flag values, stray tokens and broken manifests.

Property: the CLI answers every argv with a documented exit code (0, 2-6) and, when it fails, one
`deployer: error: ...` line (plus optional context lines), never a traceback and never exit 1
("unexpected"). Commands run in-process (CliRunner) against a manifest whose server can never start:
training, Docker and process launches are replaced by failures of their documented kind, so an
example costs milliseconds and touches nothing outside its temp directory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer import orchestrate
from deployer.cli import main
from deployer.errors import RuntimeUnavailable, TrainerError
from deployer.runtime.local import LocalRuntime
from tests import manifests
from tests.robustness.fuzzing import examples

DOCUMENTED = {0, 2, 3, 4, 5, 6}

NASTY_STRINGS = [
    "", " ", "-", "--", "nan", "inf", "-inf", "1e309", "-1", "0", "1", "99999999999999999999", "0x10", "1_000",
    "\0", "a\0b", "../..", "/", "/dev/null", "/dev/zero", "/dev/full", "/proc/self/mem", "%s%n", "${HOME}",
    "$(id)", "`id`", "'; rm -rf / #", "\n", "\r\n", "\t", "ℌ𝔢𝔩𝔩𝔬", "\udcff", "x" * 10_000, "stable", "canary",
    "iris", "--json", "-f", "--help", "-h",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30),
)


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Path]]:
    """A manifest with one (empty, hence unusable) version on disk; no server can start."""
    with tempfile.TemporaryDirectory(prefix="fuzz-cli-") as name, pytest.MonkeyPatch.context() as patch:
        root = Path(name)
        manifest = manifests.write_manifest(root, "fuzz", server={"runtime": "local", "grpc_port": 0, "rest_port": 0})
        (root / "exports" / "iris" / "1").mkdir(parents=True)
        broken = root / "broken.yaml"
        broken.write_text("project: [unclosed\n")

        def no_docker(progress: Any = None) -> Any:
            raise RuntimeUnavailable("no Docker while fuzzing")

        def no_training(*args: Any, **kwargs: Any) -> Any:
            raise TrainerError("no training while fuzzing")

        def no_server(self: LocalRuntime, spec: Any) -> Any:
            raise RuntimeUnavailable("no server while fuzzing")

        patch.setattr(orchestrate, "_docker", no_docker)
        patch.setattr("deployer.export.train_and_export", no_training)
        patch.setattr(LocalRuntime, "start", no_server)
        yield {"manifest": manifest, "broken": broken, "root": root}


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


@st.composite
def argvs(draw: st.DrawFn, paths: dict[str, Path]) -> list[str]:
    name = draw(st.sampled_from(sorted(main.commands)))
    command = main.commands[name]
    argv = [name]
    manifest = draw(st.sampled_from(["good", "good", "good", "broken", "missing", "value"]))
    if manifest != "value" or draw(st.booleans()):
        target = {"good": paths["manifest"], "broken": paths["broken"], "missing": paths["root"] / "nope.yaml"}
        argv += ["-f", str(target.get(manifest, draw(VALUES)))]
    for option in draw(st.lists(st.sampled_from(_options(command)), max_size=4)):
        argv.append(draw(st.sampled_from(option.opts)))
        if not option.is_flag:
            argv.append(draw(VALUES))
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    argv += [draw(VALUES) for _ in arguments]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(VALUES))  # a stray token anywhere
    return argv


def _invoke(argv: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.stdout, result.stderr


def _check(argv: list[str], code: int, stdout: str, stderr: str) -> None:
    shown = f"argv={argv!r}\nexit={code}\nstderr={stderr[:2000]}"
    assert code in DOCUMENTED, shown
    assert "Traceback" not in stderr + stdout, shown
    assert "unexpected error" not in stderr, shown
    if code != 0:
        # Progress lines may come first; then exactly one error line. `deployer` alone prints its help.
        errors = [line for line in stderr.splitlines() if line.startswith("deployer: error: ")]
        assert len(errors) == 1 or stderr.startswith("Usage:"), shown


@settings(max_examples=examples(600))
@given(data=st.data())
def test_any_argv_gets_a_documented_exit_code_and_one_error_line(world: dict[str, Path], data: st.DataObject) -> None:
    argv = data.draw(argvs(world))
    _check(argv, *_invoke(argv))


@settings(max_examples=examples(150))
@given(argv=st.lists(VALUES, max_size=6))
def test_random_tokens_get_a_documented_exit_code(argv: list[str]) -> None:
    _check(argv, *_invoke(argv))
