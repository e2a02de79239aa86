"""The offline half: train and export, import a SavedModel, list versions, inspect signatures, predict in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from deployer import console, store
from deployer.commands.options import (
    examples,
    json_option,
    manifest_option,
    model_option,
    output_option,
    version_type,
)
from deployer.commands.targets import target_option
from deployer.errors import InputDataError, StoreError, UsageError
from deployer.manifest import ModelSpec, load_manifest

version_option = click.option(
    "--version",
    "version",
    type=version_type(),
    default=None,
    help="Model version (default: the one the model's first label serves, else the newest complete one).",
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
@output_option
@json_option
def versions(manifest_path: str, model_name: str | None, output: str, as_json: bool) -> None:
    """List each model's exported versions: labels, load state, problems, metrics.

    Labels come from the deployed config; the load state from the running server, when one answers
    (never starting one); each directory is checked like `promote` does (incomplete/corrupt).
    All models by default; --model picks one.
    """
    from deployer import served

    manifest = load_manifest(manifest_path)
    models = [manifest.model(model_name)] if model_name else list(manifest.models)
    states, server_note = _server_states(manifest, [m.name for m in models])
    documents: list[dict[str, Any]] = []
    for model in models:
        base_path = manifest.base_path(model)
        entry = served.deployed(manifest, model)
        labels = entry.labels if entry else {}
        entries: list[dict[str, Any]] = []
        for version, path in store.version_dirs(base_path).items():
            try:
                metadata = store.read_metadata(path)
            except UsageError:
                metadata = {}
            state = states.get(model.name, {}).get(version)
            if state is None:
                state = "configured" if entry and version in entry.versions else "-"
                if server_note is None and entry and version in entry.versions:
                    state = "not loaded"
            entries.append(
                {
                    "version": version,
                    "path": str(path),
                    "created_at": metadata.get("created_at"),
                    "labels": sorted(label for label, v in labels.items() if v == version),
                    "state": state,
                    "problem": served.problem(path, model),
                    "metrics": metadata.get("metrics", {}),
                }
            )
        documents.append({"model": model.name, "base_path": str(base_path), "versions": entries})
    if as_json or output == "json":
        if len(documents) == 1:
            # One model keeps the shape it always had; several come as a list, as kubectl's List.
            console.emit_json({**documents[0], "server": server_note or "answering"})
        else:
            console.emit_json({"models": documents, "server": server_note or "answering"})
        return
    if server_note:
        console.info(escape(f"(load state: {server_note})"))
    for doc in documents:
        listed: list[dict[str, Any]] = list(doc["versions"])
        if not listed:
            console.info(escape(f"{doc['model']}: no versions under {doc['base_path']} (run `deployer train`)"))
            continue
        metric_names = sorted({name for entry in listed for name in entry["metrics"]})
        rows = [
            [e["version"], ", ".join(e["labels"]), e["state"], "ok" if e["problem"] is None else e["problem"],
             e["created_at"], *(_fmt(e["metrics"].get(name)) for name in metric_names)]
            for e in listed
        ]  # fmt: skip
        columns: list[str | console.Column] = ["Version", "Labels", "State", console.Column("Check", essential=False)]
        columns += [console.Column("Created", essential=output == "wide")]
        columns += [console.Column(name, essential=output == "wide") for name in metric_names]
        console.table(f"{doc['model']} versions in {doc['base_path']}", columns, rows, wide_hint="-o wide")


def _server_states(manifest: Any, names: list[str]) -> tuple[dict[str, dict[int, str]], str | None]:
    """Each model's version states from the running server, if one answers within a second; else
    ({}, why not). No runtime SDK, no TensorFlow: one short gRPC probe."""
    from deployer.client import ServingClient
    from deployer.errors import DeployerError
    from deployer.state import StateDir

    try:
        handle = StateDir(manifest.state_path, manifest.project).load_handle()
    except DeployerError:
        handle = None
    if handle is None:
        return {}, "no server is running"
    client = ServingClient(handle.grpc_target)
    try:
        if not client.wait_until_reachable(1.0):
            return {}, f"the server at {handle.grpc_target} does not answer"
        states: dict[str, dict[int, str]] = {}
        for name in names:
            try:
                states[name] = {s.version: s.state for s in client.model_status(name, timeout=2.0)}
            except DeployerError:
                states[name] = {}
        return states, None
    finally:
        client.close()


def _chosen_version(manifest: Any, model: Any, version: int | None) -> tuple[int, Path]:
    """--version, or what is served (the label's version), said on stderr: never silently the newest
    directory, which may be a refused or broken export."""
    from deployer import served

    if version is not None:
        return store.resolve_version(manifest.base_path(model), version)
    choice = served.default_version(manifest, model)
    console.info(escape(f"version {choice.version}: {choice.why} (--version N picks another)"))
    return choice.version, choice.path


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
    number, path = _chosen_version(manifest, model, version)
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
    "--version", "version", type=version_type(1), default=None, help="Publish as this version (default: next)."
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
@click.option("--label", default=None, help="Classify with the version behind this label (default: the first label).")
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
@target_option
@json_option
def predict(
    manifest_path: str,
    model_name: str | None,
    version: int | None,
    label: str | None,
    local: bool,
    input_path: Path | None,
    examples: tuple[str, ...],
    target: str | None,
    as_json: bool,
) -> None:
    """Run inputs through the running server (or --target), or in-process with --local, whatever the
    model's API (classify, regress, predict).

    Through the server, the inputs go where clients' requests go: the label (default: the model's
    first) or --version, over gRPC. --local loads the export here, for a version no server has yet.
    """
    from deployer import apis, served

    if (input_path is None) == (not examples):
        raise UsageError("give either --input FILE or --example NAME=VALUE (not both)")
    if label is not None and version is not None:
        raise UsageError("choose --label or --version, not both")
    if local and target is not None:
        raise UsageError("--local runs the model in this process; --target sends the rows to a server: choose one")
    manifest = load_manifest(manifest_path)
    model = manifest.model(model_name)
    declared = model.declared_api
    # With the API known from the manifest, bad input is reported before any version or server is looked at.
    api = apis.piece(declared) if declared is not None else None
    if api is None:
        api = apis.resolve(model, store.find_signature(served.default_version(manifest, model).path, model))
    batch, rows = _batch(input_path, examples, model, api)
    if local:
        number, answers, where = _predict_local(manifest, model, batch, version, label)
    else:
        number, answers, where = _predict_served(manifest, model, api, batch, version, label, target)
    if rows is not None:
        # tf.Example APIs: show each answer beside the row it answers.
        answers = [{"features": row, **answer} for row, answer in zip(rows, answers, strict=True)]
    if as_json:
        console.emit_json(
            {"model": model.name, "version": number, "api": api.name, "via": where, "predictions": answers}
        )
        return
    _print_predictions(model, number, answers, where)


def _predict_local(
    manifest: Any, model: ModelSpec, batch: Any, version: int | None, label: str | None
) -> tuple[int, list[dict[str, Any]], str]:
    from deployer import served
    from deployer.export import run_local

    if label is not None:
        entry = served.deployed(manifest, model)
        if entry is None or label not in entry.labels:
            have = ", ".join(f"{k} → {v}" for k, v in sorted((entry.labels if entry else {}).items())) or "none"
            raise UsageError(f"the deployed config has no label {label!r} for {model.name}; labels: {have}")
        version = entry.labels[label]
    number, path = _chosen_version(manifest, model, version)
    # A version that breaks its API's contract gets a clear StoreError instead of a TF stack trace.
    store.validate_version(path, model)
    try:
        return number, run_local(path, model, batch).to_json(), "local"
    except StoreError as exc:
        raise InputDataError(exc.message) from None


def _predict_served(
    manifest: Any, model: ModelSpec, api: Any, batch: Any, version: int | None, label: str | None, target: str | None
) -> tuple[int, list[dict[str, Any]], str]:
    """One request of the model's API with every input, to the label or version clients would hit."""
    from deployer.apis import request_builder
    from deployer.commands import targets

    connection = targets.connect(manifest, target)
    try:
        targets.check_selector(manifest, model, connection.client, label=label, version=version)
        chosen = label if label is not None or version is not None else model.primary_label
        request = request_builder.grpc_request(api, model, batch, request_builder.Target(version, chosen))
        response, _latency = connection.client.infer(api.grpc_method, request)
    finally:
        connection.client.close()
    answers = api.to_json(api.parse_grpc(response))
    return int(response.model_spec.version.value), answers, f"served at {connection.grpc_target}"


