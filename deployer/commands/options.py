"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

manifest_option = click.option(
    "-f",
    "--file",
    "manifest_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The manifest (YAML), e.g. manifests/iris.yaml.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
model_option = click.option("--model", "model_name", default=None, help="Model name (when the manifest has several).")

output_option = click.option(
    "-o",
    "--output",
    "output",
    type=click.Choice(["table", "wide", "json"]),
    default="table",
    show_default=True,
    help="table: the essential columns, fitted to the width; wide: every column; json: like --json.",
)
