"""The contract between the orchestration and a runtime (local, docker or swarm).

A runtime starts, finds, inspects and stops a model server; it never speaks gRPC. Health is judged by
the orchestration with deployer.client, using ``state()`` to fail fast when the server exits.

A server is a fleet: ``replicas()`` lists its replicas (one for the local and docker runtimes, N
tasks for swarm), and a handle carries one endpoint per replica. Health, smoke and promote loop over
the endpoints, so a single server is simply a fleet of one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from deployer.manifest import ContainerSettings


@dataclass(frozen=True)
class Mount:
    host: Path
    target: str  # the path as the server sees it
    read_only: bool = True


@dataclass(frozen=True)
class Layout:
    """How the server sees the host's paths: base paths per model and the config directory."""

    model_paths: dict[str, str]
    config_dir: str
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class LaunchSpec:
    project: str
    spec_hash: str
    image: str
    host: str
    grpc_port: int  # host port; 0 picks a free one
    rest_port: int  # host port; 0 picks a free one
    args: tuple[str, ...]  # model-server flags, paths already as the server sees them (see Layout)
    layout: Layout
    state_dir: Path  # pid and log files of the local runtime live here
    container: ContainerSettings = field(default_factory=ContainerSettings)
    weakenings: tuple[str, ...] = ()  # recorded in the handle so `status` can show them
    replicas: int = 1  # only the swarm runtime runs more than one
    health_deadline_s: float = 120.0  # the swarm runtime's container HEALTHCHECK start period


@dataclass(frozen=True)
class Endpoint:
    """Where one replica answers. ``replica`` names it (task or container id); "" for a lone server."""

    grpc_target: str
    rest_url: str | None
    replica: str = ""
    slot: int = 1

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServerHandle:
    """What identifies a running server; persisted as JSON in the state directory.

    The ownership fields (``project``, ``state_dir``, ``start_ticks``) say whose server it is, so a
    handle copied into another project's state directory, or a pid reused by another process, is never
    mistaken for this manifest's server. They default to "unknown" so handles written before them load.
    """

    runtime: str  # "docker" | "local"
    ident: str  # container id, or pid as a string
    name: str  # container name, or the command's name
    grpc_target: str  # "127.0.0.1:8500"
    rest_url: str | None  # "http://127.0.0.1:8501" or None when REST is off
    spec_hash: str
    image: str | None = None
    started_at: float = 0.0
    project: str = ""  # the manifest project that started it ("" = recorded before ownership existed)
    state_dir: str = ""  # the resolved state directory it belongs to
    start_ticks: int | None = None  # local: the process's start time (/proc/PID/stat), which a reused pid lacks
    weakenings: tuple[str, ...] = ()  # hardening it was started without (server.weakenings in effect)
    # One endpoint per replica; empty for a single server (server.json files written before fleets
    # existed have none). grpc_target/rest_url always name the first replica.
    endpoints: tuple[Endpoint, ...] = ()
    replicas: int = 1  # how many the runtime was asked to run

    @property
    def fleet(self) -> tuple[Endpoint, ...]:
        """Every replica's endpoint, in slot order; a single server is a fleet of one."""
        return self.endpoints or (Endpoint(self.grpc_target, self.rest_url, self.ident, 1),)

    def with_endpoints(self, endpoints: tuple[Endpoint, ...]) -> ServerHandle:
        """The same server with fresh endpoints (swarm tasks come and go with new host ports)."""
        if not endpoints:
            return replace(self, endpoints=())
        first = endpoints[0]
        return replace(self, endpoints=endpoints, grpc_target=first.grpc_target, rest_url=first.rest_url)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["weakenings"] = list(self.weakenings)
        data["endpoints"] = [e.to_json() for e in self.endpoints]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerHandle:
        # Keys this version does not know (written by a newer deployer) are ignored, not fatal.
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "weakenings" in values:
            values["weakenings"] = tuple(str(w) for w in values["weakenings"] or ())
        if "endpoints" in values:
            endpoint_fields = {f.name for f in fields(Endpoint)}
            endpoints = values["endpoints"] or ()
            if not isinstance(endpoints, list | tuple) or not all(isinstance(e, dict) for e in endpoints):
                raise ValueError("endpoints must be a list of objects")
            values["endpoints"] = tuple(
                Endpoint(**{k: v for k, v in e.items() if k in endpoint_fields}) for e in endpoints
            )
        handle = cls(**values)
        if not all(isinstance(getattr(handle, name), str) for name in ("runtime", "ident", "name", "grpc_target")):
            raise ValueError("runtime, ident, name and grpc_target must be strings")
        return handle

    def claims(self, project: str, state_dir: Path) -> bool:
        """False when the handle says it belongs to another project or state directory."""
        if self.project and self.project != project:
            return False
        return not (self.state_dir and Path(self.state_dir) != state_dir)


@dataclass(frozen=True)
class ProcessState:
    running: bool
    exit_code: int | None = None
    detail: str = ""  # e.g. "OOMKilled", "exited", "running"


@dataclass(frozen=True)
class Replica:
    """One replica as the runtime sees it now (a swarm task, a container, a process)."""

    slot: int  # 1-based
    ident: str  # task id, container id or pid
    state: str  # the runtime's word: running, starting, pending, failed, exited, ...
    endpoint: Endpoint | None  # None until the runtime publishes its ports
    detail: str = ""  # an error or exit reason
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def single_replica(handle: ServerHandle, state: ProcessState) -> list[Replica]:
    """The replica list of a runtime that runs one server: the handle itself."""
    word = "running" if state.running else state.detail or "exited"
    endpoint = handle.fleet[0] if state.running else None
    return [Replica(1, handle.ident, word, endpoint, state.detail, state.exit_code)]


class Runtime(Protocol):
    name: ClassVar[str]

    def layout(self, model_base_paths: dict[str, Path], config_dir: Path) -> Layout: ...

    def start(self, spec: LaunchSpec) -> ServerHandle: ...

    def find(self, project: str, state_dir: Path) -> ServerHandle | None: ...

    def state(self, handle: ServerHandle) -> ProcessState: ...

    def logs(self, handle: ServerHandle, tail: int = 50) -> str: ...

    def follow_logs(self, handle: ServerHandle, tail: int = 50) -> Iterator[str]:
        """The last ``tail`` lines, then each new line as the server writes it, until it stops."""
        ...

    def replicas(self, handle: ServerHandle) -> list[Replica]: ...

    def stop(self, handle: ServerHandle) -> None: ...

    def restart(self, handle: ServerHandle) -> ServerHandle: ...
