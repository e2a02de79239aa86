"""Output for the CLI: JSON on stdout for --json, rich tables for people, messages on stderr.

The library never prints; only deployer.cli and deployer.commands.* use this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    out.print(t)


def info(message: str) -> None:
    """Progress for people; goes to stderr so --json stdout stays machine-readable."""
    err.print(message, highlight=False)
