"""The offline half: train and export, import a SavedModel, list versions, inspect signatures, predict in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from deployer import console, store
from deployer.commands.options import examples, json_option, manifest_option, model_option
from deployer.errors import InputDataError, StoreError, UsageError
from deployer.manifest import ModelSpec, load_manifest

version_option = click.option(
    "--version", "version", type=click.IntRange(min=0), default=None, help="Model version (default: the latest)."
)


@click.command(epilog=examples("train"))
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
    result = train_and_export(manifest, model, progress=lambda line: console.info(f"  {escape(line)}"))
    if as_json:
        console.emit_json(result.to_json())
        return
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
    console.info(
        f"exported {result.model} version {result.version} to {result.path} "
        f"(train {result.seconds_train:.1f}s, export {result.seconds_export:.1f}s; {metrics})"
    )


@click.command(epilog=examples("versions"))
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
    rows = [[e["version"], e["created_at"], *(_fmt(e["metrics"].get(name)) for name in metric_names)] for e in entries]
    console.table(f"{model.name} versions in {base_path}", ["Version", "Created", *metric_names], rows)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _shape(shape: list[int] | None) -> str:
    return "unknown rank" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


@click.command(epilog=examples("inspect"))
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
    api, contract = _contract(path, model)
    if as_json:
        console.emit_json(
            {
                "model": model.name,
                "version": number,
                "path": str(path),
                "api": api,
                "signature_name": model.signature_name,
                "contract": contract,
                "signatures": [sig.to_json() for sig in signatures.values()],
            }
        )
        return
    for sig in signatures.values():
        rows = [["input", t.name, t.dtype, _shape(t.shape), t.tensor] for t in sig.inputs]
        rows += [["output", t.name, t.dtype, _shape(t.shape), t.tensor] for t in sig.outputs]
        console.table(
            f"{model.name} v{number} signature {sig.name!r} (method {sig.method_name or '-'})",
            ["Kind", "Name", "DType", "Shape", console.Column("Tensor", essential=False)],
            rows,
        )
    console.out.print(
        f"{model.name} serves {model.signature_name!r} through {api or 'an unknown API'}: {contract}",
        markup=False,
        highlight=False,
    )


def _contract(path: Path, model: ModelSpec) -> tuple[str | None, str]:
    """The model's API and whether the manifest's signature meets its contract ("ok" or the reason)."""
    from deployer import apis

    try:
        sig = store.find_signature(path, model)
        api = apis.resolve(model, sig)
    except StoreError as exc:
        return model.declared_api, exc.message
    try:
        api.check_contract(sig, model)
    except StoreError as exc:
        return api.name, exc.message
    return api.name, "ok"


@click.command("import", epilog=examples("import"))
@manifest_option
@model_option
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--version", "version", type=click.IntRange(min=1), default=None, help="Publish as this version (default: next)."
)
@json_option
def import_(manifest_path: str, model_name: str | None, path: Path, version: int | None, as_json: bool) -> None:
    """Validate the SavedModel at PATH (TF Serving's loader, signature, the manifest's inputs/outputs) and
    publish it as a new version, atomically, with metadata and warmup records."""
    from deployer.importer import import_saved_model

    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)

    def progress(line: str) -> None:
        console.out.print(line, markup=False, highlight=False) if not as_json else console.info(escape(line))

    result = import_saved_model(manifest, model, path, version=version, progress=progress)
    if as_json:
        console.emit_json(result.to_json())
        return
    verb = "imported" if result.imported else "already imported"
    console.out.print(
        f"{verb}: {result.model} version {result.version} → {result.path} (sha256 {result.sha256[:12]})",
        markup=False,
        highlight=False,
    )


@click.command(epilog=examples("predict"))
@manifest_option
@model_option
@version_option
@click.option("--local", is_flag=True, help="Run the exported model in this process (no server).")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='TF Serving\'s REST request JSON ({"examples": ...}, {"instances": ...} or {"inputs": ...});'
    " for tf.Example features also a CSV with a header, a JSON object or a list of objects.",
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
    """Run inputs through an exported version's signature, whatever its API (classify, regress, predict)."""
    from deployer import apis
    from deployer.export import batch_from_file, batch_from_pairs, run_local

    if not local:
        raise UsageError("predict needs --local (it runs the exported model in-process)")
    if (input_path is None) == (not examples):
        raise UsageError("give either --input FILE or --example NAME=VALUE (not both)")
    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    number, path = store.resolve_version(manifest.base_path(model), version)
    declared = model.declared_api
    api = apis.piece(declared) if declared is not None else apis.resolve(model, store.find_signature(path, model))
    if input_path is not None:
        batch, rows = batch_from_file(input_path, model, api)
    else:
        batch, rows = batch_from_pairs(examples, model, api)
    # A version that breaks its API's contract gets a clear StoreError instead of a TF stack trace.
    store.validate_version(path, model)
    try:
        answers = run_local(path, model, batch).to_json()
    except StoreError as exc:
        raise InputDataError(exc.message) from None
    if rows is not None:
        # tf.Example APIs: show each answer beside the row it answers.
        answers = [{"features": row, **answer} for row, answer in zip(rows, answers, strict=True)]
    if as_json:
        console.emit_json({"model": model.name, "version": number, "api": api.name, "predictions": answers})
        return
    _print_predictions(model, number, answers)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) > 3 and all(isinstance(v, int | float) for v in value):
        # A score vector: what a person looks for is the winner.
        best = max(range(len(value)), key=lambda i: value[i])
        return f"argmax {best} ({value[best]:.4g}) of {len(value)}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:59] + "…"


def _print_predictions(model: ModelSpec, number: int, answers: list[dict[str, Any]]) -> None:
    """One row per instance; classify keeps its ClassID/Probability columns, other APIs show their fields."""
    renamed = {"class": "ClassID", "probability": "Probability", "value": "Value"}
    columns = [key for key in answers[0] if key not in ("scores", "features")] if answers else []
    names = model.feature_names if answers and "features" in answers[0] else []
    console.table(
        f"{model.name} v{number} (local)",
        [*names, *(renamed.get(c, c) for c in columns)],
        [[*(_feature_cell(a["features"][n]) for n in names), *(_cell(a[c]) for c in columns)] for a in answers],
    )


def _feature_cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else _cell(value)


COMMANDS = [train, import_, versions, inspect, predict]
