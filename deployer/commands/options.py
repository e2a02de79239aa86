"""Options shared by several commands, and the numeric parameter types every command uses.

Every numeric flag is bounded on both sides and every float flag must be finite: a NaN passes every
range check (each comparison with NaN is false), which once let ``--max-score-delta nan`` switch the
promotion gate off, and ``inf`` reached gRPC and socket deadlines as an exception.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

MANIFEST_ENV = "DEPLOYER_MANIFEST"
DEFAULT_MANIFEST_NAMES = ("deployer.yaml", "deployer.yml")


def find_manifest(cwd: Path | None = None) -> tuple[str, str]:
    """The manifest to use when -f is not given, and why: $DEPLOYER_MANIFEST, else deployer.yaml in
    the working directory, else the only manifests/*.yaml there (as kubectl and compose look for
    their files). Several candidates or none: a usage error naming them."""
    from deployer.errors import UsageError

    env = os.environ.get(MANIFEST_ENV)
    if env:
        return env, f"${MANIFEST_ENV}"
    here = cwd or Path.cwd()
    for name in DEFAULT_MANIFEST_NAMES:
        if (here / name).is_file():
            return name, f"{name} in the working directory"
    found = sorted(p for pattern in ("*.yaml", "*.yml") for p in (here / "manifests").glob(pattern) if p.is_file())
    if len(found) == 1:
        return str(found[0].relative_to(here)), "the only manifest in manifests/"
    if found:
        names = ", ".join(str(p.relative_to(here)) for p in found)
        raise UsageError(f"no -f given and manifests/ holds several manifests: {names}", hint="choose one with -f")
    raise UsageError(
        "no manifest: no -f given, $DEPLOYER_MANIFEST is unset, and the working directory has neither "
        "deployer.yaml nor a manifests/*.yaml",
        hint="pass -f MANIFEST (e.g. -f manifests/iris.yaml)",
    )


def _manifest_default(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None or ctx.resilient_parsing:  # shell completion parses without running anything
        return value
    path, why = find_manifest()
    from deployer import console

    console.err.print(f"using manifest {path} ({why})", markup=False, highlight=False)
    return path

# TF Serving's versions are int64; a larger number cannot even be put in a request.
INT64_MAX = 2**63 - 1
# A per-request deadline longer than an hour is a typo, not a slow model.
MAX_REQUEST_TIMEOUT_S = 3600.0


class FiniteFloatRange(click.FloatRange):
    """A float flag with both bounds given; NaN and ±inf are refused before the range is checked."""

    name = "float"

    def __init__(self, min: float, max: float, *, min_open: bool = False, max_open: bool = False) -> None:
        super().__init__(min, max, min_open=min_open, max_open=max_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class BoundedInt(click.IntRange):
    """An integer flag with both bounds given (click's IntRange allows either to be open)."""

    def __init__(self, min: int, max: int) -> None:
        super().__init__(min, max)


def version_type(minimum: int = 0) -> BoundedInt:
    return BoundedInt(minimum, INT64_MAX)


manifest_option = click.option(
    "-f",
    "--file",
    "manifest_path",
    default=None,
    callback=_manifest_default,
    type=click.Path(dir_okay=False, path_type=str),
    help=f"The manifest (YAML). -f always means the manifest, in every command. Default: ${MANIFEST_ENV}, "
    "else ./deployer.yaml, else the only manifests/*.yaml.",
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

# `deployer CMD --help` ends with these: the commands people copy first, -f always the manifest.
EXAMPLES: dict[str, list[str]] = {
    "train": ["deployer train -f manifests/iris.yaml", "deployer train --json   # manifest found in ./"],
    "import": [
        "deployer import -f manifests/zoo.yaml --model digits build/digits_saved_model",
        "deployer import ./exported_model --version 7 --json",
    ],
    "versions": ["deployer versions -f manifests/iris.yaml", "deployer versions --model iris --json"],
    "inspect": ["deployer inspect -f manifests/iris.yaml", "deployer inspect --version 1764300000 --json"],
    "predict": [
        "deployer predict -f manifests/iris.yaml --local --example SepalLength=5.1 --example SepalWidth=3.3 \\",
        "    --example PetalLength=1.7 --example PetalWidth=0.5",
        "deployer predict --local --input rows.csv --json",
    ],
    "up": [
        "deployer up -f manifests/iris.yaml",
        "deployer up --runtime docker --image deployer/model-server-compat:0.1.0",
        "deployer up --retrain   # exports a new version; serve it with `deployer promote`",
        "deployer up --json | tee up.json   # CI: progress on stderr, the report on stdout",
    ],
    "smoke": [
        "deployer smoke -f manifests/iris.yaml",
        "deployer smoke --junit build/smoke.xml --json",
        "deployer smoke --version 1764300000 --rest",
    ],
    "status": ["deployer status -f manifests/iris.yaml", "deployer status --json || echo 'server is down'"],
    "logs": [
        "deployer logs -f manifests/iris.yaml --tail 200",
        "deployer logs --follow   # -f is the manifest; Ctrl-C stops following",
        "deployer logs --raw --json",
    ],
    "down": ["deployer down -f manifests/iris.yaml"],
    "promote": [
        "deployer promote 1764300000 -f manifests/iris.yaml",
        "deployer promote 1764300000 --label canary --max-score-delta 0.1 --json",
    ],
    "rollback": ["deployer rollback -f manifests/iris.yaml", "deployer rollback --to 1764300000"],
    "history": [
        "deployer history -f manifests/iris.yaml",
        "deployer history -o wide --limit 20",
        "deployer history -o json",
    ],
}


def examples(command: str) -> str:
    """The epilog of a command's --help ("\\b" keeps click from re-wrapping the lines)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])
