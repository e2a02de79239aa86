"""The Docker runtime: the model server as a hardened, labelled container.

This is the only module that imports ``docker``. Every docker-py / requests error is mapped to our
exception tree in ``_docker_errors`` so callers never see a foreign type. Besides the ``Runtime``
contract it offers the few image operations ``deployer.image`` needs (build, import, labels), so the
image builder shares the same connection and error mapping.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import requests
from docker.client import DockerClient, from_env
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount as DockerMount
from docker.utils import parse_repository_tag

from deployer import __version__
from deployer.errors import DeployerError, NotHealthy, RuntimeUnavailable, StoreError, UsageError
from deployer.runtime.base import LaunchSpec, Layout, Mount, ProcessState, Replica, ServerHandle, single_replica

COMPAT_IMAGE_REPOSITORY = "deployer/model-server-compat"
GRPC_CONTAINER_PORT = "8500/tcp"
REST_CONTAINER_PORT = "8501/tcp"
MODELS_DIR = "/models"
CONFIG_DIR = "/config"

LABEL_PROJECT = "deployer.project"
LABEL_SPEC_HASH = "deployer.spec-hash"
LABEL_MANAGED = "deployer.managed"
LABEL_STATE_DIR = "deployer.state-dir"
LABEL_WEAKENINGS = "deployer.weakenings"

# The server drains nothing worth waiting for: in-flight smoke requests are retried by the caller.
STOP_TIMEOUT_SECONDS = 5
# How long start() waits for Docker to publish the random host ports of a just-started container.
_PORTS_WAIT_SECONDS = 5.0

Progress = Callable[[str], None]

# "Bind for 127.0.0.1:8500 failed: port is already allocated" (another container holds it) or
# "listen tcp4 127.0.0.1:8500: bind: address already in use" (a host process holds it).
_PORT_IN_USE = re.compile(r"(?:Bind for |listen tcp[46]? )(\S+?):(\d+)")


def compat_image() -> str:
    """The locally built TF-Serving-compatible image for this package version.

    ``$DEPLOYER_COMPAT_IMAGE`` names another tag, so two checkouts on one daemon keep their images apart.
    """
    return os.environ.get("DEPLOYER_COMPAT_IMAGE") or f"{COMPAT_IMAGE_REPOSITORY}:{__version__}"


def container_name(project: str) -> str:
    return f"deployer-{project}"


def network_name(project: str) -> str:
    """The project's own bridge network. On the default bridge any container could reach the server's
    unauthenticated ModelService (HandleReloadConfigRequest unloads every model); Docker isolates
    user-defined bridges from each other, so here only the published 127.0.0.1 ports lead in."""
    return f"deployer-{project}"


def _make_image_hint(image: str | None = None) -> str:
    hint = f"run `make image` to build the local compatible image {compat_image()}"
    if image is not None and image != compat_image():
        hint += f", and set server.image: {compat_image()} in the manifest"
    return hint


_DAEMON_HINT = (
    "start Docker (`make docker-ready` runs scripts/ensure-docker), check DOCKER_HOST, "
    "or set server.runtime: local"
)


def _port_in_use(message: str) -> str | None:
    if "already allocated" not in message and "address already in use" not in message:
        return None
    match = _PORT_IN_USE.search(message)
    return match.group(2) if match else "?"


def _short(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _docker_errors(action: str, image: str | None = None) -> Iterator[None]:
    """Map docker-py and requests errors raised while doing ``action`` to our exceptions."""
    try:
        yield
    except DeployerError:
        raise
    except ImageNotFound as exc:
        raise RuntimeUnavailable(
            f"cannot {action}: image {image or ''} not found ({_short(exc)})".replace("  ", " "),
            hint=_make_image_hint(image),
        ) from None
    except APIError as exc:
        port = _port_in_use(str(exc))
        if port is not None:
            raise RuntimeUnavailable(
                f"cannot {action}: host port {port} is already in use",
                hint=f"stop whatever listens on port {port}, or set server.grpc_port: 0 / server.rest_port: 0 "
                "in the manifest to pick free ports",
            ) from None
        raise RuntimeUnavailable(
            f"cannot {action}: the Docker daemon refused: {_short(exc)}", hint=_DAEMON_HINT
        ) from None
    except (DockerException, requests.exceptions.RequestException) as exc:
        raise RuntimeUnavailable(
            f"cannot {action}: the Docker daemon does not answer ({_short(exc)})", hint=_DAEMON_HINT
        ) from None


class PullProgress:
    """Turns the daemon's per-layer pull events into a few lines: layers done and MB downloaded, at
    most every ``every_s`` seconds (byte-level events would flood a CI log)."""

    def __init__(
        self, image: str, report: Progress, *, every_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.image, self.report, self.every_s, self.clock = image, report, every_s, clock
        self.layers: dict[str, tuple[int, int]] = {}  # layer id → (downloaded bytes, total bytes)
        self.done: set[str] = set()
        self.last = clock()

    def update(self, event: Mapping[str, Any]) -> None:
        layer, status = str(event.get("id", "")), str(event.get("status", ""))
        detail = event.get("progressDetail") or {}
        if layer and status == "Downloading" and isinstance(detail, Mapping):
            self.layers[layer] = (int(detail.get("current") or 0), int(detail.get("total") or 0))
        elif layer and status in ("Pull complete", "Already exists"):
            self.done.add(layer)
        elif layer and status == "Pulling fs layer":
            self.layers.setdefault(layer, (0, 0))
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            self.report(self.line())

    def line(self) -> str:
        current = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        size = f", {current / 1e6:.0f} of {total / 1e6:.0f} MB downloaded" if total else ""
        known = len(set(self.layers) | self.done)
        return f"pulling {self.image}: {len(self.done)} of {known} layers done{size}"

    def finish(self) -> None:
        self.report(f"pulled {self.image} ({len(self.done)} layers)")


def connect(progress: Progress | None = None, *, timeout: int = 60) -> DockerRuntime:
    """The factory: a runtime bound to the daemon named by the environment (DOCKER_HOST, ...).

    ``progress`` receives one-line reports of slow work (image pulls); the library never prints.
    """
    with _docker_errors("connect to the Docker daemon"):
        client = from_env(timeout=timeout)
        client.ping()
    return DockerRuntime(client, progress=progress)


def _ipv4_host_port(ports: Mapping[str, Any], container_port: str) -> int | None:
    # Docker lists one binding per address family when published on 0.0.0.0; clients dial IPv4.
    for binding in ports.get(container_port) or ():
        host_ip = binding.get("HostIp", "")
        if ":" not in host_ip and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _dial_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("", "0.0.0.0") else bind_host


def _started_at(attrs: Mapping[str, Any]) -> float:
    raw = str(attrs.get("State", {}).get("StartedAt", ""))
    # Docker reports nanoseconds, which fromisoformat cannot parse: keep microseconds.
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})?\d*(Z|[+-]\d\d:\d\d)?", raw)
    if not match:
        return 0.0
    stamp = match.group(1) + (match.group(2) or "") + (match.group(3) or "Z").replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


class DockerRuntime:
    name: ClassVar[str] = "docker"

    def __init__(self, client: DockerClient, *, progress: Progress | None = None) -> None:
        self.client = client
        self._progress = progress

    def _report(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    # ---- Runtime contract ---------------------------------------------------------------------
    def layout(self, model_base_paths: dict[str, Path], config_dir: Path) -> Layout:
        mounts = [Mount(host=path.resolve(), target=f"{MODELS_DIR}/{name}") for name, path in model_base_paths.items()]
        mounts.append(Mount(host=config_dir.resolve(), target=CONFIG_DIR))
        return Layout(
            model_paths={name: f"{MODELS_DIR}/{name}" for name in model_base_paths},
            config_dir=CONFIG_DIR,
            mounts=tuple(mounts),
        )

    def start(self, spec: LaunchSpec) -> ServerHandle:
        for mount in spec.layout.mounts:
            if not mount.host.exists():
                # Docker would refuse with a 400 that reads like a daemon problem; name the path instead.
                raise StoreError(f"cannot mount {mount.host} at {mount.target}: the path does not exist")
        self.ensure_image(spec.image)
        name = container_name(spec.project)
        self._remove_stale(name, spec.project)
        network = self._ensure_network(spec.project)
        # Typed loosely on purpose: docker-py accepts a None host port (= pick a free one) and a plain
        # restart-policy dict, which its stubs do not model.
        ports: dict[str, Any] = {
            GRPC_CONTAINER_PORT: (spec.host, spec.grpc_port or None),
            REST_CONTAINER_PORT: (spec.host, spec.rest_port or None),
        }
        restart_policy: Any = {"Name": spec.container.restart_policy}
        with _docker_errors(f"start container {name}", spec.image):
            container = self.client.containers.create(
                spec.image,
                command=list(spec.args),
                name=name,
                labels={
                    LABEL_PROJECT: spec.project,
                    LABEL_SPEC_HASH: spec.spec_hash,
                    LABEL_MANAGED: "true",
                    LABEL_STATE_DIR: str(spec.state_dir),
                    LABEL_WEAKENINGS: ",".join(spec.weakenings),
                },
                network=network,
                ports=ports,
                mounts=[
                    DockerMount(target=m.target, source=str(m.host), type="bind", read_only=m.read_only)
                    for m in spec.layout.mounts
                ],
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=spec.container.read_only_root,
                tmpfs={"/tmp": ""},
                mem_limit=spec.container.memory,
                pids_limit=spec.container.pids_limit,
                restart_policy=restart_policy,
                # Not auto_remove: a container that died must keep its logs until we have read them.
            )
            try:
                container.start()
            except BaseException:
                # A failed start (e.g. port taken) leaves a "created" container that would block the name.
                with contextlib.suppress(DockerException, requests.exceptions.RequestException):
                    container.remove(force=True)
                raise
            grpc_port, rest_port = self._published_ports(container)
        if grpc_port is None or rest_port is None:
            logs = self._container_logs(container, 50)
            exit_code = container.attrs.get("State", {}).get("ExitCode")
            with contextlib.suppress(DockerException, requests.exceptions.RequestException):
                container.remove(force=True)
            raise NotHealthy(
                f"container {name} exited at once (exit code {exit_code}) before its ports were published",
                details=logs,
            )
        return self._handle(container, grpc_port, rest_port, spec.host)

    def find(self, project: str, state_dir: Path) -> ServerHandle | None:
        with _docker_errors(f"look up the container of project {project}"):
            found = self.client.containers.list(
                filters={"label": [f"{LABEL_PROJECT}={project}", f"{LABEL_MANAGED}=true"], "status": "running"}
            )
            for container in found:
                recorded_dir = (container.labels or {}).get(LABEL_STATE_DIR)
                if recorded_dir and Path(recorded_dir) != state_dir:
                    continue  # the same project name deployed from another state directory: not ours
                grpc_port = _ipv4_host_port(container.ports, GRPC_CONTAINER_PORT)
                rest_port = _ipv4_host_port(container.ports, REST_CONTAINER_PORT)
                if grpc_port is None:
                    continue
                bindings = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
                bind_host = ((bindings.get(GRPC_CONTAINER_PORT) or [{}])[0]).get("HostIp", "")
                return self._handle(container, grpc_port, rest_port, bind_host)
        return None

    def state(self, handle: ServerHandle) -> ProcessState:
        with _docker_errors(f"inspect container {handle.name}"):
            try:
                container = self.client.containers.get(handle.ident)
            except NotFound:
                return ProcessState(running=False, exit_code=None, detail="removed")
        st = container.attrs.get("State", {})
        status = str(st.get("Status", "unknown"))
        running = status == "running"
        exit_code = None if running else st.get("ExitCode")
        detail = "OOMKilled" if st.get("OOMKilled") else status
        return ProcessState(running=running, exit_code=exit_code, detail=detail)

    def logs(self, handle: ServerHandle, tail: int = 50) -> str:
        with _docker_errors(f"read the logs of container {handle.name}"):
            try:
                container = self.client.containers.get(handle.ident)
            except NotFound:
                return ""
            return self._container_logs(container, tail)

    def follow_logs(self, handle: ServerHandle, tail: int = 50) -> Iterator[str]:
        with _docker_errors(f"follow the logs of container {handle.name}"):
            try:
                container = self.client.containers.get(handle.ident)
            except NotFound:
                return
            # The daemon ends the stream when the container stops; chunks do not respect line ends.
            pending = b""
            for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True, tail=tail):
                pending += bytes(chunk)
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")

    def replicas(self, handle: ServerHandle) -> list[Replica]:
        return single_replica(handle, self.state(handle))

    def stop(self, handle: ServerHandle) -> None:
        with _docker_errors(f"stop container {handle.name}"):
            try:
                container = self.client.containers.get(handle.ident)
            except NotFound:
                return
            self._check_ours(container, handle)
            project = (container.labels or {}).get(LABEL_PROJECT, "")
            try:
                container.stop(timeout=STOP_TIMEOUT_SECONDS)
                container.remove(force=True)
            except NotFound:
                pass
            self._remove_network(project)

    def restart(self, handle: ServerHandle) -> ServerHandle:
        with _docker_errors(f"restart container {handle.name}"):
            container = self.client.containers.get(handle.ident)
            self._check_ours(container, handle)
            container.restart(timeout=STOP_TIMEOUT_SECONDS)
            # Random host ports (port 0) may change across a restart: read them back again.
            grpc_port, rest_port = self._published_ports(container)
        if grpc_port is None or rest_port is None:
            raise NotHealthy(
                f"container {handle.name} exited at once after a restart",
                details=self._container_logs(container, 50),
            )
        bind_host = handle.grpc_target.rpartition(":")[0]
        return self._handle(container, grpc_port, rest_port, bind_host)

    # ---- images ---------------------------------------------------------------------------------
    def image_labels(self, ref: str) -> dict[str, str] | None:
        """The labels of a local image, or None when it is absent. Never pulls."""
        with _docker_errors(f"inspect image {ref}"):
            try:
                image = self.client.images.get(ref)
            except ImageNotFound:
                return None
            return dict(image.labels or {})

    def image_id(self, ref: str) -> str | None:
        with _docker_errors(f"inspect image {ref}"):
            try:
                return str(self.client.images.get(ref).id)
            except ImageNotFound:
                return None

    def image_size(self, ref: str) -> int:
        with _docker_errors(f"inspect image {ref}", ref):
            return int(self.client.images.get(ref).attrs.get("Size", 0))

    def ensure_image(self, image: str) -> None:
        """Make ``image`` present locally, pulling it (with progress reports) when missing.

        Called by start() before anything is timed, so a slow pull never eats the health deadline.
        """
        if self.image_labels(image) is not None:
            return
        repository, tag = parse_repository_tag(image)
        self._report(f"image {image} is not present locally; pulling it")
        progress = PullProgress(image, self._report)
        try:
            stream = self.client.api.pull(repository, tag=tag or "latest", stream=True, decode=True)
            for event in stream:
                if "error" in event:
                    raise RuntimeUnavailable(
                        f"image {image} is not present locally and pulling it failed: {event['error']}",
                        hint=_make_image_hint(image),
                    )
                progress.update(event)
            progress.finish()
        except (DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(
                f"image {image} is not present locally and pulling it failed: {_short(exc)}",
                hint=_make_image_hint(image),
            ) from None
        if self.image_labels(image) is None:
            raise RuntimeUnavailable(
                f"pulling image {image} finished but it is not present", hint=_make_image_hint(image)
            )

    def build_image(
        self,
        context: bytes,
        tag: str,
        *,
        labels: dict[str, str],
        buildargs: dict[str, str] | None = None,
        on_output: Progress | None = None,
    ) -> str:
        """Build from an uncompressed tar ``context`` (with a Dockerfile at its root); return the image id."""
        tail: list[str] = []
        image_id = ""
        with _docker_errors(f"build image {tag}"):
            stream = self.client.api.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                tag=tag,
                labels=labels,
                buildargs=buildargs or {},
                rm=True,
                forcerm=True,
                decode=True,
                # A pip layer can be silent for minutes; the default read timeout would abort it.
                timeout=None,
            )
            for event in stream:
                if "error" in event:
                    raise DeployerError(
                        f"building image {tag} failed: {str(event['error']).strip()}", details="\n".join(tail[-30:])
                    )
                text = str(event.get("stream", ""))
                for line in text.splitlines():
                    if line.strip():
                        tail.append(line)
                        del tail[:-60]
                        if on_output is not None:
                            on_output(line)
                aux = event.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = str(aux["ID"])
        return image_id or (self.image_id(tag) or "")

    def import_rootfs(self, tarball: Path, ref: str, *, changes: list[str]) -> str:
        """``docker import``: an image from a root filesystem tarball; return its id."""
        repository, tag = parse_repository_tag(ref)
        with _docker_errors(f"import {tarball} as {ref}"):
            self.client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)
        image_id = self.image_id(ref)
        if image_id is None:
            raise DeployerError(f"importing {tarball} as {ref} did not produce an image")
        return image_id

    # ---- helpers ----------------------------------------------------------------------------------
    def _remove_stale(self, name: str, project: str) -> None:
        with _docker_errors(f"inspect container {name}"):
            try:
                container = self.client.containers.get(name)
            except NotFound:
                return
            labels = container.labels or {}
            if labels.get(LABEL_PROJECT) != project or labels.get(LABEL_MANAGED) != "true":
                raise RuntimeUnavailable(
                    f"a container named {name} exists and was not started by deployer for project {project}",
                    hint=f"remove or rename it (`docker rm -f {name}`), or rename the project",
                )
            if container.status in ("running", "restarting"):
                raise RuntimeUnavailable(
                    f"container {name} of project {project} is already running",
                    hint="stop it first (`deployer down`)",
                )
            container.remove(force=True)

    def _published_ports(self, container: Any) -> tuple[int | None, int | None]:
        # Docker fills NetworkSettings.Ports a moment after start; a container that died has none.
        deadline = time.monotonic() + _PORTS_WAIT_SECONDS
        while True:
            container.reload()
            grpc_port = _ipv4_host_port(container.ports, GRPC_CONTAINER_PORT)
            rest_port = _ipv4_host_port(container.ports, REST_CONTAINER_PORT)
            if grpc_port is not None and rest_port is not None:
                return grpc_port, rest_port
            if container.status not in ("created", "running", "restarting") or time.monotonic() > deadline:
                return grpc_port, rest_port
            time.sleep(0.1)

    @staticmethod
    def _container_logs(container: Any, tail: int) -> str:
        try:
            raw = container.logs(stdout=True, stderr=True, tail=tail)
        except NotFound:
            return ""
        return bytes(raw).decode("utf-8", errors="replace")

    @staticmethod
    def _check_ours(container: Any, handle: ServerHandle) -> None:
        """The container must be the one the handle describes: deployer's, the handle's project (by label
        and name), its spec and its state directory. Anything else is left alone."""
        labels = container.labels or {}
        project = labels.get(LABEL_PROJECT)
        problems = []
        if labels.get(LABEL_MANAGED) != "true" or project is None:
            problems.append("it carries no deployer labels")
        elif container_name(project) != handle.name or (handle.project and project != handle.project):
            problems.append(f"it belongs to project {project}")
        elif handle.spec_hash and labels.get(LABEL_SPEC_HASH) not in (None, handle.spec_hash):
            problems.append("its spec differs from the recorded one")
        elif handle.state_dir and labels.get(LABEL_STATE_DIR) not in (None, "", handle.state_dir):
            problems.append(f"it belongs to the state directory {labels.get(LABEL_STATE_DIR)}")
        if problems:
            raise UsageError(
                f"container {container.name} ({container.short_id}) is not the server recorded for"
                f" {handle.project or handle.name}: {problems[0]}; leaving it alone",
                hint="the state directory may point at a foreign container; `deployer down` clears the record",
            )

    def _ensure_network(self, project: str) -> str:
        """The project's own network, created (labelled as ours) when missing."""
        name = network_name(project)
        with _docker_errors(f"create network {name}"):
            try:
                network = self.client.networks.get(name)
            except NotFound:
                self.client.networks.create(
                    name,
                    driver="bridge",
                    labels={LABEL_PROJECT: project, LABEL_MANAGED: "true"},
                    # Containers on it (only this project's server) cannot reach each other either.
                    options={"com.docker.network.bridge.enable_icc": "false"},
                )
                return name
            labels = network.attrs.get("Labels") or {}
            if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_PROJECT) != project:
                raise RuntimeUnavailable(
                    f"a Docker network named {name} exists and was not created by deployer for project {project}",
                    hint=f"remove it (`docker network rm {name}`) or rename the project",
                )
        return name

    def _remove_network(self, project: str) -> None:
        """Remove the project's network once nothing is attached (best effort: a leftover is harmless)."""
        if not project:
            return
        with contextlib.suppress(DockerException, requests.exceptions.RequestException):
            network = self.client.networks.get(network_name(project))
            labels = network.attrs.get("Labels") or {}
            if labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_PROJECT) == project:
                network.reload()
                if not network.attrs.get("Containers"):
                    network.remove()

    def _handle(self, container: Any, grpc_port: int, rest_port: int | None, bind_host: str) -> ServerHandle:
        host = _dial_host(bind_host)
        labels = container.labels or {}
        weakenings = str(labels.get(LABEL_WEAKENINGS, ""))
        return ServerHandle(
            runtime=self.name,
            ident=str(container.id),
            name=str(container.name),
            grpc_target=f"{host}:{grpc_port}",
            rest_url=f"http://{host}:{rest_port}" if rest_port is not None else None,
            spec_hash=str(labels.get(LABEL_SPEC_HASH, "")),
            image=str(container.attrs.get("Config", {}).get("Image", "")) or None,
            started_at=_started_at(container.attrs),
            project=str(labels.get(LABEL_PROJECT, "")),
            state_dir=str(labels.get(LABEL_STATE_DIR, "")),
            weakenings=tuple(w for w in weakenings.split(",") if w),
        )

