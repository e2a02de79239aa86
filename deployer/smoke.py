"""Smoke tests: the manifest's known inputs sent to the served model, answers checked (not just "no RPC error").

Requests, parsing and checks come from the model's API piece (deployer.apis): Classify, Regress or
Predict, over gRPC or REST. One request per case so each case has its own latency and its own error.
A wrong answer is a result, never an exception: the caller decides (the CLI maps a failed report to
SmokeFailed, exit 5).
This module must stay TensorFlow-free: ``deployer smoke`` runs in CI on every deploy.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import stat
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer import apis, safe_io
from deployer.apis import request_builder
from deployer.apis.base import Api
from deployer.client import ServingClient
from deployer.errors import DeployerError, ServerRequestError, UnsafeStateError, UsageError
from deployer.manifest import ModelSpec, SmokeCase


@dataclass(frozen=True)
class CaseResult:
    name: str
    api: str
    expected: str  # what the case expects, in one line
    got: str | None  # what the server answered, in one line (None: no answer)
    passed: bool
    latency_s: float
    served_version: int | None  # None over REST: its responses do not echo the version
    error: str | None = None
    why: str = ""  # why a wrong answer is wrong
    details: dict[str, Any] = field(default_factory=dict)  # the API's own figures (score, value, outputs)

    @property
    def reason(self) -> str:
        """Why the case failed, in one line ("" when it passed)."""
        if self.passed:
            return ""
        return self.error or self.why

    @property
    def score(self) -> float | None:
        score = self.details.get("score")
        return float(score) if isinstance(score, int | float) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "api": self.api,
            "expected": self.expected,
            "got": self.got,
            "passed": self.passed,
            "latency_ms": round(self.latency_s * 1000, 3),
            "served_version": self.served_version,
            "error": self.error,
            "reason": self.reason or None,
            **self.details,
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


class _CaseError(Exception):
    """A case that got no judgeable answer: transport error, server error, unreadable response."""

    def __init__(self, message: str, latency: float) -> None:
        super().__init__(message)
        self.message = message
        self.latency = latency


# Sends one case's batch and returns (answer, latency, served version or None).
_Send = Callable[[Api, SmokeCase, Any], tuple[Any, float, int | None]]


def _run_cases(model: ModelSpec, want: int | None, send: _Send) -> list[CaseResult]:
    if not model.smoke:
        return []
    api = apis.resolve(model)
    results = []
    for index, case in enumerate(model.smoke):
        name = case_name(case, index)
        sent = time.perf_counter()
        try:
            batch = api.case_batch(model, case)
            answer, latency, served = send(api, case, batch)
        except _CaseError as exc:
            results.append(CaseResult(name, api.name, "", None, False, exc.latency, None, exc.message))
            continue
        except ValueError as exc:  # an input file changed since the manifest was loaded
            results.append(CaseResult(name, api.name, "", None, False, time.perf_counter() - sent, None, str(exc)))
            continue
        verdict = api.judge(model, case, answer)
        error = None
        passed = verdict.passed
        if want is not None and served is not None and served != want:
            # A server answering from another version than asked would make every check meaningless.
            passed, error = False, f"asked for version {want}, the server answered from version {served}"
        results.append(
            CaseResult(
                name, api.name, verdict.expected, verdict.got, passed, latency, served, error, verdict.reason,
                verdict.details,
            )
        )  # fmt: skip
    return results


def run_smoke(
    client: ServingClient,
    model: ModelSpec,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> SmokeReport:
    """Send each smoke case over gRPC through the model's API and check the answer. Never raises for a
    wrong answer."""
    target = request_builder.Target(version, label)

    def send(api: Api, case: SmokeCase, batch: Any) -> tuple[Any, float, int | None]:
        del case
        request = request_builder.grpc_request(api, model, batch, target)
        sent = time.perf_counter()
        try:
            response, latency = client.infer(api.grpc_method, request, timeout=timeout)
        except ServerRequestError as exc:
            raise _CaseError(exc.message, time.perf_counter() - sent) from None
        return api.parse_grpc(response), latency, int(response.model_spec.version.value)

    started = time.perf_counter()
    results = _run_cases(model, version, send)
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
    return request_builder.rest_url(apis.piece("classify"), rest_url, model, request_builder.Target(version, label))


# A classify answer for a handful of cases is kilobytes; a server sending more is broken or hostile.
MAX_REST_RESPONSE_BYTES = 16 * 1024 * 1024


class _Oversized(ValueError):
    pass


def _read_bounded(response: Any, limit: int) -> bytes:
    data = bytes(response.read(limit + 1))
    if len(data) > limit:
        raise _Oversized(f"the response is larger than {limit // (1024 * 1024)} MiB")
    return data


def _rest_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = _read_bounded(exc, 64 * 1024).decode("utf-8", "replace")
        message = json.loads(body).get("error", body)
    except (OSError, ValueError, AttributeError, RecursionError):
        message = exc.reason
    return f"HTTP {exc.code}: {str(message)[:500]}"


def run_smoke_rest(
    rest_url: str,
    model: ModelSpec,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> SmokeReport:
    """The same cases through TF Serving's REST API (``POST /v1/models/{m}[...]:classify|regress|predict``)."""
    target = request_builder.Target(version, label)

    def send(api: Api, case: SmokeCase, batch: Any) -> tuple[Any, float, int | None]:
        url = request_builder.rest_url(api, rest_url, model.name, target)
        body = request_builder.rest_body(api, model, batch)
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        sent = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(_read_bounded(response, MAX_REST_RESPONSE_BYTES))
        except urllib.error.HTTPError as exc:
            raise _CaseError(_rest_error(exc), time.perf_counter() - sent) from None
        except (urllib.error.URLError, OSError, ValueError, RecursionError, http.client.HTTPException) as exc:
            # RecursionError: a deeply nested JSON answer; HTTPException: a garbled status line or headers.
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"[:300]
            raise _CaseError(f"POST {url}: {reason}", time.perf_counter() - sent) from None
        latency = time.perf_counter() - sent
        try:
            answer = api.parse_rest(model, case, payload)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
            # Whatever shape a broken or hostile server answers with, it is this case's failure.
            raise _CaseError(f"unexpected answer: {type(exc).__name__}: {exc}"[:300], latency) from None
        return answer, latency, None

    started = time.perf_counter()
    results = _run_cases(model, version, send)
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


