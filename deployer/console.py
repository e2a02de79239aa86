"""Output for the CLI: JSON on stdout for --json, rich tables for people, messages on stderr.

The library never prints; only deployer.cli and deployer.commands.* use this module.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

GAP = "  "
# A shortened detail column keeps at least this many characters (or its whole header).
MIN_DETAIL_WIDTH = 8


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Column:
    """A table column. Essential columns (versions, states, results) are never shortened; details are
    shortened with "…" or hidden when the table would not fit the width."""

    header: str
    essential: bool = True
    align_right: bool = False


def prog() -> str:
    """How to invoke deployer in printed next steps: as the user did (bin/deployer sets
    $DEPLOYER_PROG), else ``deployer`` when it is on PATH, else the path that ran this process."""
    given = os.environ.get("DEPLOYER_PROG")
    if given:
        return given
    if shutil.which("deployer") is not None or not sys.argv or not sys.argv[0].endswith("deployer"):
        return "deployer"
    return os.path.relpath(sys.argv[0]) if not sys.argv[0].startswith("..") else sys.argv[0]


def output_width() -> int | None:
    """The width tables must fit: $COLUMNS when set, the terminal's width on a terminal, else None
    (a pipe or CI log: lines may be as long as they need, nothing is wrapped or cut)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _cell(value: Any) -> str:
    # One line per row, always: a wrapped cell turns one entry into many lines in a log.
    return "" if value is None else " ".join(str(value).split())


def render_table(
    columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], *, width: int | None
) -> tuple[list[str], list[str]]:
    """kubectl-style lines (header, then one line per row, columns two spaces apart) that fit
    ``width`` by shortening, then hiding, detail columns; returns (lines, hidden column headers)."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[_cell(v) for v in row] for row in rows]
    natural = [max([len(c.header)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    widths = list(natural)
    shown = list(range(len(cols)))

    def total() -> int:
        return sum(widths[i] for i in shown) + len(GAP) * (len(shown) - 1)

    if width is not None:
        details = sorted((i for i, c in enumerate(cols) if not c.essential), key=lambda i: -natural[i])
        for i in details:  # shorten the widest details first, never below their floor
            excess = total() - width
            if excess <= 0:
                break
            floor = min(natural[i], max(MIN_DETAIL_WIDTH, len(cols[i].header)))
            widths[i] = max(floor, widths[i] - excess)
        for i in reversed([i for i, c in enumerate(cols) if not c.essential]):
            if total() <= width:
                break
            shown.remove(i)

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[: widths[i] - 1] + "…"
        return text.rjust(widths[i]) if cols[i].align_right else text.ljust(widths[i])

    lines = [GAP.join(fit(cols[i].header, i) for i in shown).rstrip()]
    lines += [GAP.join(fit(row[i], i) for i in shown).rstrip() for row in cells]
    hidden = [cols[i].header for i in range(len(cols)) if i not in shown]
    return lines, hidden


def table(
    title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], *, wide_hint: str = "--json"
) -> None:
    """Print a table that stays readable at the output's width and in pipes (see render_table)."""
    lines, hidden = render_table(columns, rows, width=output_width())
    if title:
        out.print(title, markup=False, highlight=False)
    for line in lines:
        out.print(line, markup=False, highlight=False, overflow="ignore", crop=False)
    if hidden:
        err.print(f"({len(hidden)} column(s) hidden to fit the width: {', '.join(hidden)}; {wide_hint} shows all)",
                  markup=False, highlight=False)


def info(message: str) -> None:
    """Progress for people; goes to stderr so --json stdout stays machine-readable."""
    err.print(message, highlight=False)
