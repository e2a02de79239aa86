"""`deployer promote`, `deployer rollback`, `deployer history`: thin wrappers over deployer.promote/ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from deployer import console
from deployer.commands.options import (
    INT64_MAX,
    BoundedInt,
    FiniteFloatRange,
    examples,
    json_option,
    manifest_option,
    model_option,
    output_option,
    version_type,
)
from deployer.commands.targets import target_option
from deployer.console import Column
from deployer.errors import UsageError
from deployer.manifest import load_manifest
from deployer.promote import PromoteReport, PromotionFailed, settled_history
from deployer.state import StateDir

if TYPE_CHECKING:
    from deployer.client import ServingClient
    from deployer.fleet import Fleet
    from deployer.manifest import Manifest

label_option = click.option("--label", default=None, help="The label to move (default: the model's first label).")
no_wait_option = click.option(
    "--no-wait", is_flag=True, help="Fail at once (exit 6) if another promotion of this project is running."
)


max_delta_option = click.option(
    "--max-delta",
    "--max-score-delta",
    "max_delta",
    # Finite (NaN passes every range check and once switched the gate off) and bounded.
    type=FiniteFloatRange(0.0, 1e15),
    default=None,
    help="Fail if any smoke case's answer moves by more than X versus the label's current version: a class"
    " score (classify), a value (regress), an output element (predict). --max-score-delta is an alias.",
)


def _show_diff(report: PromoteReport) -> None:
    if not report.diff:
        return
    console.table(
        f"{report.model}: {report.label} version {report.from_version} vs candidate {report.to_version}",
        ["case", f"v{report.from_version}", f"v{report.to_version}", "Δ", "changed"],
        [
            (d.name, d.current, d.candidate, "-" if d.delta is None else f"{d.delta:.4g}", "yes" if d.changed else "")
            for d in report.diff
        ],
    )


def _show(report: PromoteReport) -> None:
    if report.noop:
        console.info(f"[green]nothing to do:[/] {report.reason}")
        return
    _show_diff(report)
    verb = "rolled back" if report.kind == "rollback" else "promoted"
    total = report.durations.get("total", 0.0)
    kept = ", ".join(str(v) for v in report.versions_loaded)
    console.info(
        f"[green]{verb}:[/] {report.model} {report.label} {report.from_version} → {report.to_version}"
        f" in {total:.1f}s (loaded versions: {kept})"
    )


def _connect(manifest: Manifest, target: str | None) -> ServingClient | Fleet:
    """Every replica of the manifest's own server, or the one TF Serving at --target."""
    if target is None:
        from deployer import orchestrate

        return orchestrate.connect_fleet(manifest)[1]
    from deployer.commands import targets

    return targets.connect(manifest, target).client


