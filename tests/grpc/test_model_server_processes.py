"""``--num_server_processes=2``: two processes on one gRPC and one REST port, one truth.

SO_REUSEPORT spreads *connections*, so each check runs over many independent channels (each with its
own connection: ``grpc.use_local_subchannel_pool``), every one pinned to a known process: a probe
sends one request and sees which process's line of ``deployer_model_server_process_requests_total``
(on the merged Prometheus page) went up. Uses only the ``model_server`` fixture's interface, so the
image tier adopts it (tests/docker/test_model_server_image.py).
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.grpc.conftest import (
    RunningServer,
    classify,
    config_text,
    model_entry,
    model_states,
    reload_config,
    rpc_error,
    run_to_exit,
    top_classes,
    wait_for,
)
from tests.savedmodels import IRIS_ROWS, write_model

pytestmark = pytest.mark.grpc

PROBES = 16  # connections; all on one of two processes: 2 * 2**-16
_PROCESS_LINE = re.compile(r'deployer_model_server_process_requests_total\{pid="(\d+)",process="(\d+)"\} (\S+)')


def metrics_page(server: RunningServer) -> str:
    """The Prometheus page over a new connection (so any process may answer it)."""
    with urllib.request.urlopen(f"{server.rest}/metrics", timeout=30) as response:
        return str(response.read().decode())


def per_process(server: RunningServer) -> dict[int, tuple[int, float]]:
    """process index -> (pid, requests answered)."""
    found = {}
    for line in metrics_page(server).splitlines():
        if match := _PROCESS_LINE.fullmatch(line):
            found[int(match.group(2))] = (int(match.group(1)), float(match.group(3)))
    return found


def request_count(server: RunningServer, model: str) -> float:
    text = metrics_page(server)
    match = re.search(rf':tensorflow:serving:request_count\{{model_name="{model}",status="OK"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


@dataclass
class Probe:
    channel: grpc.Channel
    process: int  # index: 0 is the owner
    pid: int


def open_probes(server: RunningServer, count: int = PROBES) -> list[Probe]:
    """``count`` channels with a connection each, every one pinned to the process that answered it."""
    probes = []
    for _ in range(count):
        channel = grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
        before = per_process(server)
        classify(channel, "clf", [IRIS_ROWS[0]])
        after = per_process(server)
        moved = [i for i, (pid, n) in after.items() if n != before.get(i, (pid, 0.0))[1]]
        assert len(moved) == 1, f"one request, one process: {before} -> {after}"
        probes.append(Probe(channel, moved[0], after[moved[0]][0]))
    return probes


def status_of(channel: grpc.Channel, model: str) -> object:
    return model_states(channel, model)


def answer(channel: grpc.Channel, model: str = "clf", **spec: object) -> tuple[str, int]:
    response = classify(channel, model, [IRIS_ROWS[0]], **spec)  # type: ignore[arg-type]
    return top_classes(response)[0], response.model_spec.version.value  # type: ignore[attr-defined]


def same_everywhere(probes: list[Probe], look: Callable[[grpc.Channel], object]) -> object:
    """What ``look`` sees over every probe, asserted identical; returns it."""
    seen = {probe.pid: look(probe.channel) for probe in probes}
    first = next(iter(seen.values()))
    assert all(value == first for value in seen.values()), seen
    return first


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    return rpc_error(call).code()  # type: ignore[attr-defined,no-any-return]


class TestTwoProcesses:
    """One server walked through reloads, a label move, metrics, a dead follower and SIGTERM (ordered)."""

    @pytest.fixture(scope="class")
    def served(
        self, model_server: Callable[..., RunningServer], tmp_path_factory: pytest.TempPathFactory
    ) -> tuple[RunningServer, Path, list[Probe]]:
        root = tmp_path_factory.mktemp("models")
        write_model(root / "clf", 1, "good")
        monitoring = root / "monitoring.config"
        monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
        server = model_server(
            config_text(model_entry("clf", root / "clf", "all {}")),
            "--num_server_processes=2",
            "--file_system_poll_wait_seconds=1",
            f"--monitoring_config_file={monitoring}",
        )
        wait_for(lambda: len(per_process(server)) == 2, what="two processes on the metrics page")
        return server, root, open_probes(server)

    def test_1_connections_land_on_both_processes(self, served: tuple[RunningServer, Path, list[Probe]]) -> None:
        server, _root, probes = served
        processes = per_process(server)
        assert sorted(processes) == [0, 1]
        assert processes[0][0] != processes[1][0]
        assert {p.process for p in probes} == {0, 1}, "SO_REUSEPORT should spread 16 connections over both"

    def test_2_status_and_answers_are_the_same_in_every_process(
        self, served: tuple[RunningServer, Path, list[Probe]]
    ) -> None:
        server, _root, probes = served
        assert same_everywhere(probes, lambda ch: status_of(ch, "clf")) == {1: ("AVAILABLE", 0, "")}
        assert same_everywhere(probes, answer) == ("0", 1)
        assert code_of(lambda: answer(probes[0].channel, "nope")) == grpc.StatusCode.NOT_FOUND
        rest = {_rest_status(server) for _ in range(8)}  # new connections each
        assert len(rest) == 1 and '"state": "AVAILABLE"' in rest.pop()

    def test_3_a_reload_sent_to_a_follower_adds_a_model_everywhere(
        self, served: tuple[RunningServer, Path, list[Probe]]
    ) -> None:
        _server, root, probes = served
        write_model(root / "other", 5, "wrong")
        follower = next(p for p in probes if p.process == 1)
        reload_config(
            follower.channel,
            config_text(
                model_entry("clf", root / "clf", "all {}", {"stable": 1}),
                model_entry("other", root / "other"),
            ),
        )
        # Answered only once the new model is AVAILABLE: in every process, with no waiting here.
        assert same_everywhere(probes, lambda ch: answer(ch, "other")) == ("2", 5)
        assert same_everywhere(probes, lambda ch: answer(ch, label="stable")) == ("0", 1)
        assert same_everywhere(probes, lambda ch: status_of(ch, "other")) == {5: ("AVAILABLE", 0, "")}

    def test_4_a_label_moves_only_once_its_version_is_available_in_every_process(
        self, served: tuple[RunningServer, Path, list[Probe]]
    ) -> None:
        server, root, probes = served
        owner = next(p for p in probes if p.process == 0)
        follower = next(p for p in probes if p.process == 1)
        both = config_text(
            model_entry("clf", root / "clf", "all {}", {"stable": 2}), model_entry("other", root / "other")
        )
        server.signal_process(follower.pid, signal.SIGSTOP)  # the follower cannot load version 2 now
        try:
            write_model(root / "clf", 2, "wrong")  # found by the owner's file-system poll (1 s)
            wait_for(lambda: 2 in status_of(owner.channel, "clf"), what="version 2 seen")  # type: ignore[operator]
            time.sleep(3)  # ample for the owner's own copy to load: only the follower is missing
            assert status_of(owner.channel, "clf")[2][0] == "LOADING"  # type: ignore[index]
            assert answer(owner.channel) == ("0", 1)  # latest is still 1 everywhere
            err = rpc_error(lambda: reload_config(owner.channel, both))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert err.details() == (  # type: ignore[attr-defined]
                "Request to assign label to version 2 of model clf, which is not currently available for inference"
            )
        finally:
            server.signal_process(follower.pid, signal.SIGCONT)
        wait_for(lambda: status_of(owner.channel, "clf")[2][0] == "AVAILABLE", what="version 2 AVAILABLE")  # type: ignore[index]
        reload_config(follower.channel, both)
        assert same_everywhere(probes, lambda ch: answer(ch, label="stable")) == ("2", 2)
        assert same_everywhere(probes, answer) == ("2", 2)
        assert same_everywhere(probes, lambda ch: status_of(ch, "clf")) == {
            2: ("AVAILABLE", 0, ""),
            1: ("AVAILABLE", 0, ""),
        }

    def test_5_a_reload_sent_to_a_follower_unloads_a_model_everywhere(
        self, served: tuple[RunningServer, Path, list[Probe]]
    ) -> None:
        _server, root, probes = served
        owner = next(p for p in probes if p.process == 0)
        follower = next(p for p in probes if p.process == 1)
        reload_config(follower.channel, config_text(model_entry("clf", root / "clf", "all {}", {"stable": 2})))
        for probe in probes:  # gone from every process as soon as the reload answered
            assert code_of(lambda ch=probe.channel: answer(ch, "other")) == grpc.StatusCode.NOT_FOUND
        wait_for(lambda: status_of(owner.channel, "other") == {5: ("END", 0, "")}, what="other END")
        assert same_everywhere(probes, lambda ch: status_of(ch, "other")) == {5: ("END", 0, "")}
        assert same_everywhere(probes, lambda ch: answer(ch, label="stable")) == ("2", 2)

    def test_6_a_reload_its_caller_gave_up_on_is_given_up_by_the_owner(
        self, served: tuple[RunningServer, Path, list[Probe]]
    ) -> None:
        _server, root, probes = served
        owner = next(p for p in probes if p.process == 0)
        follower = next(p for p in probes if p.process == 1)
        (root / "empty").mkdir()  # a new model without versions: its reload waits for it
        stable = model_entry("clf", root / "clf", "all {}", {"stable": 2})
        waiting = config_text(stable, model_entry("empty", root / "empty"))
        err = rpc_error(lambda: reload_config(follower.channel, waiting, timeout=3))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        # The owner stopped waiting too: it would otherwise hold the config and block this reload.
        started = time.monotonic()
        reload_config(owner.channel, config_text(stable), timeout=30)
        assert time.monotonic() - started < 10
        assert same_everywhere(probes, lambda ch: answer(ch, label="stable")) == ("2", 2)

    def test_7_metrics_are_the_sum_over_both_processes(self, served: tuple[RunningServer, Path, list[Probe]]) -> None:
        server, _root, probes = served
        pages = {metrics_page(server) for _ in range(8)}  # new connections: both processes answer some
        assert len(pages) == 1, "every process serves the same (merged) page"
        before_total, before = request_count(server, "clf"), per_process(server)
        for probe in probes:
            for _ in range(3):
                answer(probe.channel)
        after_total, after = request_count(server, "clf"), per_process(server)
        assert after_total - before_total == 3 * len(probes)
        for index in (0, 1):
            sent = 3 * sum(p.process == index for p in probes)
            assert after[index][1] - before[index][1] == sent
        page = pages.pop()
        loads = re.findall(
            r':tensorflow:cc:saved_model:load_attempt_count\{model_path="[^"]*/clf/1",status="success"\} (\S+)', page
        )
        assert loads == ["2.0"], "each process loaded version 1 once"

    def test_8_a_follower_that_dies_is_restarted_in_step(self, served: tuple[RunningServer, Path, list[Probe]]) -> None:
        server, _root, probes = served
        owner = next(p for p in probes if p.process == 0)
        dead = next(p for p in probes if p.process == 1)
        server.signal_process(dead.pid, signal.SIGKILL)
        wait_for(lambda: f"Server process 1 (pid {dead.pid}) exited unexpectedly" in server.log(), what="noticed")
        assert "killed by SIGKILL" in server.log()
        # The owner kept serving meanwhile.
        assert answer(owner.channel, label="stable") == ("2", 2)
        wait_for(lambda: per_process(server).get(1, (dead.pid,))[0] != dead.pid, timeout=120, what="a new process 1")
        fresh = open_probes(server)
        assert {p.pid for p in fresh if p.process == 1} - {dead.pid}, "the replacement takes connections"
        assert same_everywhere(fresh, lambda ch: answer(ch, label="stable")) == ("2", 2)
        assert same_everywhere(fresh, lambda ch: answer(ch, version=1)) == ("0", 1)
        assert same_everywhere(fresh, lambda ch: status_of(ch, "clf")) == status_of(owner.channel, "clf")
        for probe in fresh:
            assert code_of(lambda ch=probe.channel: answer(ch, "other")) == grpc.StatusCode.NOT_FOUND
        probes[:] = [p for p in probes if p.pid != dead.pid] + fresh

    def test_9_sigterm_stops_every_process(self, served: tuple[RunningServer, Path, list[Probe]]) -> None:
        server, _root, probes = served
        pids = {index: pid for index, (pid, _n) in per_process(server).items()}
        for probe in probes:
            probe.channel.close()
        server.stop()  # SIGTERM to the owner (the container's PID 1 in the image tier)
        assert server.exit_code() == 0, server.log()[-3000:]
        for pid in pids.values():
            assert not server.process_alive(pid)


def _rest_status(server: RunningServer) -> str:
    with urllib.request.urlopen(f"{server.rest}/v1/models/clf", timeout=30) as response:
        return str(response.read().decode())


def test_num_server_processes_is_bounded(tmp_path: Path) -> None:
    for value in ("0", "65", "two"):
        result = run_to_exit(f"--num_server_processes={value}", f"--model_base_path={tmp_path}")
        assert result.returncode == 1
        assert (
            "--num_server_processes must be between 1 and 64" in result.stderr
            or f"Couldn't interpret value {value} for flag num_server_processes." in result.stderr
        )