_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


class JUnitTarget:
    """Where the JUnit report goes, proven writable *before* the smoke run, so a report that cannot
    be written fails at once (exit 2, naming the path) instead of after the run, lost.

    A regular file (or a new one) is written atomically through a temp file opened now in its
    directory; a device or FIFO (``/dev/stdout``) is opened now and gets the XML declaration as a
    probe write, which is what makes ``/dev/full`` fail before anything runs.
    """

    def __init__(self, path: Path, fd: int, tmp: Path | None) -> None:
        self.path, self._fd, self._tmp = path, fd, tmp

    @classmethod
    def open(cls, path: str | Path) -> JUnitTarget:
        out = Path(path)

        def refuse(reason: str) -> UsageError:
            return UsageError(f"cannot write the JUnit report to {out}: {reason}", hint="pass --junit a writable file")

        try:
            info = os.stat(out)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise refuse(exc.strerror or str(exc)) from None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise refuse("it is a directory")
        if info is not None and not stat.S_ISREG(info.st_mode):
            try:
                fd = os.open(out, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                os.set_blocking(fd, True)
            except OSError as exc:
                reason = "a FIFO with no reader" if exc.errno == errno.ENXIO else exc.strerror or str(exc)
                raise refuse(reason) from None
            target = cls(out, fd, None)
        else:
            try:
                if not out.parent.is_dir():
                    safe_io.make_dirs(out.parent, safe_io.SHARED_DIR)
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            except (OSError, UnsafeStateError) as exc:
                reason = exc.message if isinstance(exc, UnsafeStateError) else exc.strerror or str(exc)
                raise refuse(reason) from None
            target = cls(out, fd, Path(tmp))
        try:
            target._put(_XML_DECLARATION)
        except OSError as exc:
            target.discard()
            raise refuse(exc.strerror or str(exc)) from None
        return target

    def _put(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        if self._tmp is not None:
            os.fsync(self._fd)

    def write(self, reports: Sequence[SmokeReport]) -> Path:
        """Write the report (the declaration is already there). Raises DeployerError naming the path."""
        try:
            self._put(junit_xml(reports).removeprefix(_XML_DECLARATION))
            if self._tmp is not None:
                os.fchmod(self._fd, safe_io.SHARED_FILE)
                os.close(self._fd)
                self._fd = -1
                os.replace(self._tmp, self.path)
                self._tmp = None
        except OSError as exc:
            self.discard()
            raise DeployerError(f"could not write the JUnit report to {self.path}: {exc.strerror or exc}") from None
        finally:
            self.discard()
        return self.path

    def discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def write_junit(reports: Sequence[SmokeReport], path: str | Path) -> Path:
    return JUnitTarget.open(path).write(reports)