def _check_promote_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--target HOST:PORT (a server), or the word kubernetes (a rendered directory)."""
    if value == "kubernetes":
        return value
    from deployer.commands.targets import _check_target

    return _check_target(ctx, param, value)


def _run(as_json: bool, action: Callable[[Callable[[str], None]], PromoteReport]) -> None:
    progress: Callable[[str], None] = console.info
    try:
        report = action(progress)
    except PromotionFailed as exc:
        if as_json:
            console.emit_json(exc.report.to_json())
        else:
            # The comparison is what explains most refusals (a class flipped, a score moved): show it.
            _show_diff(exc.report)
        raise
    if as_json:
        console.emit_json(report.to_json())
    else:
        _show(report)


@click.command(epilog=examples("promote"))
@click.argument("version", type=version_type())
@manifest_option
@model_option
@label_option
@max_delta_option
@no_wait_option
@click.option(
    "--target",
    default=None,
    metavar="HOST:PORT|kubernetes",
    callback=_check_promote_target,
    help="HOST:PORT: any TF Serving gRPC endpoint instead of the manifest's own server (all its replicas)."
    " kubernetes: re-render the kustomize directory -o DIR with the label moved (no cluster call).",
)
@click.option(
    "-o",
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --target kubernetes: the directory `deployer render` wrote.",
)
@json_option
def promote(
    version: int,
    manifest_path: str,
    model_name: str | None,
    label: str | None,
    max_delta: float | None,
    no_wait: bool,
    target: str | None,
    output_dir: Path | None,
    as_json: bool,
) -> None:
    """Move a label to VERSION: load beside the current one, smoke-test and diff, switch, unload.

    Any failure restores the previous config (file and server) and exits 6; on a fleet (the swarm
    runtime) every step runs on every replica. With --target HOST:PORT the server is any TF Serving
    whose models.config deployer keeps: TF Serving has no API to read its config, so the state
    directory's config/models.config must be the one that server runs (paths as the server sees
    them), and the manifest's base_path must be readable here (step 1). With --target kubernetes
    the directory -o DIR is re-rendered with the label moved and both versions loaded, ready for
    `kubectl apply -k DIR` (an ordinary rolling update).
    """
    from deployer import promote as promotion

    manifest = load_manifest(manifest_path)
    if target == "kubernetes":
        from deployer import kubernetes
        from deployer.commands.render import show

        if output_dir is None:
            raise UsageError("--target kubernetes needs -o DIR (the directory `deployer render` wrote)")
        report = kubernetes.promote_directory(manifest, output_dir, version, model_name=model_name, label=label)
        show(report, as_json)
        return
    if output_dir is not None:
        raise UsageError("-o/--output goes with --target kubernetes")

    def connect() -> ServingClient | Fleet:
        return _connect(manifest, target)

    _run(
        as_json,
        lambda progress: promotion.promote(
            manifest,
            connect,
            version,
            model_name=model_name,
            label=label,
            max_delta=max_delta,
            wait=not no_wait,
            progress=progress,
        ),
    )


@click.command(epilog=examples("rollback"))
@manifest_option
@model_option
@label_option
@click.option("--to", "to_version", type=version_type(), default=None, help="Roll back to this version.")
@max_delta_option
@no_wait_option
@target_option
@json_option
def rollback(
    manifest_path: str,
    model_name: str | None,
    label: str | None,
    to_version: int | None,
    max_delta: float | None,
    no_wait: bool,
    target: str | None,
    as_json: bool,
) -> None:
    """Move a label back to its previous version (from the history), or --to VERSION, through the same checks.

    --target HOST:PORT works as for `promote`."""
    from deployer import promote as promotion

    manifest = load_manifest(manifest_path)

    def connect() -> ServingClient | Fleet:
        return _connect(manifest, target)

    _run(
        as_json,
        lambda progress: promotion.rollback(
            manifest,
            connect,
            model_name=model_name,
            label=label,
            to=to_version,
            max_delta=max_delta,
            wait=not no_wait,
            progress=progress,
        ),
    )


def _smoke_text(smoke: dict[str, object]) -> str:
    if not smoke:
        return ""
    parts = []
    if "passed" in smoke:
        listed = smoke.get("failed_cases")
        failed = [str(name) for name in listed] if isinstance(listed, list) else []
        total = smoke.get("cases")
        if smoke["passed"]:
            parts.append(f"passed ({total} cases)" if total else "passed")
        else:
            of = f" of {total}" if total is not None else ""
            parts.append(f"{len(failed)}{of} failed ({', '.join(failed)})")
    if "class_changes" in smoke:
        parts.append(f"{smoke['class_changes']} changed answer(s), max Δ {smoke.get('max_score_delta')}")
    return "; ".join(parts)


@click.command(epilog=examples("history"))
@manifest_option
@model_option
@click.option("--label", default=None, help="Only entries for this label.")
@click.option("--limit", type=BoundedInt(1, INT64_MAX), default=None, help="Show only the newest N entries.")
@output_option
@json_option
def history(
    manifest_path: str, model_name: str | None, label: str | None, limit: int | None, output: str, as_json: bool
) -> None:
    """The promotion history of this project: who moved which label from where to where, and how it went.

    The table shows when, what and how it ended, fitted to the width; -o wide adds who, the kind,
    the smoke summary, the duration and the whole reason.
    """
    import time

    manifest = load_manifest(manifest_path)
    state = StateDir(manifest.state_path, manifest.project)
    read = settled_history(state)
    entries = [
        e for e in read.entries if (model_name is None or e.model == model_name) and (label is None or e.label == label)
    ]
    if limit is not None:
        entries = entries[-limit:]
    if as_json or output == "json":
        console.emit_json(
            {
                "project": manifest.project,
                "ledger": str(state.ledger),
                "entries": [e.to_json() for e in entries],
                "skipped_lines": read.skipped_lines,
            }
        )
        return
    if read.skipped_lines:
        console.info(f"[yellow]warning:[/] skipped unreadable ledger line(s) {read.skipped_lines} in {state.ledger}")
    if not entries:
        console.info(f"no promotions recorded for {manifest.project} ({state.ledger})")
        return
    title = f"promotion history of {manifest.project}"
    if output == "wide":
        console.table(
            title,
            # Every column in full, as kubectl -o wide: a long line wraps in a terminal, nothing is cut.
            ["time (UTC)", "user", "kind", "model", "label", "from → to", "result", "smoke", "total s", "reason"],
            [
                (e.iso_time, e.user, e.kind, e.model, e.label, f"{e.from_version} → {e.to_version}", e.result,
                 _smoke_text(e.smoke), f"{e.durations.get('total', 0.0):.1f}", e.reason)
                for e in entries
            ],
            wide_hint="--json",
        )  # fmt: skip
        return
    console.table(
        title,
        ["time (UTC)", "model", "label", "from → to", "result", Column("reason", essential=False)],
        [
            (time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.time)), e.model, e.label,
             f"{e.from_version} → {e.to_version}", e.result, e.reason)
            for e in entries
        ],
        wide_hint="-o wide",
    )  # fmt: skip


COMMANDS = [promote, rollback, history]
