"""The promotion algorithm against a fake server that enforces TF Serving's rules.

The fake reproduces what makes label moves hard on the real server
(``ServerCore::UpdateModelVersionLabelMap``): moving an existing label to a version that is not
AVAILABLE is rejected with FAILED_PRECONDITION, new versions load asynchronously (LOADING for a few
status polls), and a reload is declarative (versions missing from it are unloaded). It also watches
the invariants a promotion promises: the models.config on disk equals what is being reloaded (file
first), and a label never resolves to a version that is not loaded. An unsafe ordering fails here.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployer import promote as promote_mod
from deployer.client import ClassifyResult, VersionStatus
from deployer.errors import PromoteFailed, ServerRequestError, StoreError, UsageError, VersionNotFound
from deployer.ledger import Ledger
from deployer.manifest import Manifest
from deployer.promote import PromotionFailed, promote, promotion_lock, rollback
from deployer.server_config import ServedModel, parse_models_config, render_models_config
from deployer.state import StateDir
from tests.fakes import InferViaClassify

ROWS = [(5.1, 3.3, 1.7, 0.5), (5.9, 3.0, 4.2, 1.5), (6.9, 3.1, 5.4, 2.1)]
FEATURES = ("SepalLength", "SepalWidth", "PetalLength", "PetalWidth")


def _softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    return [e / sum(exps) for e in exps]


def good(features: Mapping[str, float], shift: float = 0.0) -> list[tuple[str, float]]:
    petal = features["PetalLength"]
    scores = _softmax([10 - 3 * petal, 2.0 + shift, 3 * petal - 13])
    return list(zip(("0", "1", "2"), scores, strict=True))


def goodish(features: Mapping[str, float]) -> list[tuple[str, float]]:
    return good(features, shift=0.3)  # same classes, slightly different scores


def wrong(features: Mapping[str, float]) -> list[tuple[str, float]]:
    return [("0", 0.0), ("1", 0.0), ("2", 1.0)]


class FakeServer(InferViaClassify):
    """A ServingClient stand-in with TF Serving's label rule, asynchronous loads and declarative reloads."""

    target = "fake:0"

    def __init__(self, config_file: Path, behaviours: dict[int, Callable[[Mapping[str, float]], Any]]) -> None:
        self.config_file = config_file
        self.behaviours = behaviours
        self.models: dict[str, ServedModel] = {}
        self.states: dict[int, str] = {}
        self.load_polls: dict[int, int] = {}
        self.polls_to_load = 2
        self.broken: set[int] = set()  # versions whose load fails (END with an error)
        self.reloads: list[str] = []
        self.fail_reload: Callable[[int, str], ServerRequestError | None] = lambda n, text: None
        self.violations: list[str] = []
        self.label_requests: list[tuple[str, int | None, str | None]] = []  # (label, version, error)
        self.dead = False
        self.lock = threading.RLock()

    # -- setup
    def start(self, text: str) -> None:
        """Server start: everything in the initial config loads before the port opens."""
        for model in parse_models_config(text):
            self.models[model.name] = model
            for v in model.versions:
                self.states[v] = "AVAILABLE"

    # -- ModelService
    def reload_config(self, text: str, *, timeout: float) -> None:
        with self.lock:
            self.reloads.append(text)
            if self.dead:
                raise ServerRequestError("HandleReloadConfigRequest: UNAVAILABLE", code="UNAVAILABLE")
            if self.config_file.read_text() != text:
                self.violations.append(f"reload {len(self.reloads)} was not written to {self.config_file} first")
            injected = self.fail_reload(len(self.reloads), text)
            if injected is not None:
                raise injected
            new = {m.name: m for m in parse_models_config(text)}
            for name, model in new.items():
                old = self.models.get(name)
                for label, version in model.labels.items():
                    moved = old is not None and label in old.labels and old.labels[label] != version
                    if moved and self.states.get(version) != "AVAILABLE":
                        raise ServerRequestError(
                            f"HandleReloadConfigRequest: FAILED_PRECONDITION: Request to assign label to version"
                            f" {version} of model {name}, which is not currently available for inference",
                            code="FAILED_PRECONDITION",
                        )
            for name, model in new.items():
                old_versions = set(self.models[name].versions) if name in self.models else set()
                for v in set(model.versions) - old_versions:
                    self.states[v] = "LOADING"
                    self.load_polls[v] = self.polls_to_load
                for v in old_versions - set(model.versions):
                    self.states[v] = "END"
            self.models = new
            self._check_labels()

    def _check_labels(self) -> None:
        for model in self.models.values():
            for label, version in model.labels.items():
                if self.states.get(version) != "AVAILABLE":
                    self.violations.append(f"label {label} points at version {version} ({self.states.get(version)})")

    def model_status(self, model: str, *, version: int | None = None, timeout: float | None = None) -> Any:
        with self.lock:
            for v, polls in list(self.load_polls.items()):
                if self.states.get(v) != "LOADING":
                    continue
                if polls <= 1:
                    self.states[v] = "END" if v in self.broken else "AVAILABLE"
                    del self.load_polls[v]
                else:
                    self.load_polls[v] = polls - 1
            return [
                VersionStatus(v, s, "UNKNOWN" if (s == "END" and v in self.broken) else "OK", "")
                for v, s in sorted(self.states.items())
            ]

    # -- PredictionService
    def classify(
        self,
        model: str,
        examples: Sequence[Mapping[str, float]],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str = "serving_default",
        timeout: float | None = None,
    ) -> ClassifyResult:
        with self.lock:
            resolved = version
            if label is not None:
                labels = self.models[model].labels
                if label not in labels:
                    self.label_requests.append((label, None, "unknown label"))
                    raise ServerRequestError(f"Unrecognized servable version label: {label}", code="INVALID_ARGUMENT")
                resolved = labels[label]
            if resolved is None or self.states.get(resolved) != "AVAILABLE":
                if label is not None:
                    self.label_requests.append((label, resolved, "not found"))
                raise ServerRequestError(f"Servable not found for request: Specific({model}, {resolved})", "NOT_FOUND")
            if label is not None:
                self.label_requests.append((label, resolved, ""))
            behaviour = self.behaviours[resolved]
            return ClassifyResult(model, resolved, signature_name, [behaviour(e) for e in examples], 0.001)

    def label_failures(self) -> list[tuple[str, int | None, str | None]]:
        return [r for r in self.label_requests if r[2]]


