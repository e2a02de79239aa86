"""The library core of ``deployer up``/``status``/``down``: versions → config → server → health → smoke.

The models.config in the state directory is the deployment's truth: ``up`` keeps its versions and
labels (so promotions survive ``up`` and restarts) and the server re-reads it at every start. Nothing
here prints; progress goes through a callback and results come back as reports.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer import store, tf_noise
from deployer.client import ServingClient, VersionStatus
from deployer.errors import DeployerError, NotHealthy, RuntimeUnavailable, ServerRequestError, StoreError, UsageError
from deployer.fleet import Fleet
from deployer.health import HealthReport, divergence, exit_message, safe_tail, wait_fleet_healthy
from deployer.manifest import WEAKENINGS, Manifest, ModelSpec
from deployer.runtime.base import Endpoint, LaunchSpec, Layout, ProcessState, Replica, Runtime, ServerHandle
from deployer.runtime.local import LocalRuntime, binds_every_interface, server_command
from deployer.server_config import MODELS_CONFIG, ServedModel, parse_models_config, render_files, server_flags
from deployer.smoke import SmokeReport, run_smoke
from deployer.state import CorruptHandle, StateDir, StateLockBusy

if TYPE_CHECKING:
    from deployer.export import ExportResult

Progress = Callable[[str], None]
LOG_TAIL_LINES = 50
# What is kept of a container's log when it is removed (its only copy is in the daemon).
KEEP_LOG_LINES = 10_000


def _quiet(_: str) -> None:
    pass


# ---- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelView:
    """One served model: its versions with their states (when the server answered) and its labels."""

    name: str
    base_path: str  # on the host
    versions: list[VersionStatus]
    labels: dict[str, int]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_path": self.base_path,
            "versions": [
                {"version": s.version, "state": s.state, "error_code": s.error_code, "error": s.error_message or None}
                for s in self.versions
            ],
            "labels": dict(sorted(self.labels.items())),
            "error": self.error,
        }


def _handle_json(handle: ServerHandle | None) -> dict[str, Any] | None:
    if handle is None:
        return None
    return {
        "runtime": handle.runtime,
        "id": handle.ident,
        "name": handle.name,
        "grpc": handle.grpc_target,
        "rest": handle.rest_url,
        "image": handle.image,
        "spec_hash": handle.spec_hash,
        "started_at": handle.started_at,
        "project": handle.project or None,
        "weakenings": list(handle.weakenings),
        "replicas": handle.replicas,
        "endpoints": [e.to_json() for e in handle.fleet],
    }


@dataclass(frozen=True)
class UpReport:
    project: str
    runtime: str
    runtime_reason: str
    action: str  # "started" | "reused" | "repaired" | "recreated"
    action_reason: str
    handle: ServerHandle
    models: list[ModelView]
    exported: list[ExportResult]
    smoke: list[SmokeReport]
    health: HealthReport
    timings: dict[str, float]  # seconds per phase: runtime, train, export, start, healthy, smoke, total
    weakenings: dict[str, str] = field(default_factory=dict)  # name -> what it means, for this runtime

    @property
    def smoke_passed(self) -> bool:
        return all(report.passed for report in self.smoke)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "runtime": self.runtime,
            "runtime_reason": self.runtime_reason,
            "action": self.action,
            "action_reason": self.action_reason,
            "server": _handle_json(self.handle),
            "models": [m.to_json() for m in self.models],
            "exported": [e.to_json() for e in self.exported],
            "smoke": {"passed": self.smoke_passed, "reports": [r.to_json() for r in self.smoke]},
            "health": {"elapsed_s": round(self.health.elapsed_s, 3), "checks": self.health.checks},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "weakenings": dict(self.weakenings),
        }


@dataclass(frozen=True)
class ReplicaView:
    """One replica in `status`: what the runtime says of it and what it serves."""

    replica: Replica
    models: list[ModelView]

    def to_json(self) -> dict[str, Any]:
        r = self.replica
        return {
            "slot": r.slot,
            "id": r.ident,
            "state": r.state,
            "detail": r.detail or None,
            "grpc": r.endpoint.grpc_target if r.endpoint else None,
            "rest": r.endpoint.rest_url if r.endpoint else None,
            "models": [m.to_json() for m in self.models],
        }


@dataclass(frozen=True)
class StatusReport:
    project: str
    state_dir: str
    running: bool
    handle: ServerHandle | None
    process: ProcessState | None
    models: list[ModelView] = field(default_factory=list)
    replicas: list[ReplicaView] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def weakenings(self) -> dict[str, str]:
        """The hardening the running server was started without (recorded in its handle)."""
        if self.handle is None:
            return {}
        return {name: WEAKENINGS.get(name, name) for name in self.handle.weakenings}

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "state_dir": self.state_dir,
            "running": self.running,
            "replicas": [r.to_json() for r in self.replicas],
            "runtime": self.handle.runtime if self.handle else None,
            "server": _handle_json(self.handle),
            "process": None
            if self.process is None
            else {"running": self.process.running, "exit_code": self.process.exit_code, "detail": self.process.detail},
            "models": [m.to_json() for m in self.models],
            "weakenings": self.weakenings,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class DownReport:
    project: str
    stopped: list[ServerHandle]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "stopped": [_handle_json(h) for h in self.stopped],
            "warnings": list(self.warnings),
        }


# ---- runtimes -----------------------------------------------------------------------------------


def _docker(progress: Progress | None) -> Runtime:
    # Imported here: docker-py is heavy and only the docker runtime needs it.
    from deployer.runtime import docker as docker_runtime

    return docker_runtime.connect(progress)


def _swarm(progress: Progress | None) -> Runtime:
    from deployer.runtime import swarm as swarm_runtime

    return swarm_runtime.connect(progress)


def _local(manifest: Manifest) -> LocalRuntime:
    return LocalRuntime(state_dir=manifest.state_path)


def choose_runtime(
    manifest: Manifest, choice: str | None = None, *, image: str | None = None, progress: Progress | None = None
) -> tuple[Runtime, str]:
    """The runtime to use and why. ``auto``: docker when an engine answers and the image is present or
    can be pulled, local otherwise."""
    picked = choice or manifest.server.runtime
    origin = "--runtime" if choice else "server.runtime in the manifest"
    if picked == "local":
        return _local(manifest), f"{origin} says local"
    if picked == "docker":
        return _docker(progress), f"{origin} says docker"
    if picked == "swarm":
        return _swarm(progress), f"{origin} says swarm"
    if picked != "auto":
        raise UsageError(f"unknown runtime {picked!r}", hint="choose docker, swarm, local or auto")
    wanted_image = image or manifest.server.image
    try:
        runtime = _docker(progress)
    except RuntimeUnavailable as exc:
        return _local(manifest), f"auto: no Docker engine answers ({exc.message})"
    ensure = getattr(runtime, "ensure_image", None)
    if ensure is None:
        return runtime, "auto: a Docker engine answers"
    try:
        ensure(wanted_image)
    except RuntimeUnavailable as exc:
        return _local(manifest), f"auto: Docker answers but {exc.message}"
    return runtime, f"auto: a Docker engine answers and image {wanted_image} is present"


def _image_present(runtime: Runtime, image: str) -> bool:
    labels = getattr(runtime, "image_labels", None)
    return labels is None or labels(image) is not None


def keep_or_choose_runtime(
    manifest: Manifest,
    state: StateDir,
    choice: str | None = None,
    *,
    image: str | None = None,
    progress: Progress | None = None,
) -> tuple[Runtime, str, str | None]:
    """(runtime, why, image to use or None for the manifest's). ``auto`` keeps what runs, then what
    the last `up` used (as compose keeps a project's containers), and decides afresh only when
    neither is usable; an explicit --runtime or server.runtime always wins."""
    if (choice or manifest.server.runtime) != "auto":
        runtime, why = choose_runtime(manifest, choice, image=image, progress=progress)
        return runtime, why, image
    handle = state.load_handle()
    if handle is not None:
        with suppress(RuntimeUnavailable):
            runtime = runtime_named(handle.runtime, manifest, progress)
            if runtime.state(handle).running:
                kept = image or handle.image
                on = f" (image {handle.image})" if handle.image else ""
                return runtime, f"auto: keeping the running {handle.runtime} server {handle.name}{on}", kept
    record = state.load_deployment()
    if record is not None and record.get("runtime") in ("docker", "local"):
        last_image = image or record.get("image")
        with suppress(RuntimeUnavailable):
            runtime = runtime_named(str(record["runtime"]), manifest, progress)
            # Never pull here: a remembered image that is gone is a fresh decision, said so below.
            if runtime.name == "local" or (last_image and _image_present(runtime, str(last_image))):
                on = f" with image {last_image}" if runtime.name == "docker" else ""
                return runtime, f"auto: the last `up` ran on {runtime.name}{on}", last_image
    runtime, why = choose_runtime(manifest, choice, image=image, progress=progress)
    return runtime, why, image


def runtime_named(name: str, manifest: Manifest, progress: Progress | None = None) -> Runtime:
    """The runtime that started a recorded handle."""
    if name == "local":
        return _local(manifest)
    if name == "docker":
        return _docker(progress)
    if name == "swarm":
        return _swarm(progress)
    raise DeployerError(f"the state directory names an unknown runtime {name!r}", hint="run `deployer down`")


def retire(runtime: Runtime, handle: ServerHandle, state: StateDir, ended: str) -> None:
    """Stop and remove a server, keeping its log and why it ended, so `deployer logs` still shows
    what happened (a container's log goes with the container; a local server's stays in server.log)."""
    log_text = None
    if not isinstance(runtime, LocalRuntime):
        with suppress(DeployerError):
            log_text = runtime.logs(handle, KEEP_LOG_LINES)
    try:
        runtime.stop(handle)
    finally:
        with suppress(OSError, DeployerError):
            state.record_last_server(handle, ended, log_text)


def spec_hash(manifest: Manifest, runtime: str, image: str | None) -> str:
    """What decides whether a running server can be kept: the manifest's server shape, runtime and image."""
    doc = f"{manifest.spec_hash()}|{runtime}|{image or ''}"
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def spec_parts(manifest: Manifest, runtime: str, image: str | None) -> dict[str, Any]:
    """What spec_hash digests, readable: compared field by field to say what changed on a recreate."""
    server = manifest.server.model_dump(mode="json")
    server.pop("runtime", None)  # the runtime actually used is recorded instead of the manifest's wish
    server.pop("image", None)
    return {
        "runtime": runtime,
        "image": image,
        "server": server,
        "models": {m.name: str(manifest.base_path(m)) for m in manifest.models},
    }


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        flat: dict[str, Any] = {}
        for key, value in doc.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: doc}


def describe_changes(before: dict[str, Any], after: dict[str, Any], *, limit: int = 4) -> str:
    """``"server.grpc_port: 8500 → 0; image: a → b"``: what differs between two spec_parts."""
    old, new = _flatten(before), _flatten(after)
    changes = [
        f"{key}: {old.get(key, '-')} → {new.get(key, '-')}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    more = f" (and {len(changes) - limit} more)" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


def _served_changes(old_text: str | None, files: dict[str, str], state: StateDir) -> str:
    """What differs between the served config on disk and the one to serve, per model and file."""
    old = {m.name: m for m in parse_models_config(old_text)} if old_text else {}
    new = {m.name: m for m in parse_models_config(files.get(MODELS_CONFIG, ""))}
    parts = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            parts.append(f"model {name} {'added' if a is None else 'removed'}")
            continue
        if a.versions != b.versions:
            parts.append(f"{name} versions {list(a.versions)} → {list(b.versions)}")
        if a.labels != b.labels:
            parts.append(f"{name} labels {dict(sorted(a.labels.items()))} → {dict(sorted(b.labels.items()))}")
        if a.base_path != b.base_path:
            parts.append(f"{name} base path {a.base_path} → {b.base_path}")
    for file_name, text in sorted(files.items()):
        if file_name != MODELS_CONFIG and not _config_files_current(state, {file_name: text}):
            parts.append(f"{file_name} changed")
    return "; ".join(parts) or "the served config files changed"


# ---- desired state ----------------------------------------------------------------------------


def desired_models(
    manifest: Manifest,
    state: StateDir,
    layout: Layout,
    *,
    pin: dict[str, int] | None = None,
    say: Progress = _quiet,
) -> list[ServedModel]:
    """What the server should serve. ``pin`` (``up --version``) serves exactly that version with
    every manifest label on it. Otherwise an existing models.config (earlier up/promote) wins, minus
    versions no longer on disk; the first time, the newest *complete* version with every label
    (a broken newest directory is skipped, and said so)."""
    from deployer import served as served_versions

    text = state.read_models_config()
    previous = {m.name: m for m in parse_models_config(text)} if text else {}
    served = []
    for model in manifest.models:
        base = manifest.base_path(model)
        on_disk = set(store.list_versions(base))
        before = previous.get(model.name)
        versions = sorted(v for v in before.versions if v in on_disk) if before else []
        labels = {k: v for k, v in before.labels.items() if v in versions} if before else {}
        if pin and model.name in pin:
            versions, labels = [pin[model.name]], {}
        elif not versions:
            if not on_disk:
                raise StoreError(f"model {model.name} has no version under {base}", hint=missing_version_hint(model))
            newest = max(on_disk)
            for candidate in sorted(on_disk, reverse=True):
                trouble = served_versions.problem(base / str(candidate), model)
                if trouble is None:
                    newest = candidate
                    break
                say(f"{model.name}: skipping version {candidate} ({trouble})")
            versions, labels = [newest], {}
        for label in model.labels:
            # A manifest label whose version vanished lands on the newest served version rather than nowhere.
            labels.setdefault(label, versions[-1])
        served.append(
            ServedModel(
                name=model.name, base_path=layout.model_paths[model.name], versions=tuple(versions), labels=labels
            )
        )
    return served


def _pinned(manifest: Manifest, version: int | None, model_name: str | None) -> dict[str, int] | None:
    """``up --version N [--model M]``: N checked on disk first (missing or unusable → exit 2)."""
    from deployer import served as served_versions

    if version is None:
        return None
    model = manifest.model(model_name)
    path = store.version_dir(manifest.base_path(model), version)
    trouble = served_versions.problem(path, model)
    if trouble is not None:
        raise UsageError(
            f"version {version} of {model.name} cannot be served: {trouble}", hint="choose another --version"
        )
    return {model.name: version}


def _layout(manifest: Manifest, runtime: Runtime, state: StateDir) -> Layout:
    return runtime.layout({m.name: manifest.base_path(m) for m in manifest.models}, state.config_dir)


def _config_files_current(state: StateDir, files: dict[str, str]) -> bool:
    for name, text in files.items():
        try:
            if (state.config_dir / name).read_text(encoding="utf-8") != text:
                return False
        except FileNotFoundError:
            return False
    return True


@contextmanager
def _state_lock(state: StateDir, manifest: Manifest) -> Iterator[None]:
    """Serialize with promotions: both rewrite models.config, and up must not read a half-finished swap."""
    try:
        with state.operation_lock(
            "deployer up", timeout=manifest.server.reload_deadline_seconds + manifest.server.health_deadline_seconds
        ):
            yield
    except StateLockBusy as exc:
        raise UsageError(exc.message, hint="retry when it has finished") from None


# ---- up -----------------------------------------------------------------------------------------


def _ensure_versions(manifest: Manifest, retrain: bool, say: Progress, timings: dict[str, float]) -> list[ExportResult]:
    """Give every model a version, each from its source: train (none yet, or --retrain), import its
    saved_model (its content is not a version yet), or nothing (another pipeline fills base_path)."""
    exported = []
    for model in manifest.models:
        base = manifest.base_path(model)
        if model.source == "saved_model":
            exported.extend(_import_source(manifest, model, say, timings))
            continue
        if model.source == "external":
            if not store.list_versions(base):
                raise StoreError(f"model {model.name} has no version under {base}", hint=missing_version_hint(model))
            continue
        latest = store.latest_version(base)
        if latest is not None and not retrain:
            continue
        why = "--retrain" if retrain else f"no version under {base}"
        say(f"training {model.name} ({why})")
        # Imported here: export pulls in TensorFlow, which only this step needs.
        from deployer.export import train_and_export

        def report(line: str, name: str = model.name) -> None:
            say(f"  {name}: {line}")

        result = train_and_export(manifest, model, progress=report)
        timings["train"] = timings.get("train", 0.0) + result.seconds_train
        timings["export"] = timings.get("export", 0.0) + result.seconds_export
        say(f"exported {model.name} version {result.version} to {result.path}")
        exported.append(result)
    return exported


def _import_source(
    manifest: Manifest, model: ModelSpec, say: Progress, timings: dict[str, float]
) -> list[ExportResult]:
    """Import the model's saved_model when its content is not already one of the versions."""
    from deployer import importer
    from deployer.export import ExportResult

    source = importer.saved_model_source(manifest, model)
    base = manifest.base_path(model)
    started = time.perf_counter()
    try:
        known = importer.find_imported(base, importer.tree_sha256(source))
    except FileNotFoundError:
        known = None  # a missing source is reported by the import below, with its reason
    if known is not None:
        timings["import"] = timings.get("import", 0.0) + time.perf_counter() - started
        return []
    say(f"importing {model.name} from {source} (its content is not a version yet)")
    result = importer.import_saved_model(manifest, model, source, progress=say)
    timings["import"] = timings.get("import", 0.0) + time.perf_counter() - started
    say(f"imported {model.name} version {result.version} to {result.path}")
    return [ExportResult(model.name, result.version, result.path, {}, 0.0, result.seconds)]


def missing_version_hint(model: ModelSpec) -> str:
    """What gives ``model`` its first version, by source."""
    if model.source == "trainer":
        return "run `deployer up` (it trains one) or `deployer train`"
    if model.source == "saved_model":
        return "run `deployer up` or `deployer import` (they import models[].saved_model)"
    return (
        "this model's versions come from another pipeline (e.g. TFX Pusher): publish a numeric version"
        " directory there, or give the model a trainer or saved_model"
    )


def weakenings_in_effect(manifest: Manifest, runtime: Runtime) -> dict[str, str]:
    """The hardening this deployment goes without on ``runtime``: name -> what it means and why."""
    found = manifest.server.weakenings_in_effect()
    if runtime.name == "local":
        # No container: its settings do not apply. The real tensorflow_model_server binds 0.0.0.0 whatever
        # server.host says (it has no bind-address flag), so on this runtime it always listens beyond loopback.
        found = {k: v for k, v in found.items() if k == "listen_beyond_loopback"}
        command = getattr(runtime, "_command", None) or server_command()
        if binds_every_interface(command):
            found["listen_beyond_loopback"] = "tensorflow_model_server binds 0.0.0.0 (it has no bind-address flag)"
    elif runtime.name == "swarm":
        # Swarm has no host-IP option for published ports: every task's host-mode ports bind on all the
        # node's interfaces, whatever server.host says (README: Scaling out, security notes).
        found["listen_beyond_loopback"] = "swarm host-mode ports bind on every interface of the node"
    return {name: f"{WEAKENINGS[name]} ({where})" for name, where in found.items()}


def _load_owned_handle(manifest: Manifest, state: StateDir, warn: Progress) -> ServerHandle | None:
    """The recorded handle when it is usable and describes this manifest's server; else None (said why).

    A corrupt or foreign server.json is never a dead end: callers fall back to finding the server by
    its pid file or container labels, which check ownership themselves.
    """
    try:
        handle = state.load_handle()
    except CorruptHandle as exc:
        warn(f"ignoring {state.handle_file}: {exc.message}")
        return None
    if handle is None:
        return None
    if not handle.claims(manifest.project, state.root):
        warn(
            f"ignoring {state.handle_file}: it records project {handle.project!r}'s server"
            f" ({handle.state_dir or 'another state directory'}), not {manifest.project!r}'s"
        )
        return None
    if not handle.project and handle.runtime == "docker" and handle.name != f"deployer-{manifest.project}":
        # A handle from before ownership was recorded: its container name still says whose it is.
        warn(f"ignoring {state.handle_file}: it records container {handle.name}, not this project's")
        return None
    if handle.runtime == "local" and not _local(manifest).recognises(handle):
        warn(f"ignoring {state.handle_file}: pid {handle.ident} is not this state directory's server")
        return None
    return handle


def _refuse_switching_a_running_server(
    manifest: Manifest, state: StateDir, runtime: Runtime, pin: dict[str, int]
) -> None:
    """`up --version` starts or repairs a deployment; a live label moves only through `promote`."""
    handle = _load_owned_handle(manifest, state, _quiet)
    if handle is None or handle.runtime != runtime.name or not runtime.state(handle).running:
        return
    text = state.read_models_config()
    current = {m.name: m for m in parse_models_config(text)} if text else {}
    for name, version in pin.items():
        entry = current.get(name)
        label = manifest.model(name).primary_label
        if entry is not None and entry.labels.get(label) != version:
            raise UsageError(
                f"a server is running with {name} {label} → {entry.labels.get(label)}; "
                f"`up --version {version}` would switch it without checks",
                hint=f"`deployer promote {version} -f {manifest.source or 'MANIFEST'}` loads, checks and switches it",
            )


def _existing(
    manifest: Manifest, state: StateDir, runtime: Runtime, say: Progress
) -> tuple[ServerHandle | None, str | None]:
    """The running server of this manifest, if any, and what was replaced to get here. A server of the
    other runtime is stopped (both would want the same ports and config) and reported, never hidden."""
    handle = _load_owned_handle(manifest, state, say)
    replaced = None
    if handle is not None and handle.runtime != runtime.name:
        try:
            other = runtime_named(handle.runtime, manifest)
            if other.state(handle).running:
                replaced = f"runtime: {handle.runtime} → {runtime.name} ({handle.runtime} server {handle.name} stopped)"
                say(f"stopping the {handle.runtime} server {handle.name}: switching to {runtime.name}")
            retire(other, handle, state, f"replaced by a {runtime.name} server")
        except RuntimeUnavailable:
            pass  # its runtime is gone, and the server with it
        state.clear_handle()
        handle = None
    if handle is not None and runtime.state(handle).running:
        return handle, replaced
    found = runtime.find(manifest.project, state.root)
    if found is not None:
        state.save_handle(found)
    else:
        state.clear_handle()
    return found, replaced


def up(
    manifest: Manifest,
    *,
    runtime_choice: str | None = None,
    image: str | None = None,
    retrain: bool = False,
    version: int | None = None,
    model_name: str | None = None,
    progress: Progress | None = None,
) -> UpReport:
    """Make the manifest's deployment run and prove it: versions, config, server, health, smoke.

    ``version`` (with ``model_name`` when the manifest has several) serves that version with every
    label on it; a running server is never switched this way (that is `promote`, with its checks)."""
    say = progress or _quiet
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    state = StateDir(manifest.state_path, manifest.project)
    state.ensure()
    pin = _pinned(manifest, version, model_name)

    runtime, runtime_reason, image = keep_or_choose_runtime(manifest, state, runtime_choice, image=image, progress=say)
    timings["runtime"] = time.perf_counter() - t0
    say(f"runtime: {runtime.name} ({runtime_reason})")
    weakenings = weakenings_in_effect(manifest, runtime)
    for name, meaning in weakenings.items():
        say(f"warning: hardening weakened ({name}): {meaning}")
    replicas = manifest.replicas_for(runtime.name)
    if manifest.server.replicas not in (None, 1) and replicas == 1:
        raise UsageError(
            f"server.replicas: {manifest.server.replicas} needs the swarm runtime; the {runtime.name} runtime runs one"
            " server",
            hint="pass --runtime swarm (or set server.runtime: swarm), or drop server.replicas",
        )

    exported = _ensure_versions(manifest, retrain, say, timings)
    timings.setdefault("train", 0.0)
    timings.setdefault("export", 0.0)

    server_image = (image or manifest.server.image) if runtime.name in ("docker", "swarm") else None
    wanted_hash = spec_hash(manifest, runtime.name, server_image)
    wanted_parts = spec_parts(manifest, runtime.name, server_image)
    with _state_lock(state, manifest):
        layout = _layout(manifest, runtime, state)
        if pin:
            _refuse_switching_a_running_server(manifest, state, runtime, pin)
        served = desired_models(manifest, state, layout, pin=pin, say=say)
        files = render_files(manifest.server, served)
        config_current = _config_files_current(state, files)
        old_config = state.read_models_config()
        record = state.load_deployment()

        t_start = time.perf_counter()
        handle, replaced = _existing(manifest, state, runtime, say)
        action, action_reason = "started", "no server was running"
        if replaced is not None:
            action, action_reason = "recreated", replaced
        if handle is not None:
            if handle.spec_hash == wanted_hash and config_current:
                action, action_reason = "reused", "the spec and the served config are unchanged"
            else:
                action = "recreated"
                if handle.spec_hash != wanted_hash:
                    before = record.get("spec") if record and record.get("spec_hash") == handle.spec_hash else None
                    changed = describe_changes(before, wanted_parts) if isinstance(before, dict) else ""
                    action_reason = f"the spec changed: {changed}" if changed else (
                        "the spec changed (the previous one was not recorded)"
                    )
                else:
                    action_reason = f"the served config changed: {_served_changes(old_config, files, state)}"
                say(f"recreating the server: {action_reason}")
                retire(runtime, handle, state, f"recreated: {action_reason}")
                state.clear_handle()
                handle = None
        state.write_config_files(files)
        wanted = {m.name: m.versions for m in served}
        labels = {m.name: dict(m.labels) for m in served}
        if handle is not None:
            repaired = _repair_divergence(manifest, state, runtime, handle, files, wanted, labels, say)
            handle, action, action_reason = repaired

        started_here = False
        if handle is None:
            spec = LaunchSpec(
                project=manifest.project,
                spec_hash=wanted_hash,
                image=server_image or "",
                host=manifest.server.host,
                grpc_port=manifest.server.grpc_port,
                rest_port=manifest.server.rest_port,
                args=tuple(server_flags(manifest.server, layout.config_dir)),
                layout=layout,
                state_dir=state.root,
                container=manifest.server.container,
                weakenings=tuple(weakenings),
                replicas=replicas,
                health_deadline_s=manifest.server.health_deadline_seconds,
            )
            say(f"starting the {runtime.name} server" + (f" ({replicas} replicas)" if replicas > 1 else ""))
            if runtime.name == "swarm":
                # Say it where it happens: the manifest's host and ports do not apply to host-mode publishing.
                say(
                    "swarm: each task publishes its own ephemeral host ports on every interface of its node"
                    " (server.host/grpc_port/rest_port do not apply); see the README's security notes"
                )
            try:
                handle = runtime.start(spec)
            except NotHealthy as exc:
                # It died before it had a handle (e.g. a container that exited at once): keep its log.
                name = f"{manifest.project} server"
                never = ServerHandle(runtime.name, "", name, "", None, wanted_hash, server_image)
                with suppress(OSError):
                    state.record_last_server(never, f"failed to start: {exc.message}", exc.details or "")
                if exc.hint is None:
                    exc.hint = f"`deployer logs -f {manifest.source or 'MANIFEST'}` shows the server log"
                raise
            state.save_handle(handle)
            state.save_deployment(
                {"runtime": runtime.name, "image": server_image, "spec_hash": wanted_hash, "spec": wanted_parts}
            )
            started_here = True
        timings["start"] = time.perf_counter() - t_start

        t_health = time.perf_counter()
        deadline = manifest.server.health_deadline_seconds
        watch = FleetWatch(runtime, handle)
        fleet: Fleet | None = None
        try:
            running = wait_endpoints(runtime, handle, deadline_s=deadline, server_state=watch, progress=say)
            if running != handle:
                state.save_handle(running)
            watch.handle = running
            fleet = Fleet.connect(running.fleet, client_factory=ServingClient)
            say(f"waiting for {_targets(running)} to serve {_describe(served)}")
            health = wait_fleet_healthy(
                fleet,
                wanted,
                labels,
                deadline_s=max(0.0, deadline - (time.perf_counter() - t_health)),
                server_state=watch,
                log_tail=lambda: tf_noise.strip(runtime.logs(handle, LOG_TAIL_LINES)),
                on_wait=say,
            )
        except BaseException as exc:
            if fleet is not None:
                fleet.close()
            if started_here:
                # Never leave a half-started server behind; its log stays readable through `deployer logs`.
                why = exc.message if isinstance(exc, DeployerError) else "interrupted while starting"
                with suppress(DeployerError):
                    retire(runtime, handle, state, f"failed to become healthy: {why}")
                state.clear_handle()
            if isinstance(exc, NotHealthy) and exc.hint is None:
                exc.hint = f"`deployer logs -f {manifest.source or 'MANIFEST'}` shows the server log"
            raise
        timings["healthy"] = time.perf_counter() - t_health

    t_smoke = time.perf_counter()
    try:
        reports = [
            run_smoke(member.client, model, label=model.primary_label)
            for model in manifest.models
            if model.smoke
            for member in fleet
        ]
    finally:
        fleet.close()
    timings["smoke"] = time.perf_counter() - t_smoke
    timings["total"] = time.perf_counter() - t0

    models = [
        ModelView(
            name=m.name,
            base_path=str(manifest.base_path(manifest.model(m.name))),
            versions=[s for s in health.models.get(m.name, []) if s.version in m.versions],
            labels=dict(m.labels),
        )
        for m in served
    ]
    return UpReport(
        project=manifest.project,
        runtime=runtime.name,
        runtime_reason=runtime_reason,
        action=action,
        action_reason=action_reason,
        handle=running,
        models=models,
        exported=exported,
        smoke=reports,
        health=health,
        timings=timings,
        weakenings=weakenings,
    )


def _targets(handle: ServerHandle) -> str:
    fleet = handle.fleet
    if len(fleet) == 1:
        return fleet[0].grpc_target
    return f"{len(fleet)} replicas ({', '.join(e.grpc_target for e in fleet)})"


class FleetWatch:
    """The fail-fast check while a server comes up: it exited, or one of its replicas was replaced.

    A replica replaced during the wait (a swarm task that died and was restarted) means the server
    cannot stay up: fail now with the log tail rather than flap until the deadline.
    """

    def __init__(self, runtime: Runtime, handle: ServerHandle) -> None:
        self.runtime, self.handle = runtime, handle
        self._first: dict[int, str] = {}

    def __call__(self) -> ProcessState:
        state = self.runtime.state(self.handle)
        if not state.running:
            return state
        for replica in self.runtime.replicas(self.handle):
            first = self._first.setdefault(replica.slot, replica.ident)
            if first != replica.ident:
                return ProcessState(
                    running=False,
                    detail=f"replica {replica.slot} was restarted during the wait"
                    f" ({first[:12]} → {replica.ident[:12]})",
                )
        return state


def wait_endpoints(
    runtime: Runtime,
    handle: ServerHandle,
    *,
    deadline_s: float,
    server_state: Callable[[], ProcessState],
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ServerHandle:
    """The handle once every replica publishes its endpoint (swarm: its task runs, i.e. its HEALTHCHECK
    passed, i.e. its ports opened after the initial models loaded). A single server has its endpoint
    from the start and returns at once."""
    started = clock()
    delay = 0.1
    said = ""
    while True:
        replicas = runtime.replicas(handle)
        endpoints = tuple(r.endpoint for r in replicas if r.endpoint is not None)
        if len(endpoints) >= handle.replicas and len(endpoints) == len(replicas):
            return handle.with_endpoints(endpoints) if handle.endpoints or len(endpoints) > 1 else handle
        state = server_state()
        if not state.running:
            raise NotHealthy(exit_message(state), details=safe_tail(lambda: runtime.logs(handle, LOG_TAIL_LINES)))
        summary = ", ".join(f"replica {r.slot} {r.state}" for r in replicas) or "no task yet"
        if summary != said:
            progress(f"replicas: {summary}")
            said = summary
        if clock() - started >= deadline_s:
            raise NotHealthy(
                f"not healthy after {deadline_s:g}s: {len(endpoints)} of {handle.replicas} replicas serve ({summary})",
                details=safe_tail(lambda: runtime.logs(handle, LOG_TAIL_LINES)),
                hint="raise server.health_deadline_seconds if the model is slow to load",
            )
        sleep(delay)
        delay = min(delay * 2, 1.0)


def _repair_divergence(
    manifest: Manifest,
    state: StateDir,
    runtime: Runtime,
    handle: ServerHandle,
    files: dict[str, str],
    wanted: dict[str, tuple[int, ...]],
    labels: dict[str, dict[str, int]],
    say: Progress,
) -> tuple[ServerHandle | None, str, str]:
    """A kept server must serve what models.config says. TF Serving reads that file only at start, so
    after an outside reload (anyone reaching the gRPC port can send one) it serves something else and
    the health wait would time out on a healthy-looking server. Reapply the file to every replica that
    diverged; if one refuses (e.g. a label cannot move to a version it unloaded), recreate the server,
    which reads the file afresh."""
    action, reason = "reused", "the spec and the served config are unchanged"
    fleet = Fleet.connect(handle.fleet, client_factory=ServingClient)
    try:
        drifts = [(member, drift) for member in fleet if (drift := divergence(member.client, wanted, labels))]
        if not drifts:
            return handle, action, reason
        described = "; ".join(f"{drift}{fleet.where(member)}" for member, drift in drifts)
        say(f"the running server does not serve {state.models_config} ({described}); reapplying it")
        try:
            for member, _drift in drifts:
                member.client.reload_config(files[MODELS_CONFIG], timeout=manifest.server.reload_deadline_seconds)
        except ServerRequestError as exc:
            say(f"the server refused the config ({exc.message}); recreating it")
            runtime.stop(handle)
            state.clear_handle()
            return None, "recreated", f"its live config had diverged ({described}) and reapplying it failed"
        return handle, "repaired", f"its live config had diverged from models.config ({described}); reapplied"
    finally:
        fleet.close()




def _describe(served: list[ServedModel]) -> str:
    return "; ".join(
        f"{m.name} v{','.join(map(str, m.versions))}"
        + (f" ({', '.join(f'{k}→{v}' for k, v in sorted(m.labels.items()))})" if m.labels else "")
        for m in served
    )


# ---- status / connect / down --------------------------------------------------------------------


def _hint_up(manifest: Manifest) -> str:
    return f"run `deployer up -f {manifest.source or 'MANIFEST'}`"


def _recorded(manifest: Manifest, state: StateDir, warn: Progress = _quiet) -> ServerHandle | None:
    handle = _load_owned_handle(manifest, state, warn)
    if handle is None:
        # A lost (or corrupt, or foreign) handle file must not orphan a local server: its pid file names it.
        handle = _local(manifest).find(manifest.project, state.root)
    return handle


def _model_views(
    manifest: Manifest, client: ServingClient | None, configured: dict[str, ServedModel]
) -> list[ModelView]:
    """Each manifest model as one server reports it: versions with states, and its labels as that
    server resolves them (a label that does not resolve is left out and named in ``error``)."""
    views = []
    for model in manifest.models:
        entry = configured.get(model.name)
        versions: list[VersionStatus] = []
        labels = dict(entry.labels) if entry else {}
        error = None
        if client is not None:
            try:
                versions = sorted(client.model_status(model.name, timeout=5.0), key=lambda s: s.version)
                resolved = {}
                for label in sorted(labels):
                    meta = client.metadata(model.name, label=label, timeout=5.0)
                    resolved[label] = int(meta.get("model_spec", {}).get("version", 0) or 0)
                labels = {k: v for k, v in resolved.items() if v}
                missing = sorted(set(resolved) - set(labels))
                if missing:
                    error = f"label(s) {', '.join(missing)} do not resolve"
            except ServerRequestError as exc:
                error = exc.message
        views.append(
            ModelView(
                name=model.name, base_path=str(manifest.base_path(model)), versions=versions, labels=labels, error=error
            )
        )
    return views


def status(manifest: Manifest) -> StatusReport:
    state = StateDir(manifest.state_path, manifest.project)
    warnings: list[str] = []
    handle = _recorded(manifest, state, warnings.append)
    if handle is None:
        return StatusReport(manifest.project, str(state.root), False, None, None, warnings=warnings)
    runtime = runtime_named(handle.runtime, manifest)
    process = runtime.state(handle)
    text = state.read_models_config()
    configured = {m.name: m for m in parse_models_config(text)} if text else {}
    replicas = runtime.replicas(handle) if process.running or handle.replicas > 1 else []
    live = tuple(r.endpoint for r in replicas if r.endpoint is not None)
    if live and handle.replicas > 1:
        handle = handle.with_endpoints(live)
    views: list[ReplicaView] = []
    for replica in replicas:
        if replica.endpoint is None:
            # Nothing to ask: no versions, no labels (the config's labels would pretend it serves them).
            idle = [
                ModelView(m.name, str(manifest.base_path(m)), [], {}, f"replica {replica.state}")
                for m in manifest.models
            ]
            views.append(ReplicaView(replica, idle))
            continue
        client = ServingClient(replica.endpoint.grpc_target)
        try:
            models = _model_views(manifest, client, configured)
        finally:
            client.close()
        views.append(ReplicaView(replica, models))
    models = views[0].models if views else _model_views(manifest, None, configured)
    return StatusReport(
        manifest.project, str(state.root), process.running, handle, process, models, replicas=views, warnings=warnings
    )


EXTERNAL = "external"  # the runtime name of a --target server: deployer neither started nor stops it


def target_status(
    manifest: Manifest, target: str, rest_url: str | None = None, *, probe_seconds: float = 5.0
) -> StatusReport:
    """The status of any TF Serving at ``target`` for the manifest's models: versions and states
    (GetModelStatus), and the manifest's labels (plus the deployed config's) as the server resolves them."""
    state = StateDir(manifest.state_path, manifest.project)
    handle = ServerHandle(EXTERNAL, "", target, target, rest_url, "")
    text = None
    with suppress(OSError, DeployerError):  # an unusable state directory only means no deployed labels
        text = state.read_models_config()
    configured = {m.name: m for m in parse_models_config(text)} if text else {}
    with ServingClient(target) as client:
        if not client.wait_until_reachable(probe_seconds):
            process = ProcessState(False, None, f"nothing answers gRPC at {target}")
            return StatusReport(manifest.project, str(state.root), False, handle, process, [])
        models = []
        for model in manifest.models:
            versions: list[VersionStatus] = []
            error = None
            try:
                versions = sorted(client.model_status(model.name, timeout=5.0), key=lambda s: s.version)
            except ServerRequestError as exc:
                error = exc.message
            labels: dict[str, int] = {}
            entry = configured.get(model.name)
            for label in sorted({*model.labels, *(entry.labels if entry else {})}):
                with suppress(ServerRequestError):
                    meta = client.metadata(model.name, label=label, timeout=5.0)
                    resolved = int(meta.get("model_spec", {}).get("version", 0) or 0)
                    if resolved:
                        labels[label] = resolved
            models.append(ModelView(model.name, str(manifest.base_path(model)), versions, labels, error))
    return StatusReport(manifest.project, str(state.root), True, handle, ProcessState(True, None, "answering"), models)


def _probe(endpoints: Sequence[Endpoint], probe_seconds: float) -> tuple[Fleet, list[Endpoint]]:
    """A fleet over ``endpoints`` and those of them whose port does not answer."""
    fleet = Fleet.connect(endpoints, client_factory=ServingClient)
    silent = [m.endpoint for m in fleet if not m.client.wait_until_reachable(probe_seconds)]
    return fleet, silent


def connect_fleet(manifest: Manifest, *, probe_seconds: float = 3.0) -> tuple[ServerHandle, Fleet]:
    """The running server of this manifest and a client per replica; NotHealthy when one does not answer.

    The runtime is consulted only when needed: a single server whose port answers needs no Docker SDK
    import or daemon call, which keeps `deployer smoke` fast and small. A swarm fleet always asks its
    runtime, because Swarm replaces dead tasks with new ones on new host ports.
    """
    state = StateDir(manifest.state_path, manifest.project)
    handle = _recorded(manifest, state)
    if handle is None:
        raise NotHealthy(f"no server is running for project {manifest.project}", hint=_hint_up(manifest))
    runtime: Runtime | None = None
    if handle.runtime == "swarm":
        runtime = runtime_named(handle.runtime, manifest)
        replicas = runtime.replicas(handle)
        live = tuple(r.endpoint for r in replicas if r.endpoint is not None)
        if live and live != handle.endpoints:
            handle = handle.with_endpoints(live)
            state.save_handle(handle)
        if len(live) < max(handle.replicas, len(replicas)) or not live:
            # Every replica takes traffic, so every replica is checked: one that does not serve is a failure.
            down = ", ".join(f"replica {r.slot} {r.state}" for r in replicas if r.endpoint is None) or "no task"
            raise NotHealthy(
                f"{len(live)} of {handle.replicas} replicas of the swarm server of project {manifest.project}"
                f" serve ({down})",
                hint="Swarm replaces failed tasks; retry in a moment, or see `deployer status` and `deployer logs`",
            )
    fleet, silent = _probe(handle.fleet, probe_seconds)
    if not silent:
        return handle, fleet
    fleet.close()
    runtime = runtime or runtime_named(handle.runtime, manifest)
    process = runtime.state(handle)
    if not process.running:
        code = "" if process.exit_code is None else f", exit code {process.exit_code}"
        raise NotHealthy(
            f"the {handle.runtime} server of project {manifest.project} is not running ({process.detail}{code})",
            hint=_hint_up(manifest),
        )
    where = ", ".join(e.grpc_target for e in silent)
    raise NotHealthy(
        f"the {handle.runtime} server of project {manifest.project} runs but {where} does not answer",
        hint=f"see `deployer logs -f {manifest.source or '<manifest>'}`",
    )


def connect(manifest: Manifest, *, probe_seconds: float = 3.0) -> tuple[ServerHandle, ServingClient]:
    """The running server of this manifest and a client for its first replica (see connect_fleet)."""
    handle, fleet = connect_fleet(manifest, probe_seconds=probe_seconds)
    for member in fleet.members[1:]:
        member.client.close()
    return handle, fleet.first.client


@dataclass(frozen=True)
class LogsReport:
    """A server's log: live from the running server, or what the last one left (``live`` False)."""

    project: str
    handle: ServerHandle | None
    running: bool
    live: bool
    lines: list[str]
    note: str | None = None  # where the lines come from, when it is not the running server

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "server": _handle_json(self.handle),
            "running": self.running,
            "source": "server" if self.live else "last-server",
            "note": self.note,
            "lines": self.lines,
        }


def _log_filter(raw: bool, model: str | None) -> Callable[[str], bool]:
    import re

    mentions = re.compile(rf"(?<![\w.-]){re.escape(model)}(?![\w-])") if model else None

    def keep(line: str) -> bool:
        if not raw and tf_noise.is_noise(line):
            return False
        return mentions is None or mentions.search(line) is not None

    return keep


def logs(manifest: Manifest, tail: int = 100, *, raw: bool = False, model: str | None = None) -> LogsReport:
    """The last ``tail`` log lines of this manifest's server, or of the last server when none runs
    (after a failed `up` or a `down`). TensorFlow's start-up chatter is left out unless ``raw``;
    ``model`` keeps only lines that mention it."""
    from deployer.runtime.local import _tail

    state = StateDir(manifest.state_path, manifest.project)
    keep = _log_filter(raw, model)
    # Read more than asked: filtered lines must not shorten the tail.
    window = KEEP_LOG_LINES if model else tail + 200
    handle = _recorded(manifest, state)
    if handle is not None:
        runtime = runtime_named(handle.runtime, manifest)
        running = runtime.state(handle).running
        text = runtime.logs(handle, window)
        if running or text.strip():
            lines = [line for line in text.splitlines() if keep(line)][-tail:]
            return LogsReport(manifest.project, handle, running, True, lines)
    last = state.last_server()
    if not state.log_file.is_file():
        raise NotHealthy(
            f"no server is recorded for project {manifest.project}, and none has left a log", hint=_hint_up(manifest)
        )
    lines = [line for line in _tail(state.log_file, window).splitlines() if keep(line)][-tail:]
    if last is not None:
        old, ended, at = last
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        note = (
            f"no server is running for {manifest.project}; this is the log of the last one"
            f" ({old.runtime} {old.name}, {ended}, {when})"
        )
    else:
        note = f"no server is running for {manifest.project}; this is the last server's log ({state.log_file})"
    return LogsReport(manifest.project, last[0] if last else None, False, False, lines, note)


def follow_logs(
    manifest: Manifest, tail: int = 100, *, raw: bool = False, model: str | None = None
) -> tuple[LogsReport, Iterator[str]]:
    """Like :func:`logs`, then the new lines as they come while the server runs. When none runs, the
    iterator yields the kept log and ends."""
    report = logs(manifest, tail, raw=raw, model=model)
    if not report.running or report.handle is None:
        return report, iter(report.lines)
    keep = _log_filter(raw, model)
    runtime = runtime_named(report.handle.runtime, manifest)
    stream = runtime.follow_logs(report.handle, tail if not model else KEEP_LOG_LINES)
    return report, (line for line in stream if keep(line))


def down(manifest: Manifest) -> DownReport:
    """Stop and remove what this manifest started (by handle, pid file or container label). Idempotent;
    exported models and the served config are left alone.

    Never a dead end: a corrupt, foreign or FIFO server.json is reported and removed, and the server is
    still found by its pid file or container labels. Nothing is stopped that does not prove to be this
    manifest's (see the runtimes' ownership checks).
    """
    state = StateDir(manifest.state_path, manifest.project)
    warnings: list[str] = []
    stopped: list[ServerHandle] = []
    handle: ServerHandle | None = None
    local = _local(manifest)
    exists = state.check()
    if exists:
        handle = _load_owned_handle(manifest, state, warnings.append)
        if handle is not None:
            try:
                runtime = runtime_named(handle.runtime, manifest)
                retire(runtime, handle, state, "stopped by `deployer down`")
                stopped.append(handle)
            except (RuntimeUnavailable, UsageError) as exc:
                warnings.append(f"could not stop the recorded {handle.runtime} server {handle.name}: {exc.message}")
        stray = local.find(manifest.project, state.root)
        if stray is not None and (handle is None or stray.ident != handle.ident):
            retire(local, stray, state, "stopped by `deployer down`")
            stopped.append(stray)
    # A container or service whose handle file was lost still carries this project's label.
    for name, factory in (("docker", _docker), ("swarm", _swarm)):
        if handle is not None and handle.runtime == name:
            continue
        with suppress(RuntimeUnavailable):
            other = factory(None)
            found = other.find(manifest.project, state.root)
            if found is not None:
                retire(other, found, state, "stopped by `deployer down`")
                stopped.append(found)
    if exists:
        state.clear_handle()
        recorded = state.read_pid()
        if recorded is not None and local.find(manifest.project, state.root) is None:
            # A pid file naming a process that is not (or no longer) our server is stale: clean it up.
            state.remove_pid(recorded[0])
    return DownReport(manifest.project, stopped, warnings)


def config_path(manifest: Manifest) -> Path:
    return StateDir(manifest.state_path, manifest.project).config_dir / MODELS_CONFIG
