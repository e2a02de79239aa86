"""Verified label promotion and rollback on a running TF Serving (or compatible) server.

TF Serving refuses to move an existing label to a version that is not AVAILABLE yet
(``ServerCore::UpdateModelVersionLabelMap``), so a promotion is a sequence of declarative reloads,
each one legal on the real server:

  1. verify: the candidate on disk is a complete SavedModel meeting its API's contract (no server involved).
  2. load:   versions = current ∪ {candidate}, labels unchanged; wait until the candidate is AVAILABLE.
  3. check:  smoke-test the candidate by version, diff its answers against the label's current ones
             (through the model's API piece: class changes, value deltas, per-output deltas and argmax).
  4. switch: move the label; verify that a request of the model's API through the label echoes the candidate.
  5. trim:   unload versions nothing wants (the previous one stays if ``keep_previous``; labelled ones stay).

The CLI reports them as "step N/5", the numbering of the README.

The rendered models.config in the state directory is the deployment's truth: it is written
atomically *before* each reload, so a server restarted at any moment comes back in a state the
server accepted or was about to accept. On any failure the previous file is written back and
reloaded; the label only ever points at a version that is loaded.

On a fleet (N replicas of one server, e.g. a swarm service) every step runs replica by replica
through each replica's own ``HandleReloadConfigRequest``: the candidate loads everywhere and passes
its smoke cases on every replica before the label moves on any, then the label moves replica by
replica, each verified before the next; any failure restores the previous config on all of them.

This module never prints: progress goes through a callback and the outcome is a PromoteReport
(or a PromotionFailed carrying one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, cast

from deployer import apis, health, smoke, store
from deployer.apis import request_builder
from deployer.apis.base import Api, CaseDiff
from deployer.apis.common import distinct
from deployer.client import ServingClient
from deployer.errors import DeployerError, PromoteFailed, StoreError, UsageError, VersionNotFound
from deployer.fleet import Fleet, Member
from deployer.ledger import PENDING, History, Kind, Ledger, LedgerEntry, Result, current_user, last_successful, new_id
from deployer.manifest import Manifest, ModelSpec
from deployer.server_config import ServedModel, parse_models_config, render_models_config
from deployer.state import StateDir, StateLockBusy, write_atomic

ProgressFn = Callable[[str], None]

# After the label moves, the echo check retries briefly: a server may apply the label map a moment
# after the reload RPC returns. The real server applies it synchronously, so this rarely loops.
_VERIFY_POLL_S = 0.05


# A connected client or fleet, or a factory that connects once the candidate passed its checks on disk,
# so a broken version is refused even when no server runs.
ClientSource = ServingClient | Fleet | Callable[[], ServingClient | Fleet]


def _no_progress(message: str) -> None:
    del message


@dataclass
class PromoteReport:
    project: str
    model: str
    label: str
    kind: Kind
    from_version: int | None
    to_version: int
    result: Result = "ok"
    noop: bool = False
    reason: str = ""
    smoke: dict[str, Any] | None = None
    diff: list[CaseDiff] = field(default_factory=list)
    max_score_delta: float | None = None  # the --max-delta limit asked for (None: report only)
    versions_loaded: tuple[int, ...] = ()
    versions_unloaded: tuple[int, ...] = ()
    durations: dict[str, float] = field(default_factory=dict)
    restore_error: str | None = None

    @property
    def class_changes(self) -> int:
        """Cases whose discrete answer moved: top class, an argmax, a string, a shape."""
        return sum(1 for d in self.diff if d.changed)

    @property
    def largest_score_delta(self) -> float | None:
        return max((d.delta for d in self.diff if d.delta is not None), default=None)

    def smoke_summary(self) -> dict[str, Any]:
        """What the ledger keeps of the checks: enough to answer "why did this pass/fail" later."""
        summary: dict[str, Any] = {}
        if self.smoke is not None:
            cases = self.smoke.get("cases", [])
            summary["passed"] = bool(self.smoke.get("passed"))
            summary["cases"] = len(cases)
            summary["failed_cases"] = [c.get("name") for c in cases if not c.get("passed")]
        if self.diff:
            summary["class_changes"] = self.class_changes
            summary["max_score_delta"] = round(self.largest_score_delta or 0.0, 6)
            summary["max_delta"] = summary["max_score_delta"]
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "model": self.model,
            "label": self.label,
            "kind": self.kind,
            "from": self.from_version,
            "to": self.to_version,
            "result": self.result,
            "noop": self.noop,
            "reason": self.reason,
            "smoke": self.smoke,
            "diff": [d.to_json() for d in self.diff],
            "class_changes": self.class_changes,
            "max_score_delta": self.largest_score_delta,
            "max_score_delta_limit": self.max_score_delta,
            "max_delta": self.largest_score_delta,
            "max_delta_limit": self.max_score_delta,
            "versions_loaded": list(self.versions_loaded),
            "versions_unloaded": list(self.versions_unloaded),
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
            "restore_error": self.restore_error,
        }


class PromotionFailed(PromoteFailed):
    """A PromoteFailed that carries the report (for --json), with the previous state restored."""

    def __init__(self, message: str, report: PromoteReport, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class _StepFailed(Exception):
    """Internal: a check failed with a reason meant for the user (not a server/transport error)."""


# ---- the promotion lock -------------------------------------------------------------------------


@contextmanager
def promotion_lock(state: StateDir, project: str, *, wait: bool, progress: ProgressFn) -> Iterator[float]:
    """Serialize promotions (and ups) of one state directory; yields the seconds spent waiting."""

    def say_waiting(holder: str) -> None:
        progress(f"waiting for another promotion of {project}{f' ({holder})' if holder else ''}…")

    try:
        with state.operation_lock("promote", timeout=None if wait else 0, on_wait=say_waiting) as waited:
            yield waited
    except StateLockBusy as exc:
        holder = f" ({exc.holder})" if exc.holder else ""
        raise PromoteFailed(
            f"another promotion of {project} is running{holder}",
            hint="retry when it has finished, or drop --no-wait to queue behind it",
        ) from None


# ---- validation -----------------------------------------------------------------------------------


def validate_candidate(manifest: Manifest, spec: ModelSpec, version: int) -> Path:
    """The candidate's directory, checked without the server against the contract of the model's API.
    Missing → VersionNotFound (exit 2); present but unusable → StoreError (the caller turns it into a
    refused promotion)."""
    path = store.version_dir(manifest.base_path(spec), version)
    store.validate_version(path, spec)
    return path


def model_api(manifest: Manifest, spec: ModelSpec, version: int) -> Api:
    """The model's API piece: the manifest's, else the method name of the version's signature."""
    if spec.declared_api is not None:
        return apis.piece(spec.declared_api)
    path = store.version_dir(manifest.base_path(spec), version)
    return apis.resolve(spec, store.find_signature(path, spec))


