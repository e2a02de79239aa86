"""ServerCore: config, version discovery, availability-preserving loads, labels, servable lookup.

Mirrors TF Serving's ServerCore + FileSystemStoragePathSource + AspiredVersionsManager with
AvailabilityPreservingPolicy:

- A manager thread polls every model's base path each ``file_system_poll_wait_seconds`` (0 = once,
  negative = never) for version directories (:mod:`deployer.version_dirs`, the rule deployer's store
  shares); the version policy picks the aspired set, each version loaded from its directory as found.
- New aspired versions are loaded serially (highest first, as with the default 0 load threads) and
  reported START → LOADING → AVAILABLE, or END with the load error. Unaspired versions are unloaded
  (UNLOADING → END) only once an aspired version is AVAILABLE, or when the model has no aspired
  versions left at all (e.g. removed from the config), so a failed new version never takes the old
  one down.
- Labels are validated against AVAILABLE versions *before* the new config's versions are added
  (UpdateModelVersionLabelMap); ``allow_version_labels_for_unavailable_models`` relaxes that only for
  a new label or one that keeps its version.
- ReloadConfig blocks until every newly added model *name* has an AVAILABLE version.

Ours, not TF Serving's: failed loads are not retried (TF Serving retries 5× at 1-minute intervals);
every reload polls the file system at once instead of waiting for the next poll; a reload waiting
for new models gives up when its caller goes away (TF Serving waits forever holding the config lock).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from deployer import version_dirs
from deployer.model_server.config import aspired_versions, validate_model_config_list
from deployer.model_server.status import ServingError, invalid

log = logging.getLogger(__name__)

# tensorflow.serving.ModelVersionStatus.State
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
STATE_NAMES = {
    0: "UNKNOWN",
    START: "START",
    LOADING: "LOADING",
    AVAILABLE: "AVAILABLE",
    UNLOADING: "UNLOADING",
    END: "END",
}


@dataclass
class VersionState:
    state: int
    error: ServingError | None = None


@dataclass
class ModelEntry:
    config: Any
    loaded: dict[int, Any] = field(default_factory=dict)  # version -> Servable (AVAILABLE)
    failed: set[int] = field(default_factory=set)


LoadFn = Callable[[str, int, str], Any]  # (name, version, path) -> Servable
UnloadFn = Callable[[str, int, Any], None]  # (name, version, Servable): close it
ConfigFn = Callable[[dict[str, dict[str, int]], list[str]], None]  # (labels, model names) after a reload


class ServableLookup:
    """ModelSpec → AVAILABLE Servable over ``_models`` and ``_labels`` (guarded by ``_lock``).

    Shared by ServerCore and a --num_server_processes follower's ReplicaCore (server_processes.py), so every
    process resolves versions and labels, and words its errors, the same way.
    """

    _lock: threading.Condition
    _models: dict[str, ModelEntry]
    _labels: dict[str, dict[str, int]]

    def servable(self, model_spec: Any) -> Any:
        """Resolve a ModelSpec to an AVAILABLE Servable (name, version or version_label, else latest)."""
        name = model_spec.name
        if not name:
            raise invalid("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        version: int | None = None
        if choice == "version":
            version = int(model_spec.version.value)
        elif choice == "version_label":
            version = self.version_for_label(name, model_spec.version_label)
        return self.servable_for(name, version)

    def version_for_label(self, name: str, label: str) -> int:
        with self._lock:
            version = self._labels.get(name, {}).get(label)
        if version is None:
            raise invalid(f"Unrecognized servable version label: {label}")
        return version

    def servable_for(self, name: str, version: int | None) -> Any:
        with self._lock:
            model = self._models.get(name)
            loaded = model.loaded if model is not None else {}
            if version is None:
                if loaded:
                    return loaded[max(loaded)]
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
            servable = loaded.get(version)
            if servable is None:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})"
                )
            return servable

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)


class Core(Protocol):
    """What the request handlers (grpc_api, rest_api) need of a core: ServerCore or a follower's ReplicaCore."""

    def servable(self, model_spec: Any) -> Any: ...

    def version_states(self, name: str) -> dict[int, VersionState]: ...

    def reload_config(self, config: Any, *, still_waiting: Callable[[], bool] = ...) -> None: ...