@dataclass
class Setup:
    manifest: Manifest
    server: FakeServer
    state: StateDir
    on_disk: set[int]
    corrupt: set[int] = field(default_factory=set)
    progress: list[str] = field(default_factory=list)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.state.ledger)

    def config(self) -> ServedModel:
        return parse_models_config(self.state.models_config.read_text())[0]

    def promote(self, version: int, **kwargs: Any) -> promote_mod.PromoteReport:
        return promote(
            self.manifest, self.server, version, progress=self.progress.append, sleep=lambda s: None, **kwargs
        )  # type: ignore[arg-type]

    def rollback(self, **kwargs: Any) -> promote_mod.PromoteReport:
        return rollback(self.manifest, self.server, progress=self.progress.append, sleep=lambda s: None, **kwargs)  # type: ignore[arg-type]


def make_manifest(tmp_path: Path, *, keep_previous: bool = True, labels: Sequence[str] = ("stable",)) -> Manifest:
    return Manifest.model_validate(
        {
            "project": "demo",
            "project_root": str(tmp_path),
            "state_dir": str(tmp_path / "state"),
            "server": {"reload_deadline_seconds": 5, "health_deadline_seconds": 5},
            "models": [
                {
                    "name": "iris",
                    "trainer": "models.iris.trainer:train",
                    "base_path": str(tmp_path / "models" / "iris"),
                    "features": [{"name": n} for n in FEATURES],
                    "classes": ["0", "1", "2"],
                    "labels": list(labels),
                    "version_policy": {"keep_previous": keep_previous},
                    "smoke": [
                        {"name": f"row{i}", "features": dict(zip(FEATURES, row, strict=True)), "expect_class": str(i)}
                        for i, row in enumerate(ROWS)
                    ],
                }
            ],
        }
    )


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return build_setup(tmp_path, monkeypatch)