def _resolve_label(spec: ModelSpec, label: str | None) -> str:
    if label is None:
        return spec.primary_label
    if label not in spec.labels:
        raise UsageError(
            f"model {spec.name} has no label {label!r} in the manifest", hint="labels: " + ", ".join(spec.labels)
        )
    return label


# ---- the algorithm --------------------------------------------------------------------------------


class _Promotion:
    def __init__(
        self,
        manifest: Manifest,
        spec: ModelSpec,
        client: ServingClient | Fleet,
        label: str,
        kind: Kind,
        *,
        max_score_delta: float | None,
        progress: ProgressFn,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.manifest = manifest
        self.spec = spec
        self.fleet = client if isinstance(client, Fleet) else Fleet.of(client)
        # The first replica answers the diff; every replica is loaded, smoke-tested and switched.
        self.client = self.fleet.first.client
        self.label = label
        self.kind: Kind = kind
        self.max_score_delta = max_score_delta
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.state = StateDir(manifest.state_path, manifest.project)
        self.ledger = Ledger(self.state.ledger)
        self.started = clock()
        self.durations: dict[str, float] = {}
        self.touched = False
        # Shared by the intent written before the switch and the final line (see deployer.ledger).
        self.id = new_id()

    # -- helpers
    def _served(self) -> tuple[str, list[ServedModel], ServedModel]:
        text = self.state.read_models_config()
        if text is None:
            raise PromoteFailed(
                f"nothing is deployed for {self.manifest.project}: no {self.state.models_config}",
                hint=f"run `deployer up -f {self.manifest.source or 'MANIFEST'}` first",
            )
        served = parse_models_config(text)
        for entry in served:
            if entry.name == self.spec.name:
                return text, served, entry
        raise PromoteFailed(
            f"model {self.spec.name} is not in the deployed config {self.state.models_config}",
            hint="run `deployer up` to deploy the manifest's models",
        )

    def _apply(
        self, served: list[ServedModel], entry: ServedModel, *, then: Callable[[Member], None] | None = None
    ) -> str:
        """Write the file first (the truth survives a crash here), then ask each replica to match it,
        one after the other; ``then`` checks a replica before the next one is touched."""
        models = [entry if m.name == entry.name else m for m in served]
        text = render_models_config(models)
        self.touched = True
        try:
            write_atomic(self.state.models_config, text)
        except OSError as exc:
            raise PromoteFailed(f"cannot write {self.state.models_config}: {exc.strerror or exc}") from None
        for member in self.fleet:
            member.client.reload_config(text, timeout=self.manifest.server.reload_deadline_seconds)
            if then is not None:
                then(member)
        return text

    def _restore(self, old_text: str) -> str | None:
        """Put back the file and the server's config; returns what went wrong, if anything."""
        problems = []
        try:
            write_atomic(self.state.models_config, old_text)
        except OSError as exc:
            problems.append(f"writing {self.state.models_config}: {exc}")
        # Every replica, even after one fails: each one restored is one that serves the old label.
        for member in self.fleet:
            try:
                member.client.reload_config(old_text, timeout=self.manifest.server.reload_deadline_seconds)
            except DeployerError as exc:
                problems.append(f"reloading the previous config{self.fleet.where(member)}: {exc.message}")
        return "; ".join(problems) or None

    def _timed(self, phase: str, since: float) -> None:
        self.durations[phase] = self.clock() - since

    def _ask(
        self, api: Api, batch: object, target: request_builder.Target, client: ServingClient | None = None
    ) -> tuple[object, int]:
        """One request of the model's API (to ``client``, default the first replica); its parsed answer and
        the version that answered."""
        request = request_builder.grpc_request(api, self.spec, batch, target)
        response, _ = (client or self.client).infer(api.grpc_method, request)
        return api.parse_grpc(response), int(response.model_spec.version.value)

    def _diff(self, api: Api, candidate: int) -> list[CaseDiff]:
        diffs = []
        for index, case in enumerate(self.spec.smoke):
            batch = api.case_batch(self.spec, case)
            now, _ = self._ask(api, batch, request_builder.Target(label=self.label))
            new, _ = self._ask(api, batch, request_builder.Target(version=candidate))
            diffs.append(api.diff(smoke.case_name(case, index), now, new))
        return diffs

    def _verify_label(self, api: Api, candidate: int, member: Member) -> None:
        deadline = self.clock() + self.manifest.server.reload_deadline_seconds
        probe = api.probe_batch(self.spec)
        while True:
            _, served = self._ask(api, probe, request_builder.Target(label=self.label), member.client)
            if served == candidate:
                return
            if self.clock() >= deadline:
                raise _StepFailed(
                    f"after the reload, label {self.label} still answers with version {served}, not"
                    f" {candidate}{self.fleet.where(member)}"
                )
            self.sleep(_VERIFY_POLL_S)

    def _entry(self, report: PromoteReport, result: Result, reason: str) -> LedgerEntry:
        return LedgerEntry(
            time=time.time(),
            user=current_user(),
            project=self.manifest.project,
            model=report.model,
            label=report.label,
            kind=report.kind,
            from_version=report.from_version,
            to_version=report.to_version,
            result=result,
            reason=reason,
            smoke=report.smoke_summary(),
            durations=dict(self.durations),
            pid=os.getpid(),
            id=self.id,
        )

    def _intend(self, report: PromoteReport) -> None:
        """Before the label moves: a kill -9 from here on leaves an intent that models.config settles."""
        reason = f"moving {report.label} {report.from_version} → {report.to_version}"
        self.ledger.append(self._entry(report, PENDING, reason))

    def _record(self, report: PromoteReport) -> None:
        report.durations = dict(self.durations)
        self.ledger.append(self._entry(report, report.result, report.reason))

    # -- the phases
    def run(self, candidate: int) -> PromoteReport:
        old_text, served, entry = self._served()
        current = entry.labels.get(self.label)
        report = PromoteReport(
            project=self.manifest.project,
            model=self.spec.name,
            label=self.label,
            kind=self.kind,
            from_version=current,
            to_version=candidate,
            max_score_delta=self.max_score_delta,
            versions_loaded=entry.versions,
        )
        if current == candidate:
            report.noop = True
            report.reason = f"label {self.label} already points at version {candidate}"
            self._timed("total", self.started)
            report.durations = dict(self.durations)
            return report
        try:
            self._phases(report, served, entry, current, candidate)
        except BaseException as exc:
            reason = exc.message if isinstance(exc, DeployerError) else str(exc) or type(exc).__name__
            if isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            restore_error = self._restore(old_text) if self.touched else None
            report.restore_error = restore_error
            report.result = "rolled_back" if self.touched and restore_error is None else "failed"
            report.reason = reason
            report.versions_loaded = entry.versions if restore_error is None else report.versions_loaded
            self._timed("total", self.started)
            self._record(report)
            if not isinstance(exc, (DeployerError, _StepFailed)):
                raise
            message = f"{self.kind} of {self.spec.name} {self.label} → v{candidate} failed: {reason}"
            if restore_error is not None:
                message += f"; restoring the previous config also failed ({restore_error})"
                hint = f"the file {self.state.models_config} holds the previous config; `deployer up` re-applies it"
            elif self.touched:
                hint = f"label {self.label} still points at version {current}; the previous config is restored"
            else:
                hint = "the server was not changed"
            raise PromotionFailed(message, report, hint=hint) from None
        self._timed("total", self.started)
        self._record(report)
        return report

    def _phases(
        self, report: PromoteReport, served: list[ServedModel], entry: ServedModel, current: int | None, candidate: int
    ) -> None:
        model = self.spec.name
        server = self.manifest.server

        # Step 2: the candidate loads beside the current version; the label does not move.
        since = self.clock()
        loading = replace(entry, versions=tuple(sorted({*entry.versions, candidate})))
        if loading.versions != entry.versions:
            self.progress(f"step 2/5: loading version {candidate} beside {list(entry.versions)} (label unchanged)")
            self._apply(served, loading)
            served = [loading if m.name == model else m for m in served]
        else:
            self.progress(f"step 2/5: version {candidate} is already loaded")
        for member in self.fleet:
            health.wait_versions_available(
                member.client,
                model,
                [candidate],
                deadline_s=server.health_deadline_seconds,
                clock=self.clock,
                sleep=self.sleep,
            )
        report.versions_loaded = loading.versions
        self._timed("load", since)
        self.progress(f"version {candidate} is AVAILABLE ({self.durations['load']:.1f}s)")

        # Step 3, checks: the candidate by version must pass the smoke set; its answers are diffed against the label's.
        since = self.clock()
        api = model_api(self.manifest, self.spec, candidate)
        against = f" and comparing it with {self.label} (version {current})" if current is not None else ""
        on_every = f" on each of {len(self.fleet)} replicas" if len(self.fleet) > 1 else ""
        self.progress(f"step 3/5: smoke-testing version {candidate}{on_every}{against}")
        verdicts = [(member, smoke.run_smoke(member.client, self.spec, version=candidate)) for member in self.fleet]
        failing = next(((m, v) for m, v in verdicts if not v.passed), None)
        member, verdict = failing or verdicts[0]
        report.smoke = verdict.to_json()
        if len(self.fleet) > 1:
            report.smoke["replicas"] = [
                {"replica": m.slot, "target": v.target, "passed": v.passed, "failed": len(v.failures)}
                for m, v in verdicts
            ]
        if current is not None:
            report.diff = self._diff(api, candidate)
        self._timed("smoke", since)
        if not verdict.passed:
            first = verdict.failures[0]
            passed = len(verdict.cases) - len(verdict.failures)
            raise _StepFailed(
                f"version {candidate}: {len(verdict.failures)} of {len(verdict.cases)} smoke case(s) failed"
                f"{self.fleet.where(member)} ({passed} passed); {first.name}: {first.reason}"
            )
        on_all = f" on all {len(self.fleet)} replicas" if len(self.fleet) > 1 else ""
        self.progress(
            f"smoke: version {candidate} passed {len(verdict.cases)} case(s){on_all}; vs {self.label}"
            f" (version {current}): {report.class_changes} changed answer(s),"
            f" max delta {report.largest_score_delta or 0.0:.4g}"
        )
        if self.max_score_delta is not None:
            limit = self.max_score_delta
            over = [d for d in report.diff if d.delta is not None and d.delta > limit]
            if over:
                worst = max(over, key=lambda d: d.delta or 0.0)
                raise _StepFailed(
                    f"delta {distinct(worst.delta or 0.0, limit)} on case {worst.name!r} exceeds --max-delta {limit:g}"
                    f" ({len(over)} case(s) over)"
                )

        # Step 4: the label moves; legal now that the candidate is AVAILABLE.
        since = self.clock()
        self.progress(f"step 4/5: moving {self.label} {current} → {candidate}")
        switched = replace(loading, labels={**loading.labels, self.label: candidate})

        def verified(member: Member) -> None:
            self._verify_label(api, candidate, member)
            if len(self.fleet) > 1:
                self.progress(f"{member.name}: {self.label} answers with version {candidate}")

        self._intend(report)
        self._apply(served, switched, then=verified)
        served = [switched if m.name == model else m for m in served]
        self._timed("switch", since)
        self.durations["to_switch"] = self.clock() - self.started
        self.progress(f"{self.label} answers with version {candidate}")

        # Step 5: unload what nothing wants any more. Labelled versions always stay.
        since = self.clock()
        keep = {candidate, *switched.labels.values()}
        if current is not None and self.spec.version_policy.keep_previous:
            keep.add(current)
        trimmed = replace(switched, versions=tuple(v for v in switched.versions if v in keep))
        unloaded = tuple(v for v in switched.versions if v not in keep)
        if unloaded:
            self.progress(f"step 5/5: unloading version(s) {list(unloaded)}")
            self._apply(served, trimmed)
        else:
            kept = f" (keeping version {current} for a fast rollback)" if current in keep else ""
            self.progress(f"step 5/5: nothing to unload{kept}")
        report.versions_loaded = trimmed.versions
        report.versions_unloaded = unloaded
        self._timed("unload", since)


# ---- entry points ---------------------------------------------------------------------------------


def label_in_config(state: StateDir, model: str, label: str) -> int | None:
    """Where ``label`` of ``model`` points in the state directory's models.config (None: nowhere)."""
    try:
        text = state.read_models_config()
        served = parse_models_config(text) if text else []
    except DeployerError:
        return None
    return next((m.labels.get(label) for m in served if m.name == model), None)


def settled_history(state: StateDir) -> History:
    """The ledger as `history` shows it: dangling intents settled from models.config, unless their
    process still holds the state lock (then the promotion is in progress and stays pending)."""
    if not state.check():
        return History(entries=[], skipped_lines=[])
    holder = state.lock_holder_pid()
    # The lock's owner file survives a kill -9 of its holder: only a live holder is in progress.
    running = holder is not None and _alive(holder)
    return Ledger(state.ledger).settled(
        lambda m, lbl: label_in_config(state, m, lbl), lambda pid: running and pid == holder
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is not running anything
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _validate_or_refuse(manifest: Manifest, spec: ModelSpec, label: str, kind: Kind, version: int) -> None:
    try:
        validate_candidate(manifest, spec, version)
    except VersionNotFound:
        # A typo, not a deployment event: exit 2 and no ledger line.
        raise
    except StoreError as exc:
        _refused(manifest, spec, label, kind, version, exc)


def _refused(manifest: Manifest, spec: ModelSpec, label: str, kind: Kind, version: int, exc: StoreError) -> NoReturn:
    """A candidate that is unusable on disk: recorded as failed, the server never touched."""
    state = StateDir(manifest.state_path, manifest.project)
    current: int | None = None
    try:
        text = state.read_models_config()
        if text is not None:
            current = next((m.labels.get(label) for m in parse_models_config(text) if m.name == spec.name), None)
    except DeployerError:
        current = None
    report = PromoteReport(
        project=manifest.project,
        model=spec.name,
        label=label,
        kind=kind,
        from_version=current,
        to_version=version,
        result="failed",
        reason=f"refused: {exc.message}",
    )
    Ledger(state.ledger).append(
        LedgerEntry(
            time=time.time(),
            user=current_user(),
            project=manifest.project,
            model=spec.name,
            label=label,
            kind=kind,
            from_version=current,
            to_version=version,
            result="failed",
            reason=report.reason,
            pid=os.getpid(),
            id=new_id(),
        )
    )
    raise PromotionFailed(
        f"version {version} of {spec.name} is refused: {exc.message}",
        report,
        hint=exc.hint or "the server was not changed; fix or re-export the version",
    )


def promote(
    manifest: Manifest,
    client: ClientSource,
    version: int,
    *,
    model_name: str | None = None,
    label: str | None = None,
    max_delta: float | None = None,
    max_score_delta: float | None = None,
    wait: bool = True,
    progress: ProgressFn = _no_progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PromoteReport:
    """Move ``label`` (default: the model's first label) to ``version`` through the verified phases.
    ``max_delta`` (alias ``max_score_delta``) fails the promotion when a smoke case's answer moves more."""
    max_score_delta = max_delta if max_delta is not None else max_score_delta
    spec = manifest.model(model_name)
    label = _resolve_label(spec, label)
    started = clock()
    # Before the lock: a missing or broken version fails at once instead of queueing behind another promotion.
    progress(f"step 1/5: checking version {version} of {spec.name} on disk")
    _validate_or_refuse(manifest, spec, label, "promote", version)
    validated = clock() - started
    return _execute(
        manifest, spec, client, label, "promote", lambda _entries, _current: version,
        validated=validated, max_score_delta=max_score_delta, wait=wait, progress=progress, clock=clock, sleep=sleep,
    )  # fmt: skip


def rollback(
    manifest: Manifest,
    client: ClientSource,
    *,
    model_name: str | None = None,
    label: str | None = None,
    to: int | None = None,
    max_delta: float | None = None,
    max_score_delta: float | None = None,
    wait: bool = True,
    progress: ProgressFn = _no_progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PromoteReport:
    """Move ``label`` back to its previous version (from the ledger) or to ``to``, via the same phases."""
    max_score_delta = max_delta if max_delta is not None else max_score_delta
    spec = manifest.model(model_name)
    label = _resolve_label(spec, label)

    def target(entries: list[LedgerEntry], current: int | None) -> int:
        if to is not None:
            return to
        last = last_successful(entries, spec.name, label)
        if last is None or last.from_version is None:
            raise UsageError(
                f"the ledger has no earlier version of {spec.name} label {label} to roll back to",
                hint="pass --to VERSION",
            )
        if current is not None and last.to_version != current:
            # The config changed outside deployer since that entry; "previous" is ambiguous then.
            raise UsageError(
                f"label {label} points at version {current}, but the ledger's last promotion set it to"
                f" {last.to_version}; the previous version is ambiguous",
                hint="pass --to VERSION",
            )
        return last.from_version

    return _execute(
        manifest, spec, client, label, "rollback", target,
        validated=None, max_score_delta=max_score_delta, wait=wait, progress=progress, clock=clock, sleep=sleep,
    )  # fmt: skip


def _execute(
    manifest: Manifest,
    spec: ModelSpec,
    client: ClientSource,
    label: str,
    kind: Kind,
    target: Callable[[list[LedgerEntry], int | None], int],
    *,
    validated: float | None,
    max_score_delta: float | None,
    wait: bool,
    progress: ProgressFn,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> PromoteReport:
    """``validated`` is the time already spent validating the target, or None to validate under the lock."""
    state = StateDir(manifest.state_path, manifest.project)
    started = clock() - (validated or 0.0)
    with promotion_lock(state, manifest.project, wait=wait, progress=progress) as waited, ExitStack() as stack:
        # Everything below reads state under the lock: a promotion that waited sees the one before it.
        # Test doubles stand in for a client without being one: anything not callable is used as is.
        factory = callable(client) and not isinstance(client, (ServingClient, Fleet))
        live = stack.enter_context(client()) if factory else cast("ServingClient | Fleet", client)  # type: ignore[operator]
        run = _Promotion(
            manifest, spec, live, label, kind,
            max_score_delta=max_score_delta, progress=progress, clock=clock, sleep=sleep,
        )  # fmt: skip
        run.started = started
        run.durations["lock_wait"] = waited
        _, _, entry = run._served()
        ledger = Ledger(state.ledger)
        # A promotion killed after its intent left the history one line short: settle it from the config.
        for settled in ledger.complete_dangling(lambda m, lbl: label_in_config(state, m, lbl)):
            progress(f"ledger: settled an interrupted {settled.kind} ({settled.result}): {settled.reason}")
        version = target(ledger.entries(), entry.labels.get(label))
        if validated is None:
            since = clock()
            progress(f"step 1/5: checking version {version} of {spec.name} on disk")
            _validate_or_refuse(manifest, spec, label, kind, version)
            validated = clock() - since
        run.durations["validate"] = validated
        return run.run(version)
