"""The swarm runtime: the model server as a replicated Docker Swarm service.

A service ``deployer-<project>`` with N replicas, created through the Docker SDK (``client.services``)
with the docker runtime's image choice and hardening. Models and the state directory's config are
bind-mounted read-only, so the models.config a promotion writes is what a replaced task reads at its
start (the promoted state survives task restarts and ``down``/``up``).

Each task publishes its ports in *host* mode with no fixed host port: Swarm gives every task its own
ephemeral host port, read back from the task's ``Status.PortStatus``. The ingress routing mesh (one
published port → the service's VIP → any task) needs IPVS, which some kernels lack; host-mode ports
need nothing but the task's node. Host-mode ports bind on every interface of the node (Swarm has no
host-IP option for published ports): see the README's security notes.

A container HEALTHCHECK (``bash`` opening the gRPC port, exec form: the real tensorflow/serving image
has bash but no curl) gates Swarm's own rolling updates: TF Serving opens its ports only once every
model of the initial config is AVAILABLE, so "healthy" means "loaded".

Docker/requests errors are mapped by the docker runtime's ``_docker_errors``; like it, only this
module and ``deployer.runtime.docker`` import ``docker``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from docker.errors import NotFound
from docker.types import Healthcheck, Mount, RestartPolicy, RollbackConfig, ServiceMode, UpdateConfig

from deployer.errors import RuntimeUnavailable, StoreError, UsageError
from deployer.runtime import docker as docker_runtime
from deployer.runtime.base import Endpoint, LaunchSpec, Layout, ProcessState, Replica, ServerHandle
from deployer.runtime.docker import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    LABEL_SPEC_HASH,
    DockerRuntime,
    _docker_errors,
    _started_at,
)

GRPC_PORT = 8500
REST_PORT = 8501
LABEL_REPLICAS = "deployer.replicas"
LABEL_RUNTIME = "deployer.runtime"
# Task states after which a task never runs again (Swarm starts a new task in its slot instead).
_ENDED = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}
_NS = 1_000_000_000
# How long `down` waits for the service's containers to be gone (Swarm removes them asynchronously).
_DOWN_WAIT_S = 60.0
STOP_GRACE_SECONDS = 5
# The HEALTHCHECK: exec form (no /bin/sh needed), bash's /dev/tcp (no curl needed).
HEALTHCHECK_TEST = ["CMD", "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{GRPC_PORT}"]

SWARM_HINT = (
    "make this Docker engine a swarm manager: `docker swarm init --advertise-addr 127.0.0.1` "
    "(single node), or run deployer on a manager of your swarm"
)

Progress = Callable[[str], None]


def service_name(project: str) -> str:
    return f"deployer-{project}"


def connect(progress: Progress | None = None, *, timeout: int = 60) -> SwarmRuntime:
    """A swarm runtime on the daemon named by the environment; it must be an active swarm manager."""
    docker = docker_runtime.connect(progress, timeout=timeout)
    with _docker_errors("ask the Docker daemon about its swarm"):
        swarm = docker.client.info().get("Swarm") or {}
    state = str(swarm.get("LocalNodeState") or "inactive")
    if state != "active" or not swarm.get("ControlAvailable"):
        why = f"swarm state {state}" if state != "active" else "this node is a worker, not a manager"
        raise RuntimeUnavailable(f"the swarm runtime needs an active swarm manager ({why})", hint=SWARM_HINT)
    return SwarmRuntime(docker)


def _published(task: dict[str, Any], target: int) -> int | None:
    for port in (task.get("Status", {}).get("PortStatus") or {}).get("Ports") or ():
        if port.get("TargetPort") == target and port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def _created(task: dict[str, Any]) -> str:
    # ISO timestamps of one daemon sort as strings.
    return str(task.get("CreatedAt", ""))


def _exit_code(task: dict[str, Any]) -> int | None:
    code = (task.get("Status", {}).get("ContainerStatus") or {}).get("ExitCode")
    return int(code) if isinstance(code, int) else None


class SwarmRuntime:
    name: ClassVar[str] = "swarm"

    def __init__(self, docker: DockerRuntime, *, dial_host: str = "127.0.0.1") -> None:
        self.docker = docker
        self.client = docker.client
        # docker-py's stubs leave the services API untyped; Any keeps mypy --strict honest elsewhere.
        self.services: Any = docker.client.services
        # Host-mode ports bind on every interface of the task's node; on a single-node swarm the
        # loopback address reaches them. A multi-node swarm needs each node's address (see README).
        self.dial_host = dial_host

    # ---- Runtime contract ---------------------------------------------------------------------
    def layout(self, model_base_paths: dict[str, Path], config_dir: Path) -> Layout:
        return self.docker.layout(model_base_paths, config_dir)

    def start(self, spec: LaunchSpec) -> ServerHandle:
        for mount in spec.layout.mounts:
            if not mount.host.exists():
                raise StoreError(f"cannot mount {mount.host} at {mount.target}: the path does not exist")
        self.docker.ensure_image(spec.image)
        name = service_name(spec.project)
        self._remove_stale(name, spec.project)
        labels = {
            LABEL_PROJECT: spec.project,
            LABEL_SPEC_HASH: spec.spec_hash,
            LABEL_MANAGED: "true",
            LABEL_REPLICAS: str(spec.replicas),
        }
        limits: dict[str, int] = {}
        if spec.container.memory:
            limits["MemoryBytes"] = _memory_bytes(spec.container.memory)
        if spec.container.pids_limit:
            limits["Pids"] = spec.container.pids_limit
        # start_period: a cold model load may take the whole health deadline; failures before then
        # do not count, and the first success ends it.
        healthcheck = Healthcheck(
            test=HEALTHCHECK_TEST,
            interval=2 * _NS,
            timeout=2 * _NS,
            retries=3,
            start_period=int(spec.health_deadline_s * _NS),
        )
        mounts = [
            Mount(target=m.target, source=str(m.host), type="bind", read_only=m.read_only) for m in spec.layout.mounts
        ]
        mounts.append(Mount(target="/tmp", source=None, type="tmpfs"))
        # Rolling updates (a new image or flags) start the new task first, wait for its HEALTHCHECK,
        # and roll back on failure: a replica is never replaced by one that cannot serve.
        update = UpdateConfig(parallelism=1, delay=0, failure_action="rollback", monitor=5 * _NS, order="start-first")
        rollback = RollbackConfig(parallelism=1, delay=0, failure_action="pause", monitor=5 * _NS, order="start-first")
        # A plain dict: docker-py's EndpointSpec wants a fixed published port, host mode wants none.
        ports: Any = {"Ports": [
            {"Protocol": "tcp", "TargetPort": GRPC_PORT, "PublishMode": "host"},
            {"Protocol": "tcp", "TargetPort": REST_PORT, "PublishMode": "host"},
        ]}  # fmt: skip
        with _docker_errors(f"create swarm service {name}", spec.image):
            service = self.services.create(
                spec.image,
                args=list(spec.args),
                name=name,
                labels=labels,
                # No LABEL_MANAGED on the task containers: the docker runtime finds (and would stop) its own
                # containers by it, and these belong to the service. LABEL_PROJECT lets `down` wait for them.
                container_labels={LABEL_PROJECT: spec.project, LABEL_RUNTIME: self.name},
                mode=ServiceMode("replicated", replicas=spec.replicas),
                endpoint_spec=ports,
                mounts=mounts,
                read_only=spec.container.read_only_root,
                cap_drop=["ALL"],
                healthcheck=healthcheck,
                stop_grace_period=STOP_GRACE_SECONDS * _NS,
                resources={"Limits": limits} if limits else None,
                # Swarm replaces a task whose container dies, whatever the manifest's docker restart policy.
                restart_policy=RestartPolicy(condition="any", delay=_NS, max_attempts=0),
                update_config=update,
                rollback_config=rollback,
            )
            service.reload()
        return self._handle(service, endpoints=())

    def find(self, project: str, state_dir: Path) -> ServerHandle | None:
        with _docker_errors(f"look up the swarm service of project {project}"):
            wanted = [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"]
            found = self.services.list(filters={"label": wanted})
        for service in found:
            handle = self._handle(service, endpoints=())
            return handle.with_endpoints(self._endpoints(handle))
        return None

    def state(self, handle: ServerHandle) -> ProcessState:
        """Running unless the service is gone or a replica's newest task ended (failed, exited, rejected)."""
        try:
            replicas = self.replicas(handle)
        except _Gone:
            return ProcessState(running=False, exit_code=None, detail="removed")
        for replica in replicas:
            if replica.state in _ENDED:
                return ProcessState(
                    running=False,
                    exit_code=replica.exit_code,
                    detail=f"replica {replica.slot} (task {replica.ident[:12]}) {replica.state}: {replica.detail}",
                )
        ready = sum(1 for r in replicas if r.running)
        return ProcessState(running=True, detail=f"{ready}/{handle.replicas} replicas running")

    def replicas(self, handle: ServerHandle) -> list[Replica]:
        """The newest task of every slot, in slot order."""
        newest: dict[int, dict[str, Any]] = {}
        for task in self._tasks(handle):
            slot = int(task.get("Slot") or 0)
            if slot not in newest or _created(task) > _created(newest[slot]):
                newest[slot] = task
        replicas = []
        for slot in sorted(newest):
            task = newest[slot]
            status = task.get("Status", {})
            grpc, rest = _published(task, GRPC_PORT), _published(task, REST_PORT)
            state = str(status.get("State", "unknown"))
            endpoint = None
            if grpc is not None and state == "running":
                rest_url = f"http://{self.dial_host}:{rest}" if rest is not None else None
                endpoint = Endpoint(f"{self.dial_host}:{grpc}", rest_url, str(task["ID"]), slot)
            detail = str(status.get("Err") or status.get("Message") or "")
            replicas.append(Replica(slot, str(task["ID"]), state, endpoint, detail, _exit_code(task)))
        return replicas

    def logs(self, handle: ServerHandle, tail: int = 50) -> str:
        """Every task's last ``tail`` lines, merged by time, each prefixed with its replica."""
        slots = {str(t["ID"]): int(t.get("Slot") or 0) for t in self._tasks(handle)}
        lines: list[tuple[str, str]] = []
        with _docker_errors(f"read the logs of swarm service {handle.name}"):
            try:
                service = self.services.get(handle.ident)
                raw = service.logs(stdout=True, stderr=True, timestamps=True, details=True, tail=tail)
                for chunk in raw:
                    lines.extend(_parse_log_lines(bytes(chunk).decode("utf-8", errors="replace"), slots))
            except NotFound:
                return ""
        lines.sort(key=lambda pair: pair[0])
        return "".join(text + "\n" for _, text in lines)

    def follow_logs(self, handle: ServerHandle, tail: int = 50) -> Iterator[str]:
        """Every task's last ``tail`` lines, then new lines as any task writes them, each with its replica;
        ends when the service is removed. A task that replaces another is named as soon as it logs."""
        slots = {str(t["ID"]): int(t.get("Slot") or 0) for t in self._tasks(handle)}
        with _docker_errors(f"follow the logs of swarm service {handle.name}"):
            try:
                service = self.services.get(handle.ident)
            except NotFound:
                return
            pending = ""
            stream = service.logs(stdout=True, stderr=True, timestamps=True, details=True, follow=True, tail=tail)
            for chunk in stream:
                pending += bytes(chunk).decode("utf-8", errors="replace")
                *complete, pending = pending.split("\n")
                for line in complete:
                    match = _DETAILS.match(line)
                    if match is not None and match.group(3) not in slots:
                        with contextlib.suppress(_Gone):
                            slots = {str(t["ID"]): int(t.get("Slot") or 0) for t in self._tasks(handle)}
                    for _, text in _parse_log_lines(line, slots):
                        yield text
            for _, text in _parse_log_lines(pending, slots):
                yield text

    def stop(self, handle: ServerHandle) -> None:
        """Remove the service (and any swarm config labelled with its project), then wait for its containers."""
        project = None
        with _docker_errors(f"remove swarm service {handle.name}"):
            try:
                service = self.services.get(handle.ident)
            except NotFound:
                service = None
            if service is not None:
                project = self._check_ours(service, handle)
                service.remove()
        project = project or _project_of(handle)
        if project is None:
            return
        with _docker_errors(f"remove the swarm configs of project {project}"):
            for config in self.client.configs.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
                with contextlib.suppress(NotFound):
                    config.remove()
        self._wait_containers_gone(project)

    def restart(self, handle: ServerHandle) -> ServerHandle:
        """A rolling restart of every task (start-first, health-gated), e.g. after a config change."""
        with _docker_errors(f"restart swarm service {handle.name}"):
            service = self.services.get(handle.ident)
            self._check_ours(service, handle)
            service.force_update()
        return handle

    # ---- helpers --------------------------------------------------------------------------------
    def _tasks(self, handle: ServerHandle) -> list[dict[str, Any]]:
        with _docker_errors(f"list the tasks of swarm service {handle.name}"):
            try:
                service = self.services.get(handle.ident)
            except NotFound:
                raise _Gone(handle.name) from None
            return list(service.tasks())

    def _endpoints(self, handle: ServerHandle) -> tuple[Endpoint, ...]:
        try:
            return tuple(r.endpoint for r in self.replicas(handle) if r.endpoint is not None)
        except _Gone:
            return ()

    def _remove_stale(self, name: str, project: str) -> None:
        with _docker_errors(f"inspect swarm service {name}"):
            try:
                service = self.services.get(name)
            except NotFound:
                return
            labels = service.attrs.get("Spec", {}).get("Labels") or {}
            if labels.get(LABEL_PROJECT) != project or labels.get(LABEL_MANAGED) != "true":
                raise RuntimeUnavailable(
                    f"a swarm service named {name} exists and was not created by deployer for project {project}",
                    hint=f"remove or rename it (`docker service rm {name}`), or rename the project",
                )
            raise RuntimeUnavailable(
                f"swarm service {name} of project {project} already exists", hint="stop it first (`deployer down`)"
            )

    @staticmethod
    def _check_ours(service: Any, handle: ServerHandle) -> str:
        labels = service.attrs.get("Spec", {}).get("Labels") or {}
        project = labels.get(LABEL_PROJECT)
        if labels.get(LABEL_MANAGED) != "true" or project is None or service_name(project) != handle.name:
            raise UsageError(
                f"swarm service {service.name} was not created by deployer for {handle.name}; leaving it alone",
                hint="the state directory may point at a foreign service; remove it if it is stale",
            )
        return str(project)

    def _wait_containers_gone(self, project: str) -> None:
        deadline = time.monotonic() + _DOWN_WAIT_S
        while time.monotonic() < deadline:
            with _docker_errors(f"list the containers of project {project}"):
                left = self.client.containers.list(
                    all=True, sparse=True, filters={"label": [f"{LABEL_PROJECT}={project}", "com.docker.swarm.task"]}
                )
            if not left:
                return
            time.sleep(0.25)
        raise RuntimeUnavailable(
            f"the swarm service of {project} was removed but {len(left)} of its container(s) are still there"
            f" after {_DOWN_WAIT_S:.0f} s",
            hint="Swarm removes them asynchronously; run `deployer down` again",
        )

    def _handle(self, service: Any, *, endpoints: tuple[Endpoint, ...]) -> ServerHandle:
        spec = service.attrs.get("Spec", {})
        labels = spec.get("Labels") or {}
        replicas = int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)
        image = str(spec.get("TaskTemplate", {}).get("ContainerSpec", {}).get("Image", "")) or None
        handle = ServerHandle(
            runtime=self.name,
            ident=str(service.id),
            name=str(service.name),
            grpc_target="",
            rest_url=None,
            spec_hash=str(labels.get(LABEL_SPEC_HASH, "")),
            image=image,
            started_at=_started_at({"State": {"StartedAt": service.attrs.get("CreatedAt", "")}}),
            replicas=replicas,
        )
        return handle.with_endpoints(endpoints)