def build_setup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    keep_previous: bool = True,
    labels: Sequence[str] = ("stable",),
    initial: Mapping[str, int] | None = None,
) -> Setup:
    manifest = make_manifest(tmp_path, keep_previous=keep_previous, labels=labels)
    state = StateDir(manifest.state_path)
    initial = dict(initial or {"stable": 1})
    text = render_models_config([ServedModel("iris", "/models/iris", tuple(sorted(set(initial.values()))), initial)])
    state.write_config_files({"models.config": text})
    server = FakeServer(state.models_config, {1: good, 2: goodish, 3: wrong, 4: good, 5: good})
    server.start(text)
    result = Setup(manifest, server, state, on_disk={1, 2, 3, 4, 5})

    def validate_candidate(manifest: Manifest, spec: Any, version: int) -> Path:
        # The disk checks are deployer.store's (tested there); here only their two outcomes matter.
        if version not in result.on_disk:
            raise VersionNotFound(f"version {version} of iris not found", hint="versions: 1..5")
        if version in result.corrupt:
            raise StoreError(f"version {version} is not a complete SavedModel: variables/ is missing")
        return manifest.base_path(spec) / str(version)

    monkeypatch.setattr(promote_mod, "validate_candidate", validate_candidate)
    return result


# ---- the fake itself must refuse what the real server refuses ----------------------------------


def test_the_fake_rejects_moving_a_label_to_a_version_that_is_not_available(setup: Setup) -> None:
    one_phase = render_models_config([ServedModel("iris", "/models/iris", (1, 2), {"stable": 2})])
    setup.state.write_config_files({"models.config": one_phase})
    with pytest.raises(ServerRequestError) as info:
        setup.server.reload_config(one_phase, timeout=1)
    assert info.value.code == "FAILED_PRECONDITION"


# ---- success -----------------------------------------------------------------------------------


def test_a_promotion_loads_checks_switches_and_keeps_the_previous_version(setup: Setup) -> None:
    report = setup.promote(2)

    assert report.result == "ok" and not report.noop
    assert (report.from_version, report.to_version) == (1, 2)
    assert setup.server.models["iris"].labels == {"stable": 2}
    assert setup.server.models["iris"].versions == (1, 2)  # keep_previous: v1 stays for a fast rollback
    # The file on disk is the truth: a restarted server comes back promoted.
    assert setup.config().labels == {"stable": 2} and setup.config().versions == (1, 2)
    assert setup.server.violations == []
    assert setup.server.label_failures() == []
    # phase 1 (load v2) and phase 2 (move the label); nothing to unload.
    assert len(setup.server.reloads) == 2
    assert report.smoke is not None and report.smoke["passed"] is True
    assert report.class_changes == 0
    assert report.largest_score_delta is not None and 0 < report.largest_score_delta < 0.2
    assert {"validate", "lock_wait", "load", "smoke", "switch", "unload", "total", "to_switch"} <= set(report.durations)
    assert [line.split(":")[0] for line in setup.progress if line.startswith("step ")] == [
        "step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"
    ]

    (entry,) = setup.ledger.entries()
    assert (entry.kind, entry.from_version, entry.to_version, entry.result) == ("promote", 1, 2, "ok")
    assert entry.smoke["passed"] is True and entry.smoke["cases"] == 3 and entry.smoke["class_changes"] == 0
    assert entry.durations["total"] >= 0


def test_without_keep_previous_the_old_version_is_unloaded_after_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = build_setup(tmp_path, monkeypatch, keep_previous=False)
    report = s.promote(2)
    assert report.versions_unloaded == (1,)
    assert s.server.models["iris"].versions == (2,)
    assert s.config().versions == (2,)
    assert len(s.server.reloads) == 3
    assert s.server.violations == [] and s.server.label_failures() == []


def test_only_the_immediately_previous_version_is_kept(setup: Setup) -> None:
    setup.promote(2)
    report = setup.promote(4)
    assert report.versions_unloaded == (1,)
    assert setup.config().versions == (2, 4)
    assert setup.server.violations == []


def test_versions_other_labels_point_at_stay_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = build_setup(
        tmp_path, monkeypatch, keep_previous=False, labels=("stable", "canary"), initial={"stable": 1, "canary": 1}
    )
    s.promote(2, label="canary")
    assert s.config().labels == {"stable": 1, "canary": 2}
    assert s.config().versions == (1, 2)  # v1 is stable's, even without keep_previous
    s.promote(4, label="canary")
    assert s.config().versions == (1, 4)
    assert s.server.violations == []


def test_promoting_the_current_version_is_a_noop_that_touches_nothing(setup: Setup) -> None:
    before = setup.state.models_config.read_text()
    report = setup.promote(1)
    assert report.noop and report.result == "ok"
    assert "already points at version 1" in report.reason
    assert setup.server.reloads == []
    assert setup.state.models_config.read_text() == before
    assert setup.ledger.entries() == []  # a no-op is not a deployment event (and would confuse rollback)


