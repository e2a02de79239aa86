"""The standing robustness suite: fuzzing, abuse and fault injection that keep issue 9's faults fixed.

This conftest does three things for every test under tests/robustness/ (including the server
developers' ``test_server_abuse_*.py`` files):

* Hypothesis profiles. ``ci`` (loaded under CI=true) is derandomized, so a CI run tries the same
  examples every time and a red run reproduces locally with ``HYPOTHESIS_PROFILE=ci``; it keeps no
  example database. ``dev`` (the default elsewhere) explores new examples each run.
* Case counting. A test counts as one case, unless it is a hypothesis test (each example is a case:
  passed, or failed) or it uses the ``cases`` fixture (each ``with cases("name"):`` block is a case,
  passed when the block raises nothing). Examples are counted through hypothesis' observability
  callbacks, switched on only while a robustness test runs.
* One summary line at the end of the session::

      robustness: 1843 cases tried, 1843 passed (61 tests, 1712 hypothesis examples, 70 sub-cases)

It also re-exports ``model_server`` (tests/grpc/conftest.py: real servers on free ports) for the
abuse tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.internal import observability

from tests.conftest import IN_CI
from tests.grpc.conftest import model_server  # noqa: F401  (re-exported fixture)

# Each example must be cheap (in-process validation, CliRunner): a fuzz test with the default
# max_examples costs seconds, not minutes, so the suite stays a small slice of the CI budget.
_COMMON: dict[str, Any] = {
    "deadline": None,  # a loaded 2-core machine makes per-example deadlines flaky, not informative
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, database=None, max_examples=200, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "dev"))
# Observability is our example counter only; per-example coverage tracing would slow Python 3.11 down.
observability.OBSERVABILITY_COLLECT_COVERAGE = False


@dataclass
class _Tally:
    tests: int = 0
    tests_passed: int = 0
    examples: int = 0
    examples_passed: int = 0
    sub_cases: int = 0
    sub_cases_passed: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return self.tests + self.examples + self.sub_cases

    @property
    def passed(self) -> int:
        return self.tests_passed + self.examples_passed + self.sub_cases_passed

    def line(self) -> str:
        return (
            f"robustness: {self.tried} cases tried, {self.passed} passed "
            f"({self.tests} tests, {self.examples} hypothesis examples, {self.sub_cases} sub-cases)"
        )


_TALLY = _Tally()
# Per test: hypothesis examples seen and sub-cases counted while it ran.
_CURRENT: dict[str, int] = {}


class CaseCounter:
    """``with cases("oversized body"):`` counts one case, passed when the block raises nothing."""

    def __call__(self, name: str) -> AbstractContextManager[None]:
        return self._case(name)

    @contextmanager
    def _case(self, name: str) -> Iterator[None]:
        _CURRENT["sub_cases"] = _CURRENT.get("sub_cases", 0) + 1
        _TALLY.sub_cases += 1
        try:
            yield
        except BaseException:
            _TALLY.failed.append(name)
            raise
        _TALLY.sub_cases_passed += 1


@pytest.fixture
def cases() -> CaseCounter:
    return CaseCounter()


def _observe(observation: Any) -> None:
    if getattr(observation, "type", None) != "test_case" or observation.status == "gave_up":
        return
    _CURRENT["examples"] = _CURRENT.get("examples", 0) + 1
    _TALLY.examples += 1
    if observation.status == "passed":
        _TALLY.examples_passed += 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _CURRENT.clear()
    callback: Callable[[Any], None] = _observe
    with observability.with_observability_callback(callback):
        return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Called through the item's own hook proxy: only reports of tests under tests/robustness/ arrive here.
    if report.skipped or (report.when != "call" and report.passed) or report.when == "teardown":
        return  # a skip tried nothing (under CI=true skips fail the run anyway); teardown is not a case
    counted_inside = _CURRENT.get("examples", 0) + _CURRENT.get("sub_cases", 0)
    if report.when == "setup" or counted_inside == 0:
        _TALLY.tests += 1
        if report.passed:
            _TALLY.tests_passed += 1
        else:
            _TALLY.failed.append(report.nodeid)
    _CURRENT.clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _TALLY.tried:
        terminalreporter.write_line(_TALLY.line())
