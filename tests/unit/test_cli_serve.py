"""deployer up/smoke/status/logs/down through the CLI boundary: exit codes, one-line errors, --json shapes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from deployer import orchestrate
from deployer.cli import main
from deployer.client import ClassifyResult, VersionStatus
from deployer.errors import NotHealthy, RuntimeUnavailable, ServerRequestError
from deployer.export import ExportResult
from deployer.fleet import Fleet, Member
from deployer.health import HealthReport
from deployer.runtime.base import Endpoint, ProcessState, ServerHandle
from deployer.smoke import CaseResult, SmokeReport
from tests.fakes import InferViaClassify
from tests.unit.test_orchestrate import write_manifest

HANDLE = ServerHandle("local", "4242", "deployer.model_server", "127.0.0.1:5000", "http://127.0.0.1:5001", "abc")
FLEET_HANDLE = ServerHandle("swarm", "svc", "deployer-p", "127.0.0.1:5000", None, "abc", replicas=2)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def case(passed: bool) -> CaseResult:
    got = "0" if passed else "2"
    why = "" if passed else f"expected class '0', got {got!r} (score 0.900)"
    return CaseResult("setosa", "classify", "0", got, passed, 0.004, 1, why=why, details={"score": 0.9})


def up_report(passed: bool = True) -> orchestrate.UpReport:
    smoke = SmokeReport("iris", HANDLE.grpc_target, "grpc", None, "stable", [case(passed)], 0.01)
    statuses = [VersionStatus(1, "AVAILABLE", "OK", "")]
    return orchestrate.UpReport(
        project="p",
        runtime="local",
        runtime_reason="--runtime says local",
        action="started",
        action_reason="no server was running",
        handle=HANDLE,
        models=[orchestrate.ModelView("iris", "/x/exports/iris", statuses, {"stable": 1})],
        exported=[ExportResult("iris", 1, Path("/x/exports/iris/1"), {"accuracy": 0.97}, 1.0, 0.5)],
        smoke=[smoke],
        health=HealthReport({"iris": statuses}, {"iris": {"stable": 1}}, 0.5, 3),
        timings={"runtime": 0, "train": 1.0, "export": 0.5, "start": 0.1, "healthy": 0.5, "smoke": 0.01, "total": 2.2},
    )


@pytest.fixture()
def manifest(tmp_path: Path) -> str:
    return str(write_manifest(tmp_path))


def test_up_json_shape(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_up(m: Any, **kwargs: Any) -> orchestrate.UpReport:
        seen.update(kwargs)
        return up_report()

    monkeypatch.setattr(orchestrate, "up", fake_up)
    result = run("up", "-f", manifest, "--runtime", "local", "--retrain", "--image", "img:1", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {
        "project", "runtime", "runtime_reason", "action", "action_reason", "server", "models", "exported", "smoke",
        "health", "timings_s", "next", "weakenings",
    }  # fmt: skip
    assert doc["next"][-1] == f"deployer down -f {manifest}"
    assert doc["server"]["grpc"] == "127.0.0.1:5000" and doc["server"]["rest"] == "http://127.0.0.1:5001"
    assert doc["models"][0]["versions"][0] == {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error": None}
    assert doc["models"][0]["labels"] == {"stable": 1}
    assert doc["smoke"]["passed"] is True and doc["smoke"]["reports"][0]["cases"][0]["latency_ms"] == 4.0
    assert set(doc["timings_s"]) == {"runtime", "train", "export", "start", "healthy", "smoke", "total"}
    assert seen["runtime_choice"] == "local" and seen["retrain"] is True and seen["image"] == "img:1"


def test_up_summary_for_people(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrate, "up", lambda m, **kw: up_report())
    result = run("up", "-f", manifest)
    assert result.exit_code == 0, result.output
    expected = ("local", "127.0.0.1:5000", "AVAILABLE", "stable", "passed: 1 of 1 case(s)", "timings:", "healthy 0.50s")
    for text in expected:
        assert text in result.stdout


def test_up_summary_lists_the_next_commands(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrate, "up", lambda m, **kw: up_report())
    monkeypatch.setenv("DEPLOYER_PROG", "bin/deployer")
    result = run("up", "-f", manifest)
    assert result.exit_code == 0, result.output
    steps = result.stdout.split("next:\n", 1)[1].splitlines()
    assert steps[0].startswith("  curl -s -X POST http://127.0.0.1:5001/v1/models/iris/labels/stable:classify -d ")
    body = json.loads(steps[0].split(" -d ", 1)[1].strip("'"))
    assert body["examples"][0]["SepalLength"] == 5.1 and body["signature_name"] == "serving_default"
    assert f"  bin/deployer smoke -f {manifest}" in steps
    assert f"  bin/deployer down -f {manifest}" in steps
    assert any("promote" in step for step in steps)
    assert "exported but not served" not in result.stdout


def test_up_retrain_says_the_new_version_is_not_served_and_how_to_serve_it(
    manifest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrained = up_report()
    new = ExportResult("iris", 2, Path("/x/exports/iris/2"), {"accuracy": 0.98}, 1.0, 0.5)
    monkeypatch.setattr(orchestrate, "up", lambda m, **kw: replace(retrained, exported=[new]))
    result = run("up", "-f", manifest, "--retrain")
    assert result.exit_code == 0, result.output
    assert "iris version 2 is exported but not served: the deployed config keeps stable → 1" in result.stdout
    steps = result.stdout.split("next:\n", 1)[1].splitlines()
    assert steps[0] == f"  deployer promote 2 -f {manifest}"
    doc = json.loads(run("up", "-f", manifest, "--retrain", "--json").stdout)
    assert doc["next"][0] == f"deployer promote 2 -f {manifest}"


def test_up_smoke_failure_exits_5_after_the_summary(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrate, "up", lambda m, **kw: up_report(passed=False))
    result = run("up", "-f", manifest, "--json")
    assert result.exit_code == 5
    assert json.loads(result.stdout)["smoke"]["passed"] is False
    failed = "smoke failed: iris label stable: 1 of 1 case(s) failed; setosa: expected class '0', got '2'"
    assert failed in result.stderr


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotHealthy("the server exited (exit code 1)", details="server log (tail):\nboom"), 4),
        (RuntimeUnavailable("the gRPC port 127.0.0.1:8500 is already in use", hint="set grpc_port: 0"), 3),
    ],
)
def test_up_errors_map_to_exit_codes(
    manifest: str, monkeypatch: pytest.MonkeyPatch, error: Exception, code: int
) -> None:
    def fail(m: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(orchestrate, "up", fail)
    result = run("up", "-f", manifest)
    assert result.exit_code == code
    assert result.stderr.startswith(f"deployer: error: {error}\n")
    assert "Traceback" not in result.stderr


def test_bad_manifest_and_bad_flags_exit_2(tmp_path: Path) -> None:
    assert run("up", "-f", str(tmp_path / "missing.yaml")).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: x\nmodels: []\n")
    result = run("status", "-f", str(bad))
    assert result.exit_code == 2 and "models" in result.stderr
    assert run("up", "-f", str(bad), "--runtime", "kubernetes").exit_code == 2
    assert run("logs", "-f", str(bad), "--tail", "0").exit_code == 2


class FakeClient(InferViaClassify):
    target = HANDLE.grpc_target

    def __init__(self, wrong: bool) -> None:
        self.wrong = wrong
        self.closed = False

    def classify(
        self, model: str, examples: Sequence[Mapping[str, float]], *, version: int | None = None,
        label: str | None = None, signature_name: str = "serving_default", timeout: float | None = None,
    ) -> ClassifyResult:  # fmt: skip
        got = "2" if self.wrong or examples[0]["PetalLength"] > 3 else "0"
        scores = [(c, 0.9 if c == got else 0.05) for c in "012"]
        return ClassifyResult(model, version or 1, signature_name, [scores], 0.0)

    def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> Any:
        return [VersionStatus(1, "AVAILABLE", "OK", ""), VersionStatus(2, "LOADING", "OK", "")]

    def metadata(self, model: str, *, label: str | None = None, timeout: float | None = None) -> Any:
        if label not in ("stable", "canary"):
            message = f"GetModelMetadata: INVALID_ARGUMENT: unknown label {label}"
            raise ServerRequestError(message, code="INVALID_ARGUMENT")
        return {"model_spec": {"name": model, "version": "1" if label == "stable" else "2"}}

    def close(self) -> None:
        self.closed = True


def fleet_of(*clients: FakeClient) -> Fleet:
    members = [Member(Endpoint(c.target, f"http://{c.target}", f"task{i}", i + 1), c) for i, c in enumerate(clients)]
    return Fleet(members)  # type: ignore[arg-type]


def test_smoke_checks_every_replica_or_the_one_asked_for(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = FakeClient(wrong=False), FakeClient(wrong=True)
    bad.target = "127.0.0.1:6000"
    monkeypatch.setattr(orchestrate, "connect_fleet", lambda m: (FLEET_HANDLE, fleet_of(good, bad)))
    result = run("smoke", "-f", manifest, "--json")
    assert result.exit_code == 5, result.output
    doc = json.loads(result.stdout)
    assert [(r["target"], r["passed"]) for r in doc["reports"]] == [(good.target, True), (bad.target, False)]
    assert "on 127.0.0.1:6000" in result.stderr and good.closed and bad.closed
    result = run("smoke", "-f", manifest, "--replica", "1", "--json")
    assert result.exit_code == 0, result.output
    assert [r["target"] for r in json.loads(result.stdout)["reports"]] == [good.target]
    result = run("smoke", "-f", manifest, "--replica", "3")
    assert result.exit_code == 2 and "--replica 3: the server has no such replica" in result.stderr


def test_smoke_json_and_junit(manifest: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    client = FakeClient(wrong=False)
    monkeypatch.setattr(orchestrate, "connect_fleet", lambda m: (HANDLE, fleet_of(client)))
    junit = tmp_path / "reports" / "smoke.xml"
    result = run("smoke", "-f", manifest, "--json", "--junit", str(junit))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] is True and doc["reports"][0]["label"] == "stable" and doc["reports"][0]["total"] == 2
    assert ET.parse(junit).getroot().get("tests") == "2"
    assert client.closed


def test_smoke_mismatch_exits_5(manifest: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(orchestrate, "connect_fleet", lambda m: (HANDLE, fleet_of(FakeClient(wrong=True))))
    junit = tmp_path / "smoke.xml"
    result = run("smoke", "-f", manifest, "--version", "1", "--junit", str(junit))
    assert result.exit_code == 5
    assert "smoke iris (version 1, grpc): FAILED: 1 of 2 case(s) failed, 1 passed" in result.stdout
    assert "deployer: error: smoke failed: iris version 1: 1 of 2 case(s) failed; setosa: " in result.stderr
    assert ET.parse(junit).getroot().get("failures") == "1"


def test_smoke_flag_errors_and_nothing_running(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("smoke", "-f", manifest, "--label", "stable", "--version", "1").exit_code == 2
    assert run("smoke", "-f", manifest, "--version", "0").exit_code == 2
    assert run("smoke", "-f", manifest, "--model", "nope").exit_code == 2
    result = run("smoke", "-f", manifest)
    assert result.exit_code == 4
    assert "no server is running" in result.stderr and "deployer up" in result.stderr


def test_smoke_usage_mistakes_exit_2_naming_what_exists(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrate, "connect_fleet", lambda m: (HANDLE, fleet_of(FakeClient(wrong=False))))
    typo = run("smoke", "-f", manifest, "--label", "stabel")
    # Before: exit 5, a line per case and "the served model answers ... wrongly".
    assert typo.exit_code == 2, typo.output
    assert typo.stderr.splitlines()[0] == (
        "deployer: error: model iris has no label 'stabel' on the server; labels: stable → 1"
    )
    unloaded = run("smoke", "-f", manifest, "--version", "2")
    assert unloaded.exit_code == 2
    assert "version 2 of iris is not loaded (LOADING); the server has: 1 (AVAILABLE), 2 (LOADING)" in unloaded.stderr
    absent = run("smoke", "-f", manifest, "--version", "7")
    assert absent.exit_code == 2 and "version 7 of iris is not loaded; the server has: 1 (AVAILABLE)" in absent.stderr
    assert run("smoke", "-f", manifest, "--label", "canary").exit_code == 0


def test_smoke_against_any_server_with_target(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployer import client as client_module

    made: list[str] = []

    class TargetClient(FakeClient):
        def __init__(self, target: str, timeout: float = 10.0) -> None:
            super().__init__(wrong=False)
            self.target = target
            made.append(target)

        def wait_until_reachable(self, timeout: float) -> bool:
            return self.target != "127.0.0.1:1"

    monkeypatch.setattr(client_module, "ServingClient", TargetClient)
    never = "--target must not use the manifest's server"
    monkeypatch.setattr(orchestrate, "connect_fleet", lambda m: pytest.fail(never))
    result = run("smoke", "-f", manifest, "--target", "127.0.0.2:18500", "--json")
    assert result.exit_code == 0, result.output
    assert made == ["127.0.0.2:18500"] and json.loads(result.stdout)["reports"][0]["target"] == "127.0.0.2:18500"
    down = run("smoke", "-f", manifest, "--target", "127.0.0.1:1")
    assert down.exit_code == 4 and "nothing answers gRPC at 127.0.0.1:1" in down.stderr
    assert run("smoke", "-f", manifest, "--target", "nope").exit_code == 2
    assert run("smoke", "-f", manifest, "--target", "h:99999").exit_code == 2
    no_rest = run("smoke", "-f", manifest, "--target", "127.0.0.2:18500", "--rest")
    assert no_rest.exit_code == 2 and "--rest-url" in no_rest.stderr


def test_status_json_shapes(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("status", "-f", manifest, "--json")
    # A down server is a failed check (exit 4), and the JSON document still says why.
    assert result.exit_code == 4
    assert "deployer: error: no server is running for project" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["running"] is False and doc["server"] is None and doc["models"] == []

    statuses = [VersionStatus(1, "AVAILABLE", "OK", ""), VersionStatus(2, "LOADING", "OK", "")]
    report = orchestrate.StatusReport(
        "p", "/s", True, HANDLE, ProcessState(True, None, "running"),
        [orchestrate.ModelView("iris", "/x", statuses, {"stable": 1, "canary": 2})],
    )  # fmt: skip
    monkeypatch.setattr(orchestrate, "status", lambda m: report)
    doc = json.loads(run("status", "-f", manifest, "--json").stdout)
    assert doc["running"] is True and doc["runtime"] == "local"
    assert doc["server"]["grpc"] == "127.0.0.1:5000" and doc["process"]["detail"] == "running"
    assert [v["state"] for v in doc["models"][0]["versions"]] == ["AVAILABLE", "LOADING"]
    text = run("status", "-f", manifest)
    assert text.exit_code == 0, text.output
    assert "127.0.0.1:5000" in text.stdout and "LOADING" in text.stdout and "canary" in text.stdout


def test_status_exit_codes_and_model_filter(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = [VersionStatus(1, "AVAILABLE", "OK", "")]
    views = [orchestrate.ModelView("iris", "/x", statuses, {"stable": 1})]
    running = orchestrate.StatusReport("p", "/s", True, HANDLE, ProcessState(True, None, "running"), views)
    monkeypatch.setattr(orchestrate, "status", lambda m: running)
    assert run("status", "-f", manifest, "--model", "iris").exit_code == 0
    unknown = run("status", "-f", manifest, "--model", "nope")
    assert unknown.exit_code == 2 and "no model named 'nope'" in unknown.stderr

    exited = orchestrate.StatusReport("p", "/s", False, HANDLE, ProcessState(False, 1, "exited"), [])
    monkeypatch.setattr(orchestrate, "status", lambda m: exited)
    result = run("status", "-f", manifest)
    assert result.exit_code == 4 and "not running (exited)" in result.stdout

    silent = [orchestrate.ModelView("iris", "/x", [], {"stable": 1}, error="GetModelStatus: UNAVAILABLE")]
    unanswered = orchestrate.StatusReport("p", "/s", True, HANDLE, ProcessState(True, None, "running"), silent)
    monkeypatch.setattr(orchestrate, "status", lambda m: unanswered)
    result = run("status", "-f", manifest)
    assert result.exit_code == 4 and "does not answer for iris" in result.stderr


def test_down_with_model(manifest: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(orchestrate, "down", lambda m: orchestrate.DownReport("p", [HANDLE]))
    assert run("down", "-f", manifest, "--model", "iris").exit_code == 0
    assert run("down", "-f", manifest, "--model", "nope").exit_code == 2
    doc = yaml.safe_load(Path(manifest).read_text())
    doc["models"].append({**doc["models"][0], "name": "other"})
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(doc))
    refused = run("down", "-f", str(two), "--model", "iris")
    assert refused.exit_code == 2 and "the server also serves other" in refused.stderr


def test_down_and_logs(manifest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("down", "-f", manifest, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc == {"project": doc["project"], "stopped": [], "warnings": []}
    monkeypatch.setattr(orchestrate, "down", lambda m: orchestrate.DownReport("p", [HANDLE]))
    assert "stopped local server deployer.model_server (4242)" in run("down", "-f", manifest).stdout
    nothing = run("logs", "-f", manifest)
    assert nothing.exit_code == 4 and "none has left a log" in nothing.stderr

    def fake_logs(m: Any, tail: int, *, raw: bool, model: str | None) -> orchestrate.LogsReport:
        lines = [f"last {tail} lines", f"raw={raw} model={model}"]
        return orchestrate.LogsReport("p", HANDLE, False, False, lines, note="the log of the last one (failed)")

    monkeypatch.setattr(orchestrate, "logs", fake_logs)
    result = run("logs", "-f", manifest, "--tail", "7")
    assert result.exit_code == 0 and result.stdout == "last 7 lines\nraw=False model=None\n"
    assert result.stderr == "(the log of the last one (failed))\n"
    doc = json.loads(run("logs", "-f", manifest, "--json", "--raw", "--model", "iris").stdout)
    assert doc["lines"] == ["last 100 lines", "raw=True model=iris"] and doc["source"] == "last-server"
    unknown = run("logs", "-f", manifest, "--model", "nope")
    assert unknown.exit_code == 2 and "no model named 'nope'" in unknown.stderr
