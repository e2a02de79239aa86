"""The deployer command line: a thin layer over the library with exactly one error boundary."""

from __future__ import annotations

import sys
from typing import Any

import click

from deployer import __version__
from deployer.errors import DeployerError, UsageError


class _Interrupted(Exception):
    """Ctrl-C, carried past click (whose own handler prints a stray blank line and "Aborted!")."""


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class _Group(click.Group):
    """Routes every failure through one boundary: a one-line message and the failure class's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            _refuse_nul_arguments(args[0] if args else kwargs.get("args"))
            result = super().main(*args, **kwargs)
        except (_Interrupted, KeyboardInterrupt):
            click.echo("deployer: interrupted", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except DeployerError as exc:
            _report(exc)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("deployer: aborted", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except click.exceptions.NoArgsIsHelpError as exc:
            # `deployer` alone: the help is the useful answer, not an error line.
            exc.show()
            sys.exit(UsageError.exit_code)
        except click.ClickException as exc:
            # Usage errors from click itself (unknown option, missing argument, bad value) share exit code 2
            # and our one-line format; click's own three lines (Usage/Try/Error) are not what we promise.
            click.echo(f"deployer: error: {_one_line(_click_message(exc))}", err=True)
            sys.exit(UsageError.exit_code)
        except Exception as exc:  # the one boundary for the unexpected: no traceback unless asked for
            click.echo(f"deployer: unexpected error: {type(exc).__name__}: {_one_line(str(exc))}", err=True)
            click.echo("  (set DEPLOYER_DEBUG=1 for a traceback)", err=True)
            import os

            if os.environ.get("DEPLOYER_DEBUG"):
                raise
            sys.exit(DeployerError.exit_code)
        if isinstance(result, int):
            sys.exit(result)
        sys.exit(0)


def _refuse_nul_arguments(args: Any) -> None:
    """A NUL byte cannot reach the OS in a path; name the argument instead of failing deep inside."""
    for index, arg in enumerate(args if isinstance(args, list | tuple) else sys.argv[1:], start=1):
        if isinstance(arg, str) and "\0" in arg:
            raise UsageError(f"argument {index} ({arg.split(chr(0))[0]!r}...) contains a NUL byte")


def _click_message(exc: click.ClickException) -> str:
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    # The command path as the user typed it ("deployer up"), whatever name the script was run under.
    command = " ".join(["deployer", *ctx.command_path.split()[1:]])
    sub = command.removeprefix("deployer").strip()
    return f"{sub + ': ' if sub else ''}{message} (see `{command} --help`)"


def _one_line(text: str) -> str:
    """The error line stays one line, and a value from a manifest cannot drive the terminal (escapes)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _report(exc: DeployerError) -> None:
    click.echo(f"deployer: error: {_one_line(exc.message)}", err=True)
    if exc.details:
        click.echo(exc.details.rstrip("\n"), err=True)
    if exc.hint:
        click.echo(f"  hint: {exc.hint}", err=True)


_EPILOG = """\b
Examples:
  deployer up -f manifests/iris.yaml        # train if needed, serve, wait healthy, smoke
  deployer smoke --junit build/smoke.xml    # -f may be left out: $DEPLOYER_MANIFEST,
  deployer promote 1764300000               #   ./deployer.yaml or the only manifests/*.yaml
  deployer logs --follow                    # -f is always the manifest; --follow follows
  deployer down

\b
Exit codes: 0 ok, 1 unexpected, 2 usage/manifest, 3 runtime unavailable, 4 not healthy,
5 smoke failed, 6 promote failed, 130 interrupted.
Shell completion (bash; zsh: zsh_source, fish: fish_source):
  eval "$(_DEPLOYER_COMPLETE=bash_source deployer)"
"""


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EPILOG)
@click.version_option(__version__, prog_name="deployer")
def main() -> None:
    """Train, export, serve, smoke-test and promote TensorFlow models on TensorFlow Serving."""


def _register() -> None:
    import importlib

    for module in ("offline", "serve", "promotion", "render"):
        try:
            mod = importlib.import_module(f"deployer.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"deployer.commands.{module}":
                raise
            continue
        for command in mod.COMMANDS:
            main.add_command(command)


_register()
