"""The offline half: train and export, list versions, inspect signatures, predict in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deployer import console, store
from deployer.commands.options import json_option, manifest_option, model_option
from deployer.errors import UsageError
from deployer.manifest import load_manifest

version_option = click.option(
    "--version", "version", type=click.IntRange(min=0), default=None, help="Model version (default: the latest)."
)


@click.command()
@manifest_option
@model_option
@json_option
def train(manifest_path: str, model_name: str | None, as_json: bool) -> None:
    """Train the model and export it as a new version under its base path."""
    from deployer.export import preflight, train_and_export

    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    preflight(manifest, model)
    if not as_json:
        console.info(f"training {model.name} with {model.trainer} ...")
    result = train_and_export(manifest, model)
    if as_json:
        console.emit_json(result.to_json())
        return
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    console.info(
        f"exported {result.model} version {result.version} to {result.path} "
        f"(train {result.seconds_train:.1f}s, export {result.seconds_export:.1f}s; {metrics})"
    )


@click.command()
@manifest_option
@model_option
@json_option
def versions(manifest_path: str, model_name: str | None, as_json: bool) -> None:
    """List the exported versions and their metrics."""
    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    base_path = manifest.base_path(model)
    entries: list[dict[str, Any]] = []
    for version in store.list_versions(base_path):
        path = base_path / str(version)
        metadata = store.read_metadata(path)
        entries.append(
            {
                "version": version,
                "path": str(path),
                "created_at": metadata.get("created_at"),
                "metrics": metadata.get("metrics", {}),
            }
        )
    if as_json:
        console.emit_json({"model": model.name, "base_path": str(base_path), "versions": entries})
        return
    if not entries:
        console.info(f"no versions under {base_path} (run `deployer train -f {manifest_path}`)")
        return
    metric_names = sorted({name for entry in entries for name in entry["metrics"]})
    rows = [
        [e["version"], e["created_at"], *(_fmt(e["metrics"].get(name)) for name in metric_names)] for e in entries
    ]
    console.table(f"{model.name} versions in {base_path}", ["Version", "Created", *metric_names], rows)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _shape(shape: list[int] | None) -> str:
    return "unknown rank" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


@click.command()
@manifest_option
@model_option
@version_option
@json_option
def inspect(manifest_path: str, model_name: str | None, version: int | None, as_json: bool) -> None:
    """Show each signature's inputs, outputs and method name (like `saved_model_cli show --all`)."""
    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    number, path = store.resolve_version(manifest.base_path(model), version)
    signatures = {
        name: sig for name, sig in store.read_signatures(path).items() if name not in store.INTERNAL_SIGNATURES
    }
    if as_json:
        console.emit_json(
            {
                "model": model.name,
                "version": number,
                "path": str(path),
                "signatures": [sig.to_json() for sig in signatures.values()],
            }
        )
        return
    for sig in signatures.values():
        rows = [["input", t.name, t.dtype, _shape(t.shape), t.tensor] for t in sig.inputs]
        rows += [["output", t.name, t.dtype, _shape(t.shape), t.tensor] for t in sig.outputs]
        console.table(
            f"{model.name} v{number} signature {sig.name!r} (method {sig.method_name or '-'})",
            ["Kind", "Name", "DType", "Shape", "Tensor"],
            rows,
        )


@click.command()
@manifest_option
@model_option
@version_option
@click.option("--local", is_flag=True, help="Run the exported model in this process (no server).")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rows to classify: a CSV with a header, or JSON (object, list of objects, or {\"instances\": [...]}).",
)
@click.option(
    "--example", "examples", multiple=True, metavar="NAME=VALUE", help="One feature value; repeat per feature."
)
@json_option
def predict(
    manifest_path: str,
    model_name: str | None,
    version: int | None,
    local: bool,
    input_path: Path | None,
    examples: tuple[str, ...],
    as_json: bool,
) -> None:
    """Classify rows with an exported version."""
    from deployer.export import predict_local, row_from_pairs, rows_from_file

    if not local:
        raise UsageError("predict needs --local (it runs the exported model in-process)")
    if (input_path is None) == (not examples):
        raise UsageError("give either --input FILE or --example NAME=VALUE (not both)")
    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    number, path = store.resolve_version(manifest.base_path(model), version)
    names = model.feature_names
    rows = rows_from_file(input_path, names) if input_path is not None else [row_from_pairs(examples, names)]
    # A version that breaks the Classify contract gets a clear StoreError instead of a TF stack trace.
    store.validate_version(path, model)
    predictions = predict_local(path, model, rows)
    if as_json:
        console.emit_json(
            {"model": model.name, "version": number, "predictions": [p.to_json() for p in predictions]}
        )
        return
    table_rows = [[*(f"{p.features[n]:g}" for n in names), p.class_id, f"{p.probability:.4f}"] for p in predictions]
    console.table(f"{model.name} v{number} (local)", [*names, "ClassID", "Probability"], table_rows)


COMMANDS = [train, versions, inspect, predict]