class _Gone(Exception):
    """Internal: the service no longer exists."""


def _project_of(handle: ServerHandle) -> str | None:
    prefix = "deployer-"
    return handle.name[len(prefix) :] if handle.name.startswith(prefix) else None


def _memory_bytes(text: str) -> int:
    units = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    match = re.fullmatch(r"(\d+)([bkmgBKMG]?)", text)
    if match is None:
        raise UsageError(f"server.container.memory: cannot read {text!r}")
    return int(match.group(1)) * units[match.group(2).lower()]


_DETAILS = re.compile(r"^(\S+) (\S*com\.docker\.swarm\.task\.id=(\w+)\S*) ?(.*)$")


def _parse_log_lines(text: str, slots: dict[str, int]) -> list[tuple[str, str]]:
    """``<timestamp> <details> <message>`` lines of a service log → (timestamp, "replica K task T | message")."""
    out = []
    for line in text.splitlines():
        match = _DETAILS.match(line)
        if match is None:
            if line.strip():
                out.append(("", line))
            continue
        stamp, _, task, message = match.groups()
        slot = slots.get(task, 0)
        out.append((stamp, f"replica {slot or '?'} ({task[:12]}) | {message}"))
    return out


__all__ = ["SWARM_HINT", "SwarmRuntime", "connect", "service_name"]
