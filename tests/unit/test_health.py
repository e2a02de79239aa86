"""deployer.health against a scripted fake client and a fake clock (no server, no sleeping)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from deployer.client import VersionStatus
from deployer.errors import NotHealthy, ServerRequestError
from deployer.health import MAX_DELAY_S, wait_healthy, wait_versions_available
from deployer.runtime.base import ProcessState

Script = Callable[[int], list[VersionStatus]]


def ok(version: int, state: str = "AVAILABLE") -> VersionStatus:
    return VersionStatus(version, state, "OK", "")


def unavailable() -> ServerRequestError:
    return ServerRequestError("GetModelStatus on fake: UNAVAILABLE: connection refused", code="UNAVAILABLE")


class FakeClient:
    """model_status answers from ``script(call_number)``; metadata by label from ``labels``."""

    def __init__(self, script: Script, labels: dict[str, int] | None = None, target: str = "fake:1") -> None:
        self.script = script
        self.labels = labels or {}
        self.target = target
        self.status_calls = 0
        self.metadata_calls: list[str | None] = []
        self.closed = False

    def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> Any:
        self.status_calls += 1
        return self.script(self.status_calls)

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None, timeout: Any = None) -> Any:
        self.metadata_calls.append(label)
        if label not in self.labels:
            raise ServerRequestError(f"Unrecognized servable version label: {label}", code="INVALID_ARGUMENT")
        return {"model_spec": {"name": model, "version": str(self.labels[label])}}

    def close(self) -> None:
        self.closed = True


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def raising(exc: Exception) -> Script:
    def script(_: int) -> list[VersionStatus]:
        raise exc

    return script


def test_healthy_at_once_checks_versions_and_labels() -> None:
    client = FakeClient(lambda _: [ok(1), ok(2)], labels={"stable": 1, "canary": 2})
    t = FakeTime()
    report = wait_healthy(
        client, {"iris": [1, 2]}, {"iris": {"stable": 1, "canary": 2}}, deadline_s=5, clock=t.clock, sleep=t.sleep
    )  # type: ignore[arg-type]
    assert report.checks == 1
    assert [s.version for s in report.models["iris"]] == [1, 2]
    assert sorted(client.metadata_calls) == ["canary", "stable"]
    assert report.labels == {"iris": {"stable": 1, "canary": 2}}
    assert t.sleeps == []
    assert report.to_json()["models"]["iris"][0]["state"] == "AVAILABLE"


def test_unavailable_port_is_waited_for_with_backoff() -> None:
    def script(n: int) -> list[VersionStatus]:
        if n <= 3:
            raise unavailable()
        return [ok(1)]

    t = FakeTime()
    report = wait_healthy(
        FakeClient(script, {"stable": 1}),  # type: ignore[arg-type]
        {"iris": [1]},
        {"iris": {"stable": 1}},
        deadline_s=10,
        clock=t.clock,
        sleep=t.sleep,
    )
    assert report.checks == 4
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert report.elapsed_s == pytest.approx(0.7)


def test_backoff_is_capped() -> None:
    t = FakeTime()
    with pytest.raises(NotHealthy):
        wait_healthy(
            FakeClient(raising(unavailable())),  # type: ignore[arg-type]
            {"iris": [1]},
            {},
            deadline_s=20,
            clock=t.clock,
            sleep=t.sleep,
        )
    assert max(t.sleeps) == MAX_DELAY_S
    assert sum(t.sleeps) == pytest.approx(20)


def test_loading_version_is_pending_until_available() -> None:
    states = ["START", "LOADING", "LOADING", "AVAILABLE"]
    t = FakeTime()
    report = wait_healthy(
        FakeClient(lambda n: [ok(1, states[min(n, 4) - 1])]),  # type: ignore[arg-type]
        {"iris": [1]},
        {},
        deadline_s=10,
        clock=t.clock,
        sleep=t.sleep,
    )
    assert report.checks == 4


def test_failed_load_fails_fast_with_the_log_tail() -> None:
    failed = VersionStatus(2, "END", "INVALID_ARGUMENT", "no saved_model.pb in /models/iris/2")
    t = FakeTime()
    with pytest.raises(NotHealthy) as info:
        wait_healthy(
            FakeClient(lambda _: [ok(1), failed]),  # type: ignore[arg-type]
            {"iris": [1, 2]},
            {},
            deadline_s=60,
            log_tail=lambda: "E load failed\n",
            clock=t.clock,
            sleep=t.sleep,
        )
    assert "version 2 failed to load" in info.value.message
    assert "no saved_model.pb" in info.value.message
    assert info.value.details is not None and "E load failed" in info.value.details
    assert info.value.exit_code == 4
    assert t.sleeps == []


def test_end_with_ok_is_not_a_failure_but_not_available_either() -> None:
    t = FakeTime()
    with pytest.raises(NotHealthy, match="not healthy after 1s"):
        wait_healthy(
            FakeClient(lambda _: [ok(1, "END")]),  # type: ignore[arg-type]
            {"iris": [1]},
            {},
            deadline_s=1,
            clock=t.clock,
            sleep=t.sleep,
        )


def test_exited_server_fails_fast_with_exit_code_and_tail() -> None:
    states = iter([ProcessState(True, None, "running"), ProcessState(False, 137, "OOMKilled")])
    t = FakeTime()
    with pytest.raises(NotHealthy) as info:
        wait_healthy(
            FakeClient(raising(unavailable())),  # type: ignore[arg-type]
            {"iris": [1]},
            {},
            deadline_s=120,
            server_state=lambda: next(states),
            log_tail=lambda: "Killed\n",
            clock=t.clock,
            sleep=t.sleep,
        )
    assert "exit code 137" in info.value.message and "OOMKilled" in info.value.message
    assert info.value.details is not None and "Killed" in info.value.details
    assert t.now - 100.0 < 1.0


def test_timeout_names_the_last_reason() -> None:
    t = FakeTime()
    with pytest.raises(NotHealthy) as info:
        wait_healthy(
            FakeClient(lambda _: [ok(1)], labels={"stable": 2}),  # type: ignore[arg-type]
            {"iris": [1]},
            {"iris": {"stable": 1}},
            deadline_s=3,
            log_tail=lambda: "",
            clock=t.clock,
            sleep=t.sleep,
        )
    assert "not healthy after 3s" in info.value.message
    assert "label stable resolves to 2, want 1" in info.value.message
    assert info.value.details == "server log: (empty)"
    assert t.now - 100.0 == pytest.approx(3.0)


def test_unknown_label_is_pending_not_fatal() -> None:
    client = FakeClient(lambda _: [ok(1)], labels={})
    t = FakeTime()

    def later(seconds: float) -> None:
        t.sleep(seconds)
        client.labels["stable"] = 1

    report = wait_healthy(
        client,  # type: ignore[arg-type]
        {"iris": [1]},
        {"iris": {"stable": 1}},
        deadline_s=5,
        clock=t.clock,
        sleep=later,
    )
    assert report.checks == 2


def test_a_broken_log_reader_does_not_mask_the_error() -> None:
    def broken() -> str:
        raise OSError("gone")

    t = FakeTime()
    with pytest.raises(NotHealthy) as info:
        wait_healthy(
            FakeClient(raising(unavailable())),  # type: ignore[arg-type]
            {"iris": [1]},
            {},
            deadline_s=1,
            log_tail=broken,
            clock=t.clock,
            sleep=t.sleep,
        )
    assert info.value.details is not None and "could not read the server log" in info.value.details


def test_fresh_clients_probe_until_the_port_answers() -> None:
    main = FakeClient(lambda _: [ok(1)])
    made: list[FakeClient] = []

    def fresh() -> Any:
        n = len(made)
        probe = FakeClient(raising(unavailable()) if n < 2 else (lambda _: [ok(1, "LOADING")]))
        made.append(probe)
        return probe

    t = FakeTime()
    report = wait_healthy(
        main,  # type: ignore[arg-type]
        {"iris": [1]},
        {},
        deadline_s=5,
        clock=t.clock,
        sleep=t.sleep,
        fresh_client=fresh,
    )
    # Two unreachable probes, one that answered (LOADING); then the caller's own client.
    assert len(made) == 3 and all(p.closed for p in made)
    assert main.status_calls == 1 and report.checks == 4


def test_wait_versions_available_ignores_labels() -> None:
    client = FakeClient(lambda _: [ok(1), ok(2)], labels={})
    t = FakeTime()
    report = wait_versions_available(client, "iris", [2], deadline_s=5, clock=t.clock, sleep=t.sleep)  # type: ignore[arg-type]
    assert client.metadata_calls == []
    assert report.labels == {}


def test_a_slow_load_is_reported_while_waiting() -> None:
    # LOADING for 30 s of fake time, then AVAILABLE: quiet at first, then every change and every 5 s.
    t = FakeTime()
    start = t.now

    def script(_: int) -> list[VersionStatus]:
        return [ok(7, "AVAILABLE" if t.now - start >= 30 else "LOADING")]

    reports: list[str] = []
    wait_healthy(
        FakeClient(script), {"iris": [7]}, {}, deadline_s=120, clock=t.clock, sleep=t.sleep, on_wait=reports.append
    )  # type: ignore[arg-type]
    assert reports, "a 30 s load said nothing"
    assert all("model iris: waiting for version(s) 7 (LOADING)" in line for line in reports)
    assert reports[0].startswith("waiting (2s of 120s)") or reports[0].startswith("waiting (3s of 120s)")
    seconds = [float(line.split("(")[1].split("s")[0]) for line in reports]
    assert all(b - a <= 5 + 2 for a, b in itertools.pairwise(seconds))
    assert 4 <= len(reports) <= 8


def test_a_quick_start_reports_nothing() -> None:
    t = FakeTime()
    reports: list[str] = []
    calls = iter([unavailable(), None, None])

    def script(_: int) -> list[VersionStatus]:
        exc = next(calls)
        if exc is not None:
            raise exc
        return [ok(1)]

    wait_healthy(
        FakeClient(script), {"iris": [1]}, {}, deadline_s=60, clock=t.clock, sleep=t.sleep, on_wait=reports.append
    )  # type: ignore[arg-type]
    assert reports == []