# ---- refused before the server is touched ---------------------------------------------------------


def test_a_missing_version_is_a_usage_error_and_touches_nothing(setup: Setup) -> None:
    with pytest.raises(VersionNotFound) as info:
        setup.promote(9)
    assert info.value.exit_code == 2
    assert setup.server.reloads == [] and setup.ledger.entries() == []


def test_a_corrupt_version_is_refused_with_exit_6_and_recorded(setup: Setup) -> None:
    setup.corrupt.add(2)
    before = setup.state.models_config.read_text()
    with pytest.raises(PromotionFailed) as info:
        setup.promote(2)
    assert info.value.exit_code == 6
    assert "variables/ is missing" in info.value.message
    assert setup.server.reloads == []
    assert setup.state.models_config.read_text() == before
    (entry,) = setup.ledger.entries()
    assert entry.result == "failed" and entry.reason.startswith("refused:") and entry.from_version == 1


def test_an_unknown_label_is_a_usage_error(setup: Setup) -> None:
    with pytest.raises(UsageError):
        setup.promote(2, label="canary")


def test_nothing_deployed_fails_with_a_hint(setup: Setup) -> None:
    setup.state.models_config.unlink()
    with pytest.raises(PromoteFailed) as info:
        setup.promote(2)
    assert "nothing is deployed" in info.value.message and info.value.hint and "deployer up" in info.value.hint


# ---- failures restore the previous state -----------------------------------------------------------


def _assert_restored(s: Setup, before: str) -> None:
    assert s.state.models_config.read_text() == before
    assert s.server.models["iris"].labels == {"stable": 1}
    assert s.server.models["iris"].versions == (1,)
    assert s.server.violations == []
    assert s.server.label_failures() == []


def test_a_candidate_that_fails_smoke_is_rolled_back(setup: Setup) -> None:
    before = setup.state.models_config.read_text()
    with pytest.raises(PromotionFailed) as info:
        setup.promote(3)
    assert info.value.exit_code == 6
    assert "2 of 3 smoke case(s) failed (1 passed)" in info.value.message
    assert "row0" in info.value.message
    _assert_restored(setup, before)
    report = info.value.report
    assert report.result == "rolled_back" and report.class_changes == 2
    (entry,) = setup.ledger.entries()
    assert entry.result == "rolled_back"
    assert entry.smoke["passed"] is False and entry.smoke["failed_cases"] == ["row0", "row1"]
    assert "load" in entry.durations and "switch" not in entry.durations


def test_max_score_delta_fails_a_promotion_whose_scores_moved_too_much(setup: Setup) -> None:
    before = setup.state.models_config.read_text()
    with pytest.raises(PromotionFailed) as info:
        setup.promote(2, max_score_delta=0.001)
    assert "exceeds --max-delta 0.001" in info.value.message
    _assert_restored(setup, before)
    with pytest.raises(PromotionFailed, match=r"exceeds --max-delta 0\.01"):
        setup.promote(2, max_delta=0.01)
    _assert_restored(setup, before)
    assert setup.promote(2, max_delta=0.5).result == "ok"


def test_a_candidate_that_fails_to_load_is_rolled_back(setup: Setup) -> None:
    setup.server.broken.add(2)
    before = setup.state.models_config.read_text()
    with pytest.raises(PromotionFailed) as info:
        setup.promote(2)
    assert "failed to load" in info.value.message
    _assert_restored(setup, before)


@pytest.mark.parametrize("failing_reload", [1, 2])
def test_a_failed_reload_in_any_phase_restores_file_and_server(setup: Setup, failing_reload: int) -> None:
    before = setup.state.models_config.read_text()
    setup.server.fail_reload = lambda n, text: (
        ServerRequestError("HandleReloadConfigRequest: DEADLINE_EXCEEDED", code="DEADLINE_EXCEEDED")
        if n == failing_reload
        else None
    )
    with pytest.raises(PromotionFailed) as info:
        setup.promote(2)
    assert "DEADLINE_EXCEEDED" in info.value.message
    _assert_restored(setup, before)
    # The restore is itself a reload of exactly the previous config.
    assert setup.server.reloads[-1] == before
    assert setup.ledger.entries()[-1].result == "rolled_back"


