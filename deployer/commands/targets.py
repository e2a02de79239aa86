"""Which server a command talks to: the manifest's own (from the state directory), or any TF Serving
named with ``--target HOST:PORT`` (gRPC; ``--rest-url`` for REST), as CI often checks a deployment
deployer did not start. The manifest still gives the models, labels and smoke cases.

Also the usage checks that keep a typo from reading as a model failure: an unknown label or a version
that is not loaded is exit 2 naming what exists, not eight failed smoke cases (exit 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deployer.errors import NotHealthy, ServerRequestError, UsageError

if TYPE_CHECKING:
    from deployer.client import ServingClient
    from deployer.manifest import Manifest, ModelSpec

F = TypeVar("F", bound=Callable[..., Any])

# host:port, [v6]:port; the host may be a name.
_TARGET = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
# What TF Serving answers for a label or version it does not have.
_NOT_THERE = {"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}


def _check_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    match = _TARGET.match(value)
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise UsageError(f"--target {value!r}: expected HOST:PORT of a gRPC endpoint, e.g. 127.0.0.1:8500")
    return value


def _check_rest_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise UsageError(f"--rest-url {value!r}: expected http://HOST:PORT, e.g. http://127.0.0.1:8501")
    return value.rstrip("/") if value else value


target_option = click.option(
    "--target",
    default=None,
    metavar="HOST:PORT",
    callback=_check_target,
    help="Talk to this TF Serving gRPC endpoint instead of the manifest's own server (any TF Serving).",
)
rest_url_option = click.option(
    "--rest-url",
    default=None,
    metavar="URL",
    callback=_check_rest_url,
    help="REST base URL (http://HOST:PORT) for --rest with --target.",
)


@dataclass
class Connection:
    grpc_target: str
    rest_url: str | None
    client: ServingClient
    external: bool  # --target: not a server of this manifest's state directory


def connect(manifest: Manifest, target: str | None, rest_url: str | None = None) -> Connection:
    """A client for --target, or for the manifest's running server (NotHealthy when none answers)."""
    from deployer import orchestrate

    if target is None:
        handle, client = orchestrate.connect(manifest)
        return Connection(handle.grpc_target, rest_url or handle.rest_url, client, external=False)
    from deployer.client import ServingClient

    client = ServingClient(target)
    if not client.wait_until_reachable(5.0):
        client.close()
        raise NotHealthy(f"nothing answers gRPC at {target}", hint="check --target HOST:PORT (the gRPC port)")
    return Connection(target, rest_url, client, external=True)


def _labels_text(labels: dict[str, int | None]) -> str:
    return ", ".join(f"{k} → {v if v is not None else 'unresolved'}" for k, v in sorted(labels.items())) or "none"


def known_labels(manifest: Manifest, model: ModelSpec, client: ServingClient) -> dict[str, int | None]:
    """The labels one could mean: the manifest's and the deployed config's, with the version each
    resolves to on the server (None when it does not resolve)."""
    from deployer import served

    names = set(model.labels)
    entry = served.deployed(manifest, model)
    if entry is not None:
        names |= set(entry.labels)
    resolved: dict[str, int | None] = {}
    for name in sorted(names):
        try:
            meta = client.metadata(model.name, label=name, timeout=5.0)
            resolved[name] = int(meta.get("model_spec", {}).get("version", 0) or 0) or None
        except ServerRequestError:
            resolved[name] = None
    return resolved


def check_selector(
    manifest: Manifest, model: ModelSpec, client: ServingClient, *, label: str | None, version: int | None
) -> None:
    """Exit 2 for a label the server does not resolve or a version it has not loaded, naming what exists."""
    if version is not None:
        try:
            statuses = client.model_status(model.name, timeout=5.0)
        except ServerRequestError as exc:
            if exc.code in _NOT_THERE:
                raise NotHealthy(f"model {model.name} is not served at {client.target}: {exc.message}") from None
            raise
        loaded = {s.version: s.state for s in statuses}
        if loaded.get(version) != "AVAILABLE":
            state = f" ({loaded[version]})" if version in loaded else ""
            listed = ", ".join(f"{v} ({s})" for v, s in sorted(loaded.items())) or "none"
            raise UsageError(
                f"version {version} of {model.name} is not loaded{state}; the server has: {listed}",
                hint=f"`deployer promote {version}` loads and checks a version; `deployer versions` lists them",
            )
    if label is not None:
        try:
            client.metadata(model.name, label=label, timeout=5.0)
            return
        except ServerRequestError as exc:
            if exc.code not in _NOT_THERE:
                raise
        labels = known_labels(manifest, model, client)
        raise UsageError(
            f"model {model.name} has no label {label!r} on the server; labels: {_labels_text(labels)}",
            hint="--label takes one of those (the manifest lists models[].labels)",
        )
