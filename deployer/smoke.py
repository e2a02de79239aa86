"""Smoke tests: the manifest's known inputs sent to the served model, answers checked (not just "no RPC error").

One request per case so each case has its own latency and its own error. A wrong answer is a result,
never an exception: the caller decides (the CLI maps a failed report to SmokeFailed, exit 5).
This module must stay TensorFlow-free: ``deployer smoke`` runs in CI on every deploy.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.client import ServingClient
from deployer.errors import ServerRequestError
from deployer.manifest import ModelSpec, SmokeCase


@dataclass(frozen=True)
class CaseResult:
    name: str
    expected: str
    got: str | None
    score: float | None
    min_score: float
    passed: bool
    latency_s: float
    served_version: int | None  # None over REST: its classify response does not echo the version
    error: str | None = None

    @property
    def reason(self) -> str:
        """Why the case failed, in one line ("" when it passed)."""
        if self.passed:
            return ""
        if self.error:
            return self.error
        if self.got != self.expected:
            return f"expected class {self.expected!r}, got {self.got!r} (score {self.score:.3f})"
        return f"class {self.got!r} scored {self.score:.3f}, below min_score {self.min_score:.3f}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected,
            "got": self.got,
            "score": self.score,
            "min_score": self.min_score,
            "passed": self.passed,
            "latency_ms": round(self.latency_s * 1000, 3),
            "served_version": self.served_version,
            "error": self.error,
        }


@dataclass(frozen=True)
class SmokeReport:
    model: str
    target: str  # gRPC host:port or REST base URL
    transport: str  # "grpc" | "rest"
    version: int | None
    label: str | None
    cases: list[CaseResult] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(case.passed for case in self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        return [case for case in self.cases if not case.passed]

    @property
    def selector(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        if self.label is not None:
            return f"label {self.label}"
        return "latest"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "transport": self.transport,
            "version": self.version,
            "label": self.label,
            "passed": self.passed,
            "total": len(self.cases),
            "failed": len(self.failures),
            "elapsed_s": round(self.elapsed_s, 3),
            "cases": [case.to_json() for case in self.cases],
        }


def case_name(case: SmokeCase, index: int) -> str:
    return case.name or f"case-{index + 1}"


def _judge(
    case: SmokeCase, name: str, scores: list[tuple[str, float]], latency: float, served: int | None, want: int | None
) -> CaseResult:
    if not scores:
        return CaseResult(name, case.expect_class, None, None, case.min_score, False, latency, served, "no classes")
    got, score = max(scores, key=lambda pair: pair[1])
    passed = got == case.expect_class and score >= case.min_score
    error = None
    if want is not None and served is not None and served != want:
        # A server answering from another version than asked would make every check meaningless.
        passed, error = False, f"asked for version {want}, the server answered from version {served}"
    return CaseResult(name, case.expect_class, got, score, case.min_score, passed, latency, served, error)


def _error_case(case: SmokeCase, name: str, latency: float, error: str) -> CaseResult:
    return CaseResult(name, case.expect_class, None, None, case.min_score, False, latency, None, error)


def run_smoke(
    client: ServingClient,
    model: ModelSpec,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> SmokeReport:
    """Classify each smoke case over gRPC and check its top class and score. Never raises for a wrong answer."""
    started = time.perf_counter()
    results = []
    for index, case in enumerate(model.smoke):
        name = case_name(case, index)
        sent = time.perf_counter()
        try:
            answer = client.classify(
                model.name,
                [case.features],
                version=version,
                label=label,
                signature_name=model.signature_name,
                timeout=timeout,
            )
        except ServerRequestError as exc:
            results.append(_error_case(case, name, time.perf_counter() - sent, exc.message))
            continue
        scores = answer.results[0] if answer.results else []
        results.append(_judge(case, name, scores, answer.latency_s, answer.version, version))
    return SmokeReport(
        model=model.name,
        target=client.target,
        transport="grpc",
        version=version,
        label=label,
        cases=results,
        elapsed_s=time.perf_counter() - started,
    )


def rest_classify_url(rest_url: str, model: str, *, version: int | None = None, label: str | None = None) -> str:
    if version is not None and label is not None:
        raise ValueError("choose a version or a label, not both")
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{label}"
    return rest_url.rstrip("/") + path + ":classify"


def _rest_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
        message = json.loads(body).get("error", body)
    except (OSError, ValueError, AttributeError):
        message = exc.reason
    return f"HTTP {exc.code}: {message}"


def run_smoke_rest(
    rest_url: str,
    model: ModelSpec,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> SmokeReport:
    """The same cases through TF Serving's REST classify API (``POST /v1/models/{m}[...]:classify``)."""
    url = rest_classify_url(rest_url, model.name, version=version, label=label)
    started = time.perf_counter()
    results = []
    for index, case in enumerate(model.smoke):
        name = case_name(case, index)
        # Floats must stay JSON floats: TF Serving maps 5 to int64_list but 5.0 to float_list.
        body = {"signature_name": model.signature_name, "examples": [{k: float(v) for k, v in case.features.items()}]}
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        sent = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            results.append(_error_case(case, name, time.perf_counter() - sent, _rest_error(exc)))
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            results.append(_error_case(case, name, time.perf_counter() - sent, f"POST {url}: {reason}"))
            continue
        latency = time.perf_counter() - sent
        try:
            scores = [(str(label_), float(score)) for label_, score in payload["results"][0]]
        except (KeyError, IndexError, TypeError, ValueError):
            results.append(_error_case(case, name, latency, f"unexpected classify response: {str(payload)[:200]}"))
            continue
        results.append(_judge(case, name, scores, latency, None, version))
    return SmokeReport(
        model=model.name,
        target=rest_url,
        transport="rest",
        version=version,
        label=label,
        cases=results,
        elapsed_s=time.perf_counter() - started,
    )


def junit_xml(reports: Sequence[SmokeReport]) -> str:
    """JUnit XML: one testsuite per report, one testcase per case, a failure element with the reason."""
    root = ET.Element(
        "testsuites",
        name="deployer smoke",
        tests=str(sum(len(r.cases) for r in reports)),
        failures=str(sum(len(r.failures) for r in reports)),
        time=f"{sum(r.elapsed_s for r in reports):.3f}",
    )
    for report in reports:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"smoke.{report.model}",
            tests=str(len(report.cases)),
            failures=str(len(report.failures)),
            errors="0",
            skipped="0",
            time=f"{report.elapsed_s:.3f}",
        )
        props = ET.SubElement(suite, "properties")
        for key, value in (("target", report.target), ("transport", report.transport), ("served", report.selector)):
            ET.SubElement(props, "property", name=key, value=value)
        for case in report.cases:
            classname = f"deployer.smoke.{report.model}"
            duration = f"{case.latency_s:.6f}"
            testcase = ET.SubElement(suite, "testcase", classname=classname, name=case.name, time=duration)
            if not case.passed:
                kind = "error" if case.error else "wrong"
                failure = ET.SubElement(testcase, "failure", message=case.reason, type=kind)
                failure.text = json.dumps(case.to_json(), indent=2)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(reports: Sequence[SmokeReport], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(junit_xml(reports), encoding="utf-8")
    return out