def test_a_failed_unload_restores_the_label_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = build_setup(tmp_path, monkeypatch, keep_previous=False)
    before = s.state.models_config.read_text()
    s.server.fail_reload = lambda n, text: ServerRequestError("boom", code="INTERNAL") if n == 3 else None
    with pytest.raises(PromotionFailed):
        s.promote(2)
    _assert_restored(s, before)


def test_when_the_restore_fails_too_the_file_still_holds_the_previous_config(setup: Setup) -> None:
    before = setup.state.models_config.read_text()

    def die(n: int, text: str) -> ServerRequestError | None:
        if n == 2:
            setup.server.dead = True
            return ServerRequestError("HandleReloadConfigRequest: UNAVAILABLE", code="UNAVAILABLE")
        return None

    setup.server.fail_reload = die
    with pytest.raises(PromotionFailed) as info:
        setup.promote(2)
    assert "restoring the previous config also failed" in info.value.message
    assert info.value.hint is not None and "deployer up" in info.value.hint
    assert setup.state.models_config.read_text() == before  # a restart comes back in the previous state
    assert info.value.report.result == "failed"
    assert setup.ledger.entries()[-1].result == "failed"


def test_an_interrupt_mid_promotion_restores_and_propagates(setup: Setup) -> None:
    before = setup.state.models_config.read_text()

    def interrupt(n: int, text: str) -> ServerRequestError | None:
        if n == 2:
            raise KeyboardInterrupt
        return None

    setup.server.fail_reload = interrupt
    with pytest.raises(KeyboardInterrupt):
        setup.promote(2)
    _assert_restored(setup, before)
    assert setup.ledger.entries()[-1].reason == "interrupted"


# ---- rollback ------------------------------------------------------------------------------------


def test_rollback_returns_the_label_to_its_previous_version(setup: Setup) -> None:
    setup.promote(2)
    reloads = len(setup.server.reloads)
    report = setup.rollback()
    assert (report.kind, report.from_version, report.to_version) == ("rollback", 2, 1)
    assert setup.config().labels == {"stable": 1}
    # v1 was kept loaded, so the rollback is a single reload that only moves the label.
    assert len(setup.server.reloads) == reloads + 1
    entries = setup.ledger.entries()
    assert [(e.kind, e.from_version, e.to_version, e.result) for e in entries] == [
        ("promote", 1, 2, "ok"),
        ("rollback", 2, 1, "ok"),
    ]
    assert setup.server.violations == [] and setup.server.label_failures() == []


def test_rollback_to_an_explicit_version(setup: Setup) -> None:
    setup.promote(2)
    setup.promote(4)
    report = setup.rollback(to=2)
    assert report.to_version == 2 and setup.config().labels == {"stable": 2}


def test_rollback_without_history_asks_for_a_version(setup: Setup) -> None:
    with pytest.raises(UsageError) as info:
        setup.rollback()
    assert info.value.hint == "pass --to VERSION"


def test_rollback_refuses_when_the_ledger_disagrees_with_the_config(setup: Setup) -> None:
    setup.promote(2)
    text = render_models_config([ServedModel("iris", "/models/iris", (1, 2, 4), {"stable": 4})])
    setup.state.write_config_files({"models.config": text})
    with pytest.raises(UsageError, match="ambiguous"):
        setup.rollback()


# ---- serialization -------------------------------------------------------------------------------


@contextmanager
def held_lock(s: Setup) -> Iterator[threading.Event]:
    """Another promotion holding the lock (in a thread) until the yielded event is set."""
    acquired, release = threading.Event(), threading.Event()

    def hold() -> None:
        with promotion_lock(s.state, "demo", wait=False, progress=lambda m: None):
            acquired.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert acquired.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(10)


def test_no_wait_fails_at_once_while_another_promotion_runs(setup: Setup) -> None:
    with held_lock(setup):
        started = time.monotonic()
        with pytest.raises(PromoteFailed) as info:
            setup.promote(2, wait=False)
        assert time.monotonic() - started < 5
    assert info.value.exit_code == 6
    assert info.value.message == f"another promotion of demo is running (pid {os.getpid()})"
    assert setup.server.reloads == []


def test_a_second_promotion_waits_says_so_and_then_runs(setup: Setup) -> None:
    results: list[promote_mod.PromoteReport] = []
    with held_lock(setup) as release:
        worker = threading.Thread(target=lambda: results.append(setup.promote(2)))
        worker.start()
        deadline = time.monotonic() + 10
        while len(setup.progress) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert setup.progress[:2] == [
            "step 1/5: checking version 2 of iris on disk",
            f"waiting for another promotion of demo (pid {os.getpid()})…",
        ]
        assert setup.server.reloads == []  # still waiting: nothing touched
        release.set()
        worker.join(30)
    assert results and results[0].result == "ok"
    assert results[0].durations["lock_wait"] > 0


