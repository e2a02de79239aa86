"""deployer up / smoke / status / logs / down.

Imports stay light at module level: every `deployer` invocation imports this module, and `deployer
smoke` must run without TensorFlow or docker-py (the library modules are imported inside commands).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from deployer.commands.options import (
    MAX_REQUEST_TIMEOUT_S,
    BoundedInt,
    FiniteFloatRange,
    examples,
    json_option,
    manifest_option,
    model_option,
    version_type,
)
from deployer.commands.targets import rest_url_option, target_option
from deployer.errors import SmokeFailed, UsageError
from deployer.manifest import MAX_REPLICAS

if TYPE_CHECKING:
    from deployer.manifest import Manifest, ModelSpec
    from deployer.orchestrate import ModelView, ReplicaView, UpReport
    from deployer.runtime.base import ServerHandle
    from deployer.smoke import SmokeReport


def _plain(text: str) -> None:
    """A line with paths and server text in it: printed as is, never read as rich markup."""
    from deployer import console

    console.out.print(text, markup=False, highlight=False)


def _load(path: str) -> Manifest:
    from deployer.manifest import load_manifest

    return load_manifest(path)


def _labels_of(view: ModelView, version: int) -> str:
    return ", ".join(sorted(label for label, v in view.labels.items() if v == version))


def _print_models(models: list[ModelView]) -> None:
    from deployer import console

    rows: list[list[Any]] = []
    for view in models:
        versions = {s.version: s for s in view.versions}
        numbers = sorted(set(versions) | set(view.labels.values()))
        if not numbers:
            rows.append([view.name, "-", "-", "", view.error or "no versions reported"])
        for number in numbers:
            status = versions.get(number)
            state = status.state if status else "not reported"
            problem = view.error if status is None else ""
            if status is not None and status.failed:
                problem = f"{status.error_code}: {status.error_message}"
            rows.append([view.name, number, state, _labels_of(view, number), problem])
    columns: list[str | console.Column] = ["model", "version", "state", "labels"]
    if any(row[4] for row in rows):
        columns.append(console.Column("error", essential=False))
    else:
        rows = [row[:4] for row in rows]
    console.table(None, columns, rows)


def _smoke_line(report: SmokeReport, *, on_target: bool = False) -> str:
    failed = len(report.failures)
    total = len(report.cases)
    if report.passed:
        verdict = f"[green]passed[/]: {total} of {total} case(s)"
    else:
        verdict = f"[red]FAILED[/]: {failed} of {total} case(s) failed, {total - failed} passed"
    latencies = sorted(c.latency_s for c in report.cases)
    p50 = f", p50 {latencies[len(latencies) // 2] * 1000:.1f} ms" if latencies else ""
    target = f", {report.target}" if on_target else ""
    where = escape(f"{report.model} ({report.selector}, {report.transport}{target})")
    return f"smoke {where}: {verdict}{p50}"


def _print_failures(report: SmokeReport) -> None:
    from deployer import console

    for case in report.failures:
        console.out.print(f"  [red]✗[/] {escape(case.name)}: {escape(case.reason)}", highlight=False)


def _unserved(report: UpReport) -> list[tuple[str, int, dict[str, int]]]:
    """Exports of this run that the server does not serve (``--retrain`` on a deployed config)."""
    served = {m.name: m for m in report.models}
    missing = []
    for exported in report.exported:
        view = served.get(exported.model)
        if view is not None and exported.version not in {s.version for s in view.versions}:
            missing.append((exported.model, exported.version, view.labels))
    return missing


def next_steps(report: UpReport, manifest: Manifest, manifest_arg: str) -> list[str]:
    """Commands worth running after this `up`, ready to paste: promote what was exported but not
    served, a curl through REST, smoke, promote, down."""
    import shlex

    from deployer import console

    cli = console.prog()
    f = f"-f {shlex.quote(manifest_arg)}"
    steps = [f"{cli} promote {version} {f}" + ("" if len(manifest.models) == 1 else f" --model {model}")
             for model, version, _ in _unserved(report)]  # fmt: skip
    rest = report.handle.rest_url
    for spec in manifest.models[:2]:
        curl = _curl_line(spec, rest) if rest is not None else None
        if curl is not None:
            steps.append(curl)
    steps.append(f"{cli} smoke {f}")
    if not _unserved(report):
        steps.append(f"{cli} train {f}   # then: {cli} promote VERSION {f}")
    steps += [f"{cli} status {f}", f"{cli} down {f}"]
    return steps


MAX_CURL_BODY = 400  # a longer request body (images, sequences) is no line to paste


def _curl_line(spec: ModelSpec, rest: str) -> str | None:
    """A curl through the REST API on the model's first label, with its first smoke case as the body
    (the model's API decides the verb and the body), or None when there is no short one."""
    import json
    import shlex

    from deployer import apis
    from deployer.apis import request_builder
    from deployer.errors import DeployerError

    declared = spec.declared_api
    if declared is None:
        return None
    api = apis.piece(declared)
    try:
        batch = api.case_batch(spec, spec.smoke[0]) if spec.smoke else api.probe_batch(spec)
        body = json.dumps(request_builder.rest_body(api, spec, batch))
    except (DeployerError, OSError, ValueError):
        return None
    if len(body) > MAX_CURL_BODY:
        return None
    url = f"{rest}/v1/models/{spec.name}/labels/{spec.primary_label}:{api.rest_verb}"
    return f"curl -s -X POST {url} -d {shlex.quote(body)}"


def _print_up(report: UpReport, steps: list[str]) -> None:
    from deployer import console

    out = console.out
    handle = report.handle
    reason = escape(report.runtime_reason)
    out.print(f"[bold]{report.project}[/] on [bold]{report.runtime}[/] ({reason})", highlight=False)
    _plain(f"server: {report.action} {handle.name} ({report.action_reason})")
    _print_endpoints(handle)
    for exported in report.exported:
        _plain(f"exported: {exported.model} version {exported.version} → {exported.path}")
    for name, meaning in report.weakenings.items():
        _plain(f"weakened: {name}: {meaning}")
    _print_models(report.models)
    if not report.smoke:
        _plain("smoke: no smoke cases in the manifest")
    several = len({r.target for r in report.smoke}) > 1
    for smoke in report.smoke:
        out.print(_smoke_line(smoke, on_target=several), highlight=False)
        _print_failures(smoke)
    phases = ("runtime", "train", "export", "import", "start", "healthy", "smoke", "total")
    out.print(
        "timings: " + "  ".join(f"{p} {report.timings[p]:.2f}s" for p in phases if p in report.timings),
        highlight=False,
    )
    for model, version, labels in _unserved(report):
        where = ", ".join(f"{label} → {v}" for label, v in sorted(labels.items())) or "no label"
        _plain(
            f"note: {model} version {version} is exported but not served: the deployed config keeps {where}; "
            "`promote` loads it beside the current version, checks it and moves the label"
        )
    _plain("next:")
    for step in steps:
        _plain(f"  {step}")


def _print_endpoints(handle: ServerHandle) -> None:
    fleet = handle.fleet
    if len(fleet) == 1:
        _plain(f"endpoints: gRPC {fleet[0].grpc_target}  REST {fleet[0].rest_url or '-'}")
        return
    for endpoint in fleet:
        _plain(f"replica {endpoint.slot}: gRPC {endpoint.grpc_target}  REST {endpoint.rest_url or '-'}")


def _smoke_failed(reports: list[SmokeReport]) -> SmokeFailed:
    failing = [r for r in reports if not r.passed]
    report = failing[0]
    case = report.failures[0]
    count = f"{len(report.failures)} of {len(report.cases)} case(s) failed"
    others = f" (and {len(failing) - 1} more report(s))" if len(failing) > 1 else ""
    where = f" on {report.target}" if len({r.target for r in reports}) > 1 else ""
    return SmokeFailed(
        f"smoke failed: {report.model} {report.selector}{where}: {count}; {case.name}: {case.reason}{others}",
        hint="the served model answers the manifest's smoke cases wrongly; see `deployer smoke --json`",
    )


@click.command(epilog=examples("up"))
@manifest_option
@click.option(
    "--runtime",
    type=click.Choice(["docker", "swarm", "local", "auto"]),
    default=None,
    help="Where the server runs (default: server.runtime in the manifest). auto: docker when usable, else local;"
    " swarm: server.replicas replicas as a Docker Swarm service.",
)
@click.option("--image", default=None, help="Server image for the docker runtime (default: server.image).")
@click.option("--retrain", is_flag=True, help="Train and export a new version even when one exists.")
@click.option(
    "--version",
    "version",
    type=version_type(1),
    default=None,
    help="Serve this version (with every label) instead of the deployed/newest one; not to switch a running server.",
)
@model_option
@json_option
def up(
    manifest_path: str,
    runtime: str | None,
    image: str | None,
    retrain: bool,
    version: int | None,
    model_name: str | None,
    as_json: bool,
) -> None:
    """Train if needed, start or reuse the server, wait until healthy, smoke-test, summarize."""
    from deployer import console, orchestrate

    manifest = _load(manifest_path)

    def progress(line: str) -> None:
        # Progress lines carry paths and server messages: never let rich read them as markup.
        console.info(escape(line))

    if model_name is not None and version is None:
        raise UsageError("--model with up only picks the model --version applies to", hint="add --version N")
    report = orchestrate.up(
        manifest,
        runtime_choice=runtime,
        image=image,
        retrain=retrain,
        version=version,
        model_name=model_name,
        progress=progress,
    )
    steps = next_steps(report, manifest, manifest_path)
    if as_json:
        console.emit_json({**report.to_json(), "next": steps})
    else:
        _print_up(report, steps)
    if not report.smoke_passed:
        raise _smoke_failed(report.smoke)


@click.command(epilog=examples("smoke"))
@manifest_option
@model_option
@click.option("--label", default=None, help="Smoke the version behind this label (default: the model's first label).")
@click.option(
    "--version", "version", type=version_type(1), default=None, help="Smoke this version (it must be loaded)."
)
@click.option("--rest", is_flag=True, help="Send the cases through the REST API instead of gRPC.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None, help="Write a JUnit XML report.")
@click.option(
    "--timeout",
    type=FiniteFloatRange(0.0, MAX_REQUEST_TIMEOUT_S, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds per request.",
)
@target_option
@rest_url_option
@click.option(
    "--replica",
    type=BoundedInt(1, MAX_REPLICAS),
    default=None,
    help="Only this replica (1-based, as `status` lists them); default: every replica.",
)
@json_option
def smoke(
    manifest_path: str,
    model_name: str | None,
    label: str | None,
    version: int | None,
    rest: bool,
    junit_path: str | None,
    timeout: float,
    target: str | None,
    rest_url: str | None,
    replica: int | None,
    as_json: bool,
) -> None:
    """Send the manifest's smoke cases to every replica of the running server and check the answers (exit 5
    on a mismatch).

    --target HOST:PORT smokes any TF Serving with the manifest's cases. A label the server does not
    resolve, or a version it has not loaded, is a usage error (exit 2) naming what it has.
    """
    from deployer import console
    from deployer.commands import targets
    from deployer.fleet import Fleet, Member
    from deployer.orchestrate import connect_fleet
    from deployer.runtime.base import Endpoint
    from deployer.smoke import JUnitTarget, run_smoke, run_smoke_rest

    if label is not None and version is not None:
        raise UsageError("choose --label or --version, not both")
    manifest = _load(manifest_path)
    models = [manifest.model(model_name)] if model_name else list(manifest.models)
    models = [m for m in models if m.smoke]
    if not models:
        raise UsageError("the manifest has no smoke cases", hint="add models[].smoke entries")
    if target is not None and replica is not None:
        raise UsageError("--replica picks a replica of the manifest's own server; --target names one server")
    external = target is not None
    # Before any request: a report that cannot be written fails now, not after the run.
    junit = JUnitTarget.open(junit_path) if junit_path else None
    try:
        if target is None:
            _handle, fleet = connect_fleet(manifest)
            if rest_url is not None and len(fleet) == 1:
                only = fleet.first
                fleet = Fleet(
                    [Member(Endpoint(only.endpoint.grpc_target, rest_url, only.endpoint.replica), only.client)]
                )
        else:
            connection = targets.connect(manifest, target, rest_url)
            fleet = Fleet([Member(Endpoint(connection.grpc_target, connection.rest_url), connection.client)])
    except BaseException:
        if junit is not None:
            junit.discard()
        raise
    reports = []
    try:
        members = fleet.members
        if replica is not None:
            members = [m for m in fleet if m.slot == replica]
            if not members:
                slots = ", ".join(str(m.slot) for m in fleet)
                raise UsageError(f"--replica {replica}: the server has no such replica", hint=f"replicas: {slots}")
        for model in models:
            # Only what the user typed is checked up front: a default label that does not resolve is a
            # deployment problem, reported by the cases themselves.
            targets.check_selector(manifest, model, members[0].client, label=label, version=version)
            chosen = label if label is not None or version is not None else model.primary_label
            for member in members:
                if rest:
                    if member.endpoint.rest_url is None:
                        hint = "add --rest-url http://HOST:PORT" if external else "drop --rest"
                        raise UsageError("no REST endpoint to send the cases to", hint=hint)
                    reports.append(
                        run_smoke_rest(member.endpoint.rest_url, model, version=version, label=chosen, timeout=timeout)
                    )
                else:
                    reports.append(run_smoke(member.client, model, version=version, label=chosen, timeout=timeout))
    except BaseException:
        if junit is not None:
            junit.discard()
        raise
    finally:
        fleet.close()
    if junit is not None:
        junit.write(reports)
    if as_json:
        console.emit_json({"passed": all(r.passed for r in reports), "reports": [r.to_json() for r in reports]})
    else:
        several = len({r.target for r in reports}) > 1
        for report in reports:
            console.out.print(_smoke_line(report, on_target=several), highlight=False)
            _print_failures(report)
    if not all(r.passed for r in reports):
        raise _smoke_failed(reports)


@click.command(epilog=examples("status"))
@manifest_option
@model_option
@target_option
@rest_url_option
@json_option
def status(manifest_path: str, model_name: str | None, target: str | None, rest_url: str | None, as_json: bool) -> None:
    """Runtime state, endpoints, and each model's versions, states and labels.

    Exits 0 only when the server runs and answers for every model (or --model's): 4 otherwise, so
    `deployer status` works as a CI or monitoring check. --target HOST:PORT checks any TF Serving
    for the manifest's models and labels.
    """
    from dataclasses import replace

    from deployer import console, orchestrate
    from deployer.errors import NotHealthy

    manifest = _load(manifest_path)
    report = orchestrate.status(manifest) if target is None else orchestrate.target_status(manifest, target, rest_url)
    if model_name is not None:
        manifest.model(model_name)  # an unknown name exits 2, naming the models
        report = replace(
            report,
            models=[m for m in report.models if m.name == model_name],
            replicas=[replace(v, models=[m for m in v.models if m.name == model_name]) for v in report.replicas],
        )
    if as_json:
        console.emit_json(report.to_json())
    for warning in report.warnings:
        console.err.print(f"warning: {warning}", markup=False, highlight=False)
    if not as_json and report.handle is not None:
        handle = report.handle
        process = report.process
        state = "running" if report.running else f"not running ({process.detail if process else 'unknown'})"
        if target is not None:
            _plain(f"{report.project}: TF Serving at {target} (--target) {'answers' if report.running else state}")
        else:
            _plain(f"{report.project}: {handle.runtime} {handle.name} ({handle.ident[:12]}) {state}")
        if len(report.replicas) <= 1 and handle.replicas <= 1:
            _plain(f"endpoints: gRPC {handle.grpc_target}  REST {handle.rest_url or '-'}")
        if target is None:
            weakened = report.weakenings
            shown = "; ".join(f"WEAKENED {n}: {m}" for n, m in weakened.items()) if weakened else "default"
            _plain(f"hardening: {shown}")
        if len(report.replicas) <= 1 and handle.replicas <= 1:
            _print_models(report.models)
        else:
            _print_replicas(report.replicas)
    if not report.running and target is not None:
        raise NotHealthy(f"nothing answers gRPC at {target}", hint="check --target HOST:PORT (the gRPC port)")
    if not report.running:
        raise NotHealthy(f"no server is running for project {report.project}", hint=f"run `{_cli()} up`")
    unanswered = [m.name for m in report.models if m.error]
    if len(report.replicas) > 1:
        # Every replica takes traffic: one that does not answer (or is being replaced) is not healthy.
        unanswered = [
            f"{m.name} on replica {view.replica.slot}" for view in report.replicas for m in view.models if m.error
        ]
    if unanswered:
        raise NotHealthy(f"the server does not answer for {', '.join(unanswered)}", hint=f"see `{_cli()} logs`")


def _print_replicas(replicas: list[ReplicaView]) -> None:
    from deployer import console

    rows: list[list[Any]] = []
    for view in replicas:
        r = view.replica
        endpoint = f"{r.endpoint.grpc_target} / {r.endpoint.rest_url or '-'}" if r.endpoint else "-"
        state = r.state + (f" ({r.detail})" if r.detail and r.detail != r.state and not r.running else "")
        versions = "; ".join(
            f"{m.name}: " + (", ".join(f"{s.version} {s.state}" for s in m.versions) or (m.error or "-"))
            for m in view.models
        )
        labels = "; ".join(
            f"{m.name}: " + ", ".join(f"{k}→{v}" for k, v in sorted(m.labels.items())) for m in view.models
        )
        rows.append([r.slot, r.ident[:12], state, endpoint, versions, labels])
    console.table(None, ["replica", "task", "state", "gRPC / REST", "versions", "labels"], rows)


def _cli() -> str:
    from deployer import console

    return console.prog()


@click.command(epilog=examples("logs"))
@manifest_option
@model_option
@click.option("--tail", type=BoundedInt(1, 1_000_000), default=100, show_default=True, help="Lines from the end.")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep printing new lines while the server runs (Ctrl-C stops). Not -f: -f is always the manifest.",
)
@click.option("--raw", is_flag=True, help="Include TensorFlow's start-up chatter (CUDA, oneDNN, CPU-feature lines).")
@json_option
def logs(manifest_path: str, model_name: str | None, tail: int, follow: bool, raw: bool, as_json: bool) -> None:
    """The model server's log (its last lines), also after it stopped or failed to start.

    When no server runs, the log the last one left is shown (after a failed `up`, or `down`), with a
    note on stderr saying which server it was. --model keeps the lines that mention that model.
    """
    import json
    import sys

    from deployer import console, orchestrate

    manifest = _load(manifest_path)
    if model_name is not None:
        manifest.model(model_name)  # an unknown name exits 2, naming the models
    if not follow:
        report = orchestrate.logs(manifest, tail, raw=raw, model=model_name)
        if as_json:
            console.emit_json(report.to_json())
            return
        if report.note:
            console.err.print(f"({report.note})", markup=False, highlight=False)
        sys.stdout.write("".join(f"{line}\n" for line in report.lines))
        return
    report, lines = orchestrate.follow_logs(manifest, tail, raw=raw, model=model_name)
    if report.note and not as_json:
        console.err.print(f"({report.note}; nothing to follow)", markup=False, highlight=False)
    try:
        for line in lines:
            sys.stdout.write(json.dumps({"line": line}) + "\n" if as_json else f"{line}\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        # Ctrl-C is how one stops following, as with `tail -f` or `kubectl logs -f`: not an error.
        return


@click.command(epilog=examples("down"))
@manifest_option
@model_option
@json_option
def down(manifest_path: str, model_name: str | None, as_json: bool) -> None:
    """Stop and remove the server this manifest started (exported models and config are kept).

    One server serves all of the manifest's models, so --model only stops it when that model is the
    only one; otherwise it exits 2 instead of stopping the others' server too.
    """
    from deployer import console, orchestrate

    manifest = _load(manifest_path)
    if model_name is not None:
        manifest.model(model_name)  # an unknown name exits 2, naming the models
        others = [m.name for m in manifest.models if m.name != model_name]
        if others:
            raise UsageError(
                f"the server also serves {', '.join(others)}: stopping it for {model_name} would stop them too",
                hint=f"run `{_cli()} down` without --model to stop it for every model",
            )
    report = orchestrate.down(manifest)
    for warning in report.warnings:
        console.err.print(f"warning: {warning}", markup=False, highlight=False)
    if as_json:
        console.emit_json(report.to_json())
    elif report.stopped:
        for handle in report.stopped:
            _plain(f"stopped {handle.runtime} server {handle.name} ({handle.ident[:12]})")
    else:
        _plain(f"{report.project}: nothing was running")


COMMANDS = [up, smoke, status, logs, down]
