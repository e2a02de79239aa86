"""deployer.smoke: judging answers, the REST path (against a tiny HTTP fake), JUnit XML, and no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from deployer.client import ClassifyResult
from deployer.errors import ServerRequestError
from deployer.manifest import ModelSpec
from deployer.smoke import SmokeReport, junit_xml, rest_classify_url, run_smoke, run_smoke_rest, write_junit
from tests.fakes import InferViaClassify

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
ROWS = [(5.1, 3.3, 1.7, 0.5), (5.9, 3.0, 4.2, 1.5), (6.9, 3.1, 5.4, 2.1)]


def spec(min_score: float = 0.0) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "iris",
            "trainer": "models.iris.trainer:train",
            "base_path": "exports/iris",
            "features": [{"name": n} for n in FEATURES],
            "classes": ["0", "1", "2"],
            "smoke": [
                {"name": f"row{i}", "features": dict(zip(FEATURES, row, strict=True)), "expect_class": str(i),
                 "min_score": min_score}
                for i, row in enumerate(ROWS)
            ] + [{"features": dict(zip(FEATURES, ROWS[0], strict=True)), "expect_class": "0"}],
        }
    )  # fmt: skip


def answer_for(features: Mapping[str, float], wrong: bool) -> str:
    if wrong:
        return "2"
    petal = features["PetalLength"]
    return "0" if petal < 3 else "1" if petal < 5 else "2"


class FakeClient(InferViaClassify):
    target = "fake:8500"

    def __init__(self, wrong: bool = False, score: float = 0.9, served: int = 3, fail_on: int | None = None) -> None:
        self.wrong, self.score, self.served, self.fail_on = wrong, score, served, fail_on
        self.requests: list[dict[str, Any]] = []

    def classify(
        self, model: str, examples: Sequence[Mapping[str, float]], *, version: int | None = None,
        label: str | None = None, signature_name: str = "serving_default", timeout: float | None = None,
    ) -> ClassifyResult:  # fmt: skip
        self.requests.append({"model": model, "n": len(examples), "version": version, "label": label})
        if self.fail_on is not None and len(self.requests) == self.fail_on:
            raise ServerRequestError("Classify on fake: NOT_FOUND: Servable not found", code="NOT_FOUND")
        got = answer_for(examples[0], self.wrong)
        rest = (1.0 - self.score) / 2
        scores = [(c, self.score if c == got else rest) for c in ("0", "1", "2")]
        return ClassifyResult(model, self.served, signature_name, [scores], 0.002)


def test_all_cases_pass_one_request_each() -> None:
    client = FakeClient()
    report = run_smoke(client, spec(), label="stable")  # type: ignore[arg-type]
    assert report.passed and len(report.cases) == 4
    assert [r["n"] for r in client.requests] == [1, 1, 1, 1]
    assert {r["label"] for r in client.requests} == {"stable"}
    assert [c.name for c in report.cases] == ["row0", "row1", "row2", "case-4"]
    assert all(c.served_version == 3 and c.latency_s == 0.002 for c in report.cases)
    assert report.selector == "label stable" and report.transport == "grpc"


def test_wrong_answers_fail_without_raising() -> None:
    report = run_smoke(FakeClient(wrong=True), spec(), version=3)  # type: ignore[arg-type]
    assert not report.passed
    assert [c.name for c in report.failures] == ["row0", "row1", "case-4"]
    assert report.failures[0].reason == "expected class '0', got '2' (score 0.900)"
    doc = report.to_json()
    assert doc["passed"] is False and doc["failed"] == 3 and doc["total"] == 4
    json.dumps(doc)


def test_low_score_fails() -> None:
    report = run_smoke(FakeClient(score=0.5), spec(min_score=0.8))  # type: ignore[arg-type]
    assert [c.passed for c in report.cases] == [False, False, False, True]
    assert "scored 0.500, below min_score 0.8" in report.cases[0].reason


def test_an_rpc_error_fails_only_its_case() -> None:
    report = run_smoke(FakeClient(fail_on=2), spec())  # type: ignore[arg-type]
    assert [c.passed for c in report.cases] == [True, False, True, True]
    assert report.cases[1].error is not None and "NOT_FOUND" in report.cases[1].error
    assert report.cases[1].got is None


def test_answer_from_another_version_fails() -> None:
    report = run_smoke(FakeClient(served=2), spec(), version=3)  # type: ignore[arg-type]
    assert not report.passed
    assert "answered from version 2" in report.cases[0].reason


def test_rest_urls() -> None:
    assert rest_classify_url("http://h:1/", "iris") == "http://h:1/v1/models/iris:classify"
    assert rest_classify_url("http://h:1", "iris", version=3) == "http://h:1/v1/models/iris/versions/3:classify"
    assert rest_classify_url("http://h:1", "iris", label="stable") == "http://h:1/v1/models/iris/labels/stable:classify"
    with pytest.raises(ValueError):
        rest_classify_url("http://h:1", "iris", version=1, label="stable")


class _Handler(BaseHTTPRequestHandler):
    wrong = False
    seen: ClassVar[list[tuple[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, body))
        if "/labels/missing" in self.path:
            payload, code = {"error": "Unrecognized servable version label: missing"}, 400
        else:
            features = json.loads(body)["examples"][0]
            got = answer_for(features, self.wrong)
            payload, code = {"results": [[[c, 0.9 if c == got else 0.05] for c in ("0", "1", "2")]]}, 200
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def rest_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.seen = []
    _Handler.wrong = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_rest_smoke_sends_json_floats(rest_server: str) -> None:
    report = run_smoke_rest(rest_server, spec(), label="stable")
    assert report.passed and report.transport == "rest"
    path, body = _Handler.seen[0]
    assert path == "/v1/models/iris/labels/stable:classify"
    # 5.0 must stay 5.0 on the wire: TF Serving maps JSON integers to int64 features.
    assert b'"SepalLength": 5.1' in body
    assert json.loads(body)["signature_name"] == "serving_default"
    assert all(c.served_version is None for c in report.cases)


def test_rest_smoke_reports_wrong_answers_and_http_errors(rest_server: str) -> None:
    _Handler.wrong = True
    assert [c.passed for c in run_smoke_rest(rest_server, spec()).cases] == [False, False, True, False]
    report = run_smoke_rest(rest_server, spec(), label="missing")
    assert not report.passed
    assert report.cases[0].error == "HTTP 400: Unrecognized servable version label: missing"


def test_rest_smoke_unreachable() -> None:
    report = run_smoke_rest("http://127.0.0.1:9", spec(), timeout=2)
    assert not report.passed and report.cases[0].error is not None and report.cases[0].error.startswith("POST ")


def test_junit_xml(tmp_path: Path) -> None:
    good = run_smoke(FakeClient(), spec(), label="stable")  # type: ignore[arg-type]
    bad = SmokeReport(**{**good.__dict__, "model": "other", "cases": run_smoke(FakeClient(wrong=True), spec()).cases})  # type: ignore[arg-type]
    path = write_junit([good, bad], tmp_path / "out" / "smoke.xml")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "8" and root.get("failures") == "3"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["smoke.iris", "smoke.other"]
    assert [s.get("failures") for s in suites] == ["0", "3"]
    assert len(suites[0].findall("testcase")) == 4
    failure = suites[1].find("testcase/failure")
    assert failure is not None and failure.get("message") == "expected class '0', got '2' (score 0.900)"
    assert junit_xml([good]).startswith('<?xml version="1.0" encoding="UTF-8"?>')


def test_the_smoke_path_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import deployer.cli, deployer.smoke, deployer.orchestrate, deployer.commands.serve\n"
        "from deployer.client import ServingClient\n"
        "ServingClient('127.0.0.1:9').close()\n"
        "heavy = [m for m in ('tensorflow.python', 'keras', 'docker') if m in sys.modules]\n"
        "print(','.join(heavy) or 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_a_score_just_below_min_score_shows_the_digits_that_differ() -> None:
    from pathlib import Path

    from deployer import apis
    from deployer.apis.common import distinct
    from deployer.manifest import load_manifest

    spec = load_manifest(Path(__file__).resolve().parents[2] / "manifests" / "iris.yaml").model()
    case = spec.smoke[0].model_copy(update={"min_score": 0.5})
    verdict = apis.piece("classify").judge(spec, case, [[("0", 0.49996), ("1", 0.3), ("2", 0.2)]])
    # Before: "scored 0.500, below min_score 0.500", which hides why it failed.
    assert verdict.reason == "class '0' scored 0.49996, below min_score 0.5"
    assert distinct(0.912, 0.5) == "0.912"
    assert distinct(0.4, 0.4) == "0.40000000"