class ServerCore(ServableLookup):
    def __init__(
        self,
        load: LoadFn,
        *,
        file_system_poll_wait_seconds: float = 1,
        allow_version_labels_for_unavailable_models: bool = False,
        on_state: Callable[[str, int, int, ServingError | None], None] | None = None,
        unload: UnloadFn | None = None,
        on_config: ConfigFn | None = None,
    ) -> None:
        """``unload`` closes a retired servable (default: ``servable.close()``); ``on_config`` is told every
        accepted config's labels and model names before reload_config returns. --num_server_processes
        sets both, and a ``load`` that loads in every process (server_processes.py)."""
        self._load = load
        self._unload = unload if unload is not None else _close
        self._on_config = on_config
        self._poll_wait = file_system_poll_wait_seconds
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_state = on_state
        self._config_mu = threading.Lock()
        self._lock = threading.Condition(threading.RLock())
        self._models: dict[str, ModelEntry] = {}
        self._removed: list[ModelEntry] = []  # still to be unloaded by the manager thread
        self._states: dict[str, dict[int, VersionState]] = {}  # all ever seen, as ServableStateMonitor
        self._labels: dict[str, dict[str, int]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._polled_once = False
        self._thread = threading.Thread(target=self._manager_loop, name="model-manager", daemon=True)
        self._thread.start()

    # -- state ---------------------------------------------------------------------------------

    def _set_state(self, name: str, version: int, state: int, error: ServingError | None = None) -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionState(state, error)
            self._lock.notify_all()
        log.info("%s version %d: %s%s", name, version, STATE_NAMES[state], f" ({error})" if error is not None else "")
        if self._on_state is not None:
            self._on_state(name, version, state, error)

    def version_states(self, name: str) -> dict[int, VersionState]:
        with self._lock:
            return dict(self._states.get(name, {}))

    # -- config --------------------------------------------------------------------------------

    def reload_config(self, config: Any, *, still_waiting: Callable[[], bool] = lambda: True) -> None:
        """ServerCore::ReloadConfig. Raises ServingError; returns when new model names are AVAILABLE."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        with self._config_mu:
            validate_model_config_list(config)
            models = list(config.model_config_list.config)
            new_labels = self._validated_labels(models)
            with self._lock:
                new_names = [m.name for m in models if m.name not in self._models]
                wanted = {m.name for m in models}
                for name in list(self._models):
                    if name not in wanted:
                        self._removed.append(self._models.pop(name))
                for model in models:
                    entry = self._models.get(model.name)
                    if entry is None:
                        self._models[model.name] = ModelEntry(model)
                    else:
                        entry.config = model
                self._labels = new_labels
                names = sorted(self._models)
            if self._on_config is not None:
                self._on_config({name: dict(labels) for name, labels in new_labels.items()}, names)
            self._wake.set()
            self._wait_available(new_names, still_waiting)

    def _validated_labels(self, models: list[Any]) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        with self._lock:
            for model in models:
                states = self._states.get(model.name, {})
                current = self._labels.get(model.name, {})
                for label, version in model.version_labels.items():
                    moves = label in current and current[label] != version
                    available = states.get(version) is not None and states[version].state == AVAILABLE
                    if not available and (not self._allow_unavailable_labels or moves):
                        raise ServingError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"Request to assign label to version {version} of model {model.name}, "
                            "which is not currently available for inference",
                        )
                    labels.setdefault(model.name, {})[label] = version
        return labels

    def _wait_available(self, names: list[str], still_waiting: Callable[[], bool]) -> None:
        """WaitUntilServablesReachState(Latest(name), kAvailable) for each name."""
        with self._lock:
            while True:
                pending: list[str] = []
                failed: list[tuple[str, int, VersionState]] = []
                for name in names:
                    states = self._states.get(name, {})
                    if any(s.state == AVAILABLE for s in states.values()):
                        continue
                    if states and all(s.state == END for s in states.values()):
                        failed.extend((name, v, s) for v, s in sorted(states.items()))
                    else:
                        pending.append(name)
                if failed:
                    ids = ", ".join(f"{{name: {n} version: {v}}}" for n, v, _ in failed)
                    reasons = "; ".join(str(s.error) for _, _, s in failed if s.error is not None)
                    raise ServingError(
                        grpc.StatusCode.UNKNOWN, f"Some models did not become available: {{{ids}}}. {reasons}".strip()
                    )
                if not pending:
                    return
                if not still_waiting():
                    raise ServingError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"Gave up waiting for models to become available: {', '.join(pending)}",
                    )
                self._lock.wait(0.2)

    # -- manager thread ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            models = list(self._models.values()) + self._removed
        for model in models:
            for servable in model.loaded.values():
                servable.close()

    def _manager_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception:
                log.exception("model manager iteration failed")
            if self._poll_wait > 0:
                self._wake.wait(self._poll_wait)
            else:
                self._wake.wait()
            self._wake.clear()

    def _poll_once(self) -> None:
        with self._lock:
            removed, self._removed = self._removed, []
            models = list(self._models.items())
        for model in removed:
            self._reconcile(model, {})
        poll_disk = self._poll_wait >= 0
        for name, model in models:
            if self._stop.is_set():
                return
            on_disk = self._versions_on_disk(model.config) if poll_disk else []
            aspired = aspired_versions(model.config, on_disk)
            self._reconcile(model, aspired)
            if not aspired and name not in self._states:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                    "directory as a number (eg. '/1/')?",
                    name,
                    model.config.base_path,
                )

    @staticmethod
    def _versions_on_disk(config: Any) -> list[str]:
        """The base path's children (sorted bytewise); the policy picks the version ones."""
        try:
            return version_dirs.list_children(config.base_path)
        except FileNotFoundError:
            log.error("Could not find base path %s for servable %s", config.base_path, config.name)
        except OSError as exc:
            log.error("Cannot list %s: %s", config.base_path, exc)
        return []

    def _reconcile(self, model: ModelEntry, aspired_dirs: dict[int, str]) -> None:
        """Load new aspired versions from their directory as found (``00000123`` for 123), unload the rest."""
        name = model.config.name
        aspired = set(aspired_dirs)
        with self._lock:
            model.failed &= aspired  # an unaspired failure may be retried if it comes back
            new = sorted(aspired - set(model.loaded) - model.failed, reverse=True)
            for version in new:
                self._set_state(name, version, START)
        for version in new:
            if self._stop.is_set():
                return
            path = os.path.join(model.config.base_path, aspired_dirs[version])
            self._set_state(name, version, LOADING)
            started = time.monotonic()
            try:
                servable = self._load(name, version, path)
            except ServingError as exc:
                model.failed.add(version)
                self._set_state(name, version, END, exc)
                continue
            except Exception as exc:
                model.failed.add(version)
                self._set_state(name, version, END, ServingError(grpc.StatusCode.UNKNOWN, str(exc)))
                continue
            with self._lock:
                model.loaded[version] = servable
            log.info("Loaded %s version %d in %.2fs", name, version, time.monotonic() - started)
            self._set_state(name, version, AVAILABLE)
        with self._lock:
            unaspired = sorted(set(model.loaded) - aspired)
            aspired_serving = any(v in model.loaded for v in aspired)
            can_unload = aspired_serving or not aspired
            victims = []
            if can_unload:
                for version in unaspired:
                    # Reported UNLOADING before requests stop finding it, as ServableStateMonitor does.
                    self._set_state(name, version, UNLOADING)
                    victims.append((version, model.loaded.pop(version)))
        for _version, servable in victims:
            try:
                self._unload(name, _version, servable)
            finally:
                self._set_state(name, _version, END)


def _close(_name: str, _version: int, servable: Any) -> None:
    servable.close()
