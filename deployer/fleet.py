"""A server as a fleet of replicas: one gRPC client per replica endpoint.

Health, smoke and promote loop over a Fleet; the local and docker runtimes give a fleet of one, the
swarm runtime one member per task. Like deployer.client it never touches Docker or processes: the
endpoints come from a ServerHandle the runtime filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from deployer.client import ServingClient
from deployer.runtime.base import Endpoint


@dataclass(frozen=True)
class Member:
    endpoint: Endpoint
    client: ServingClient

    @property
    def slot(self) -> int:
        return self.endpoint.slot

    @property
    def name(self) -> str:
        return f"replica {self.endpoint.slot} ({self.client.target})"


class Fleet:
    """The replicas of one server, in slot order. Closing the fleet closes the clients it opened."""

    def __init__(self, members: Sequence[Member], *, owned: bool = True) -> None:
        if not members:
            raise ValueError("a fleet needs at least one member")
        self.members = list(members)
        self._owned = owned

    @classmethod
    def connect(
        cls,
        endpoints: Sequence[Endpoint],
        *,
        timeout: float = 10.0,
        client_factory: Callable[..., ServingClient] = ServingClient,
    ) -> Fleet:
        return cls([Member(e, client_factory(e.grpc_target, timeout=timeout)) for e in endpoints])

    @classmethod
    def of(cls, client: ServingClient) -> Fleet:
        """A fleet of one around a client the caller owns (and closes)."""
        return cls([Member(Endpoint(client.target, None), client)], owned=False)

    @property
    def first(self) -> Member:
        return self.members[0]

    def where(self, member: Member) -> str:
        """" on replica K (target)" in a fleet, "" for a lone server: messages stay as they were."""
        return f" on {member.name}" if len(self.members) > 1 else ""

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def close(self) -> None:
        if self._owned:
            for member in self.members:
                member.client.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
