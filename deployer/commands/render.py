"""`deployer render --target kubernetes -o DIR`: a kustomize directory, rendered offline (no cluster)."""

from __future__ import annotations

from pathlib import Path

import click

from deployer.commands.options import json_option, manifest_option

target_option = click.option(
    "--target",
    type=click.Choice(["kubernetes"]),
    default="kubernetes",
    show_default=True,
    help="What to render for.",
)
output_option = click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The directory to write (created if missing); apply it with `kubectl apply -k DIR`.",
)


def show(report: object, as_json: bool) -> None:
    from deployer import console
    from deployer.kubernetes import RenderReport

    assert isinstance(report, RenderReport)
    if as_json:
        console.emit_json(report.to_json())
        return
    if report.label is not None:
        console.out.print(
            f"moved {report.model} {report.label}: {report.from_version} → {report.to_version} (re-rendered)",
            markup=False,
            highlight=False,
        )
    for model in report.models:
        labels = ", ".join(f"{k}→{v}" for k, v in sorted(model.labels.items()))
        versions = ", ".join(map(str, model.versions))
        console.out.print(f"{model.name}: versions {versions}; labels {labels}", markup=False, highlight=False)
    removed = f" (removed {', '.join(report.removed)})" if report.removed else ""
    apply = f"apply with `kubectl apply -k {report.directory}`"
    console.out.print(
        f"wrote {len(report.written)} files to {report.directory}{removed}; {apply}", markup=False, highlight=False
    )


@click.command()
@manifest_option
@target_option
@output_option
@json_option
def render(manifest_path: str, target: str, output: Path, as_json: bool) -> None:
    """Render the deployment for a cluster engine, offline: a kustomize directory for Kubernetes.

    A previous render's models.config in DIR is kept (its versions and labels), so re-rendering after
    `deployer promote --target kubernetes` does not undo the promotion.
    """
    from deployer import kubernetes
    from deployer.manifest import load_manifest

    del target  # one target today; the option keeps room for others
    show(kubernetes.render_directory(load_manifest(manifest_path), output), as_json)


COMMANDS = [render]
