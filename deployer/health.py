"""Readiness per version and per label, judged over gRPC (TF Serving has no readiness URL, serving#1754).

Healthy means: the gRPC port answers, every wanted version is AVAILABLE per GetModelStatus, and every
label resolves to its version (GetModelMetadata by label echoes the resolved version). Anything short
of that before the deadline is NotHealthy, with the server's log tail, so "not ready" always says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deployer.client import ServingClient, VersionStatus
from deployer.errors import NotHealthy, ServerRequestError
from deployer.runtime.base import ProcessState

if TYPE_CHECKING:
    from deployer.fleet import Fleet

# Backoff between checks: fast enough to notice a warm server within ~0.1 s, gentle on a slow cold load.
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
# One check never waits on a single RPC longer than this, so a wedged server cannot eat the deadline.
RPC_TIMEOUT_S = 5.0
# While waiting, what it waits for is reported when it changes, and at least this often; a server that
# is healthy within QUIET_FIRST_S says nothing.
REPORT_EVERY_S = 5.0
QUIET_FIRST_S = 2.0


@dataclass(frozen=True)
class HealthReport:
    models: dict[str, list[VersionStatus]]
    labels: dict[str, dict[str, int]]
    elapsed_s: float
    checks: int

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {
                name: [
                    {"version": s.version, "state": s.state, "error_code": s.error_code, "error": s.error_message}
                    for s in statuses
                ]
                for name, statuses in self.models.items()
            },
            "labels": {name: dict(labels) for name, labels in self.labels.items()},
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": self.checks,
        }


@dataclass
class _Check:
    """The outcome of one round of checks: healthy, or the reason it is not (yet)."""

    healthy: bool
    reason: str = ""
    unreachable: bool = False
    statuses: dict[str, list[VersionStatus]] = field(default_factory=dict)


class _Failed(Exception):
    """A condition that no amount of waiting fixes (a failed load)."""


def _check_once(
    client: ServingClient,
    wanted: Mapping[str, Collection[int]],
    labels: Mapping[str, Mapping[str, int]],
    rpc_timeout: float,
) -> _Check:
    statuses: dict[str, list[VersionStatus]] = {}
    try:
        for model, versions in wanted.items():
            found = client.model_status(model, timeout=rpc_timeout)
            statuses[model] = sorted(found, key=lambda s: s.version)
            by_version = {s.version: s for s in found}
            for version in sorted(versions):
                status = by_version.get(version)
                if status is not None and status.failed:
                    raise _Failed(
                        f"model {model} version {version} failed to load: {status.error_code}: {status.error_message}"
                    )
            pending = [
                f"{v} ({by_version[v].state if v in by_version else 'not yet seen'})"
                for v in sorted(versions)
                if v not in by_version or not by_version[v].available
            ]
            if pending:
                reason = f"model {model}: waiting for version(s) {', '.join(pending)}"
                return _Check(False, reason, statuses=statuses)
        for model, model_labels in labels.items():
            for label, version in sorted(model_labels.items()):
                meta = client.metadata(model, label=label, timeout=rpc_timeout)
                # Int64Value renders as a JSON string; a missing field means the server resolved nothing.
                served = int(meta.get("model_spec", {}).get("version", 0) or 0)
                if served != version:
                    reason = f"model {model}: label {label} resolves to {served or 'nothing'}, want {version}"
                    return _Check(False, reason, statuses=statuses)
    except ServerRequestError as exc:
        # UNAVAILABLE is the normal answer of a port that opens only once the models are loaded;
        # NOT_FOUND/INVALID_ARGUMENT are models or labels not registered yet. All are "not yet".
        if exc.code == "UNAVAILABLE":
            reason = f"the gRPC port {client.target} does not answer yet"
            return _Check(False, reason, statuses=statuses, unreachable=True)
        return _Check(False, exc.message, statuses=statuses)
    return _Check(True, "", statuses=statuses)


def divergence(
    client: ServingClient,
    wanted: Mapping[str, Collection[int]],
    labels: Mapping[str, Mapping[str, int]],
    *,
    rpc_timeout: float = RPC_TIMEOUT_S,
) -> str | None:
    """How a running server's live state differs from the config it should serve; None when it matches
    or does not answer (then there is nothing to compare, and the health wait says why).

    TF Serving has no "get config" RPC, so the live config is read back from what it serves: every
    wanted version AVAILABLE, no other version AVAILABLE, every label resolving to its version. An
    outside HandleReloadConfigRequest (anyone who reaches the gRPC port can send one) shows up here.
    """
    try:
        for model, versions in wanted.items():
            try:
                found = client.model_status(model, timeout=rpc_timeout)
            except ServerRequestError as exc:
                if exc.code == "NOT_FOUND":
                    return f"model {model} is not served"
                raise
            available = {s.version for s in found if s.available}
            missing = sorted(set(versions) - available)
            extra = sorted(available - set(versions))
            if missing:
                return f"model {model}: version(s) {missing} not AVAILABLE"
            if extra:
                return f"model {model}: version(s) {extra} served but not in the config"
        for model, model_labels in labels.items():
            for label, version in sorted(model_labels.items()):
                try:
                    meta = client.metadata(model, label=label, timeout=rpc_timeout)
                except ServerRequestError as exc:
                    if exc.code in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
                        return f"model {model}: label {label} does not resolve"
                    raise
                served = int(meta.get("model_spec", {}).get("version", 0) or 0)
                if served != version:
                    return f"model {model}: label {label} resolves to {served or 'nothing'}, not {version}"
    except ServerRequestError:
        return None
    return None


def exit_message(state: ProcessState) -> str:
    code = "unknown exit code" if state.exit_code is None else f"exit code {state.exit_code}"
    detail = f", {state.detail}" if state.detail and state.detail not in ("exited", "running") else ""
    return f"the server exited ({code}{detail}) before it became healthy"


def safe_tail(log_tail: Callable[[], str] | None) -> str | None:
    if log_tail is None:
        return None
    try:
        tail = log_tail()
    except Exception as exc:  # the tail is context for an error already being raised; never mask it
        return f"(could not read the server log: {exc})"
    return "server log (tail):\n" + tail if tail.strip() else "server log: (empty)"


def wait_healthy(
    client: ServingClient,
    wanted: Mapping[str, Collection[int]],
    labels: Mapping[str, Mapping[str, int]],
    *,
    deadline_s: float,
    server_state: Callable[[], ProcessState] | None = None,
    log_tail: Callable[[], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    fresh_client: Callable[[], ServingClient] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> HealthReport:
    """Block until healthy or raise NotHealthy (timeout, failed load, server exited) with the log tail.

    ``on_wait`` receives "still waiting" reports (elapsed seconds and the reason) when the reason
    changes and at least every REPORT_EVERY_S, so a slow load is never silent.

    ``fresh_client`` builds a new client for checks while the port is not answering yet: a gRPC
    channel that saw UNAVAILABLE sits in reconnect backoff (growing to minutes), which would delay
    noticing a server that has just opened its port. Defaults to a new ServingClient on the same target.
    """
    if fresh_client is None and isinstance(client, ServingClient):
        target, timeout = client.target, client.timeout

        def fresh_client() -> ServingClient:
            return ServingClient(target, timeout=timeout)

    started = clock()
    delay = FIRST_DELAY_S
    checks = 0
    answered = False
    reported_reason, reported_at = "", started
    while True:
        checks += 1
        remaining = deadline_s - (clock() - started)
        rpc_timeout = max(0.05, min(RPC_TIMEOUT_S, remaining))
        probe = client if answered or fresh_client is None else fresh_client()
        try:
            outcome = _check_once(probe, wanted, labels, rpc_timeout)
        except _Failed as exc:
            raise NotHealthy(str(exc), details=safe_tail(log_tail), hint="check the model's export") from None
        finally:
            if probe is not client:
                probe.close()
        if outcome.healthy:
            return HealthReport(
                models=outcome.statuses,
                labels={m: dict(ls) for m, ls in labels.items()},
                elapsed_s=clock() - started,
                checks=checks,
            )
        answered = answered or not outcome.unreachable
        if server_state is not None:
            state = server_state()
            if not state.running:
                raise NotHealthy(exit_message(state), details=safe_tail(log_tail))
        elapsed = clock() - started
        if elapsed >= deadline_s:
            raise NotHealthy(
                f"not healthy after {deadline_s:g}s: {outcome.reason}",
                details=safe_tail(log_tail),
                hint="raise server.health_deadline_seconds if the model is slow to load",
            )
        now = clock()
        due = outcome.reason != reported_reason or now - reported_at >= REPORT_EVERY_S
        if on_wait is not None and elapsed >= QUIET_FIRST_S and due:
            on_wait(f"waiting ({elapsed:.0f}s of {deadline_s:g}s): {outcome.reason}")
            reported_reason, reported_at = outcome.reason, now
        sleep(max(0.0, min(delay, deadline_s - elapsed)))
        delay = min(delay * 2, MAX_DELAY_S)


def wait_versions_available(
    client: ServingClient,
    model: str,
    versions: Collection[int],
    *,
    deadline_s: float,
    server_state: Callable[[], ProcessState] | None = None,
    log_tail: Callable[[], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> HealthReport:
    """Wait until ``versions`` of ``model`` are AVAILABLE (no label checks): the middle step of a label swap."""
    return wait_healthy(
        client,
        {model: tuple(versions)},
        {},
        deadline_s=deadline_s,
        server_state=server_state,
        log_tail=log_tail,
        clock=clock,
        sleep=sleep,
    )


def _named(report: Callable[[str], None] | None, name: str) -> Callable[[str], None] | None:
    if report is None:
        return None

    def named(line: str) -> None:
        report(f"{name}: {line}")

    return named


def wait_fleet_healthy(
    fleet: Fleet,
    wanted: Mapping[str, Collection[int]],
    labels: Mapping[str, Mapping[str, int]],
    *,
    deadline_s: float,
    server_state: Callable[[], ProcessState] | None = None,
    log_tail: Callable[[], str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[str], None] | None = None,
) -> HealthReport:
    """Every replica healthy within one deadline: a fleet is ready only when each member is.

    The report is the first replica's (every replica serves the same config), with the checks of all.
    """
    started = clock()
    reports = []
    for member in fleet:
        remaining = max(0.0, deadline_s - (clock() - started))
        try:
            report = wait_healthy(
                member.client, wanted, labels, deadline_s=remaining, server_state=server_state,
                log_tail=log_tail, clock=clock, sleep=sleep,
                on_wait=_named(on_wait, member.name) if len(fleet) > 1 else on_wait,
            )  # fmt: skip
            reports.append(report)
        except NotHealthy as exc:
            if len(fleet) > 1:
                exc.message = f"{member.name}: {exc.message}"
                exc.args = (exc.message,)
            raise
    first = reports[0]
    return HealthReport(first.models, first.labels, clock() - started, sum(r.checks for r in reports))