def _batch(input_path: Path | None, examples: tuple[str, ...], model: ModelSpec, api: Any) -> tuple[Any, Any]:
    from deployer.export import batch_from_file, batch_from_pairs

    if input_path is not None:
        return batch_from_file(input_path, model, api)
    return batch_from_pairs(examples, model, api)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and len(value) > 3 and all(isinstance(v, int | float) for v in value):
        # A score vector: what a person looks for is the winner.
        best = max(range(len(value)), key=lambda i: value[i])
        return f"argmax {best} ({value[best]:.4g}) of {len(value)}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:59] + "…"


def _print_predictions(model: ModelSpec, number: int, answers: list[dict[str, Any]], where: str = "local") -> None:
    """One row per instance; classify keeps its ClassID/Probability columns, other APIs show their fields."""
    renamed = {"class": "ClassID", "probability": "Probability", "value": "Value"}
    columns = [key for key in answers[0] if key not in ("scores", "features")] if answers else []
    names = model.feature_names if answers and "features" in answers[0] else []
    console.table(
        f"{model.name} v{number} ({where})",
        [*names, *(renamed.get(c, c) for c in columns)],
        [[*(_feature_cell(a["features"][n]) for n in names), *(_cell(a[c]) for c in columns)] for a in answers],
    )


def _feature_cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else _cell(value)


COMMANDS = [train, import_, versions, inspect, predict]
