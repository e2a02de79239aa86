"""The contract between the orchestration and a runtime (docker or local).

A runtime starts, finds, inspects and stops a model server; it never speaks gRPC. Health is judged by
the orchestration with deployer.client, using ``state()`` to fail fast when the server exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
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

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["weakenings"] = list(self.weakenings)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerHandle:
        # Keys this version does not know (written by a newer deployer) are ignored, not fatal.
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "weakenings" in values:
            values["weakenings"] = tuple(str(w) for w in values["weakenings"] or ())
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

    def stop(self, handle: ServerHandle) -> None: ...

    def restart(self, handle: ServerHandle) -> ServerHandle: ...
