"""The `deployer` console script. Deliberately tiny: a Ctrl-C while the CLI's modules (click, rich,
deployer's commands) are still being imported must end in one line and exit 130, not a traceback,
and nothing heavier than this module is imported before that guard is in place."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from deployer.cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("deployer: interrupted\n")
        sys.exit(130)
    cli()
