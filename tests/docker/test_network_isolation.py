"""Issue 9, item 4: any container on the default Docker bridge could unload every model.

The server listens on 0.0.0.0 inside its container and TF Serving's ModelService
(HandleReloadConfigRequest) has no authentication; on the default bridge a throwaway container
reloaded an empty config and `stable` vanished. Each project now has its own bridge network, which
Docker isolates from the default bridge and from other networks; only the ports published on
127.0.0.1 lead in.
"""

from __future__ import annotations

from typing import Any

import pytest

from deployer.runtime.docker import LABEL_MANAGED, LABEL_PROJECT, DockerRuntime, network_name
from tests.docker.conftest import LaunchFactory
from tests.docker.test_runtime_docker import _wait_available

pytestmark = pytest.mark.docker

PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], 8500), timeout=3).close()\n"
    "except OSError as exc:\n"
    "    print('unreachable', exc); sys.exit(3)\n"
    "print('reached'); sys.exit(0)\n"
)


def _probe(client: Any, image: str, project: str, address: str, network: str) -> tuple[int, str]:
    """Try to open the server's gRPC port from a throwaway container on ``network``."""
    container = client.containers.run(
        image, ["-c", PROBE, address], entrypoint="python3", network=network, detach=True,
        labels={LABEL_PROJECT: project}, user="10001:10001",
    )  # fmt: skip
    try:
        code = int(container.wait(timeout=60)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_server_is_alone_on_its_project_network(
    runtime: DockerRuntime, launch: LaunchFactory, project: str, image: str
) -> None:
    import socket

    handle = runtime.start(launch())
    try:
        container = runtime.client.containers.get(handle.ident)
        networks = container.attrs["NetworkSettings"]["Networks"]
        assert list(networks) == [network_name(project)], "the server must not be on the default bridge"
        network = runtime.client.networks.get(network_name(project))
        assert network.attrs["Labels"][LABEL_PROJECT] == project and network.attrs["Labels"][LABEL_MANAGED] == "true"
        assert network.attrs["Options"].get("com.docker.network.bridge.enable_icc") == "false"
        address = networks[network_name(project)]["IPAddress"]
        # Control: the server does listen there (the host reaches every bridge), so a refusal below is
        # isolation. Its ports open once the model is loaded.
        assert _wait_available(handle.grpc_target, "clf") == "AVAILABLE"
        socket.create_connection((address, 8500), timeout=5).close()
        code, output = _probe(runtime.client, image, project, address, "bridge")
        assert code == 3 and "unreachable" in output, f"a container on the default bridge reached the server: {output}"
    finally:
        runtime.stop(handle)
    from docker.errors import NotFound

    with pytest.raises(NotFound):  # stop() removed the project's network with its last container
        runtime.client.networks.get(network_name(project))


def test_a_foreign_network_with_the_projects_name_is_refused(
    runtime: DockerRuntime, launch: LaunchFactory, project: str
) -> None:
    from deployer.errors import RuntimeUnavailable

    squatter = runtime.client.networks.create(network_name(project))
    try:
        with pytest.raises(RuntimeUnavailable, match="was not created by deployer"):
            runtime.start(launch())
    finally:
        squatter.remove()