def test_concurrent_promotions_are_serialized_and_the_ledger_chains(setup: Setup) -> None:
    errors: list[BaseException] = []

    def run(version: int) -> None:
        try:
            setup.promote(version)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in (2, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    entries = setup.ledger.entries()
    assert [e.result for e in entries] == ["ok", "ok"]
    # Whichever ran second started from the first one's result: no lost update.
    assert entries[0].from_version == 1 and entries[1].from_version == entries[0].to_version
    assert setup.config().labels == {"stable": entries[1].to_version}
    assert setup.server.violations == [] and setup.server.label_failures() == []


# ---- issue 9, item 2: the ledger never lags the served state ------------------------------------


def _killed_promotion(setup: Setup, monkeypatch: pytest.MonkeyPatch, kill_at: str) -> int:
    """Run promote(2) in a forked child that dies like kill -9 (os._exit: no except, no finally) at
    ``kill_at``; returns the child's exit status. The files on disk are all that survive it."""
    real_write = promote_mod.write_atomic
    real_append = Ledger.append

    def write(path: Path, text: str, *args: Any) -> None:
        if kill_at == "before the switch is written" and "stable" in text and "value: 2" in text:
            os._exit(137)
        real_write(path, text, *args)

    def append(self: Ledger, entry: Any) -> None:
        if kill_at == "before the final line" and entry.result != "pending":
            os._exit(137)
        real_append(self, entry)

    def reload(n: int, text: str) -> ServerRequestError | None:
        if kill_at == "after the switch is written" and n == 2:
            os._exit(137)
        return None

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            monkeypatch.setattr(promote_mod, "write_atomic", write)
            monkeypatch.setattr(Ledger, "append", append)
            setup.server.fail_reload = reload
            setup.promote(2)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize(
    ("kill_at", "moved"),
    [("before the switch is written", False), ("after the switch is written", True), ("before the final line", True)],
)
def test_a_promotion_killed_at_any_point_leaves_a_history_that_knows_the_truth(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, kill_at: str, moved: bool
) -> None:
    status = _killed_promotion(setup, monkeypatch, kill_at)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 137
    assert setup.config().labels == {"stable": 2 if moved else 1}
    # `history` (in memory, nobody holds the lock): the intent is settled from models.config.
    (entry,) = promote_mod.settled_history(setup.state).entries
    assert (entry.from_version, entry.to_version) == (1, 2)
    assert entry.result == ("ok" if moved else "failed")
    assert entry.reason.startswith("recovered" if moved else "interrupted")
    if not moved:
        return
    # `rollback` knows the previous version (it said "no earlier version" before) and settles the ledger
    # on disk first. The server comes back from the file, as after a restart.
    setup.server.start(setup.state.models_config.read_text())
    report = setup.rollback()
    assert (report.from_version, report.to_version) == (2, 1)
    assert [(e.kind, e.to_version, e.result) for e in setup.ledger.entries()] == [
        ("promote", 2, "ok"),
        ("rollback", 1, "ok"),
    ]
    assert any("settled an interrupted promote" in line for line in setup.progress)


def test_an_intent_whose_process_holds_the_lock_is_shown_in_progress(setup: Setup) -> None:
    with setup.state.operation_lock("promote"):
        intent = promote_mod.LedgerEntry(1.0, "u", "demo", "iris", "stable", "promote", 1, 2, "pending",
                                         pid=os.getpid(), id="x")  # fmt: skip
        setup.ledger.append(intent)
        (entry,) = promote_mod.settled_history(setup.state).entries
        assert entry.result == "pending"
    (entry,) = promote_mod.settled_history(setup.state).entries
    assert entry.result == "failed"  # the lock is free, the config says 1: it never happened


def test_a_completed_promotion_writes_an_intent_then_one_final_line(setup: Setup) -> None:
    setup.promote(2)
    lines = setup.state.ledger.read_text().splitlines()
    assert [json.loads(line)["result"] for line in lines] == ["pending", "ok"]
    assert len({json.loads(line)["id"] for line in lines}) == 1
    assert [e.result for e in setup.ledger.entries()] == ["ok"]
