"""Group "promote": a label swap under load. Goal: zero failed requests on the label.

On the docker runtime with the compatible image (falls back to local, with a note, when Docker or the
image is unavailable): v1 is up behind `stable`, v2 is exported beside it; a paced load client sends
batch-1 Classify to `stable` at TARGET_RPS while `deployer promote 2` runs, then while
`deployer rollback` runs. Reported: failed requests, p50/p99 latency per window, and the time from
the command's start to the first answer served by the new version (seen by the load client), next
to the CLI's own "to_switch" figure. Everything is local (127.0.0.1), bounded in time and count, and
the server is taken down at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS = 250
THREADS = 6
QUIET_S = 5.0  # load before, between and after the commands
MAX_SECONDS = 240.0  # hard bound on the load, whatever the commands do
FEATURES = ("SepalLength", "SepalWidth", "PetalLength", "PetalWidth")
ROWS = ((5.1, 3.3, 1.7, 0.5), (5.9, 3.0, 4.2, 1.5), (6.9, 3.1, 5.4, 2.1))


def _env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


def _run(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=timeout
    )


def _deployer(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("-c", "from deployer.cli import main; main()", *args)


def _write_model(base: Path, version: int) -> None:
    # A subprocess keeps TensorFlow out of this process, whose threads are the load generator.
    result = _run("-m", "tests.savedmodels", str(base), str(version), "--kind", "good")
    if result.returncode != 0:
        raise RuntimeError(f"cannot write model version {version}: {result.stderr[-1000:]}")


def _manifest(workdir: Path, runtime: str, image: str | None) -> Path:
    doc: dict[str, Any] = {
        "project": f"bench-promote-{uuid.uuid4().hex[:6]}",
        "state_dir": str(workdir / "state"),
        "models": [
            {
                "name": "iris",
                "trainer": "models.iris.trainer:train",
                "base_path": str(workdir / "models" / "iris"),
                "features": [{"name": n} for n in FEATURES],
                "classes": ["0", "1", "2"],
                "labels": ["stable"],
                "smoke": [
                    {"name": f"row{i}", "features": dict(zip(FEATURES, row, strict=True)), "expect_class": str(i)}
                    for i, row in enumerate(ROWS)
                ],
            }
        ],
        "server": {"runtime": runtime, "grpc_port": 0, "rest_port": 0},
    }
    if image:
        doc["server"]["image"] = image
    path = workdir / "deployer.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _docker_image() -> tuple[str | None, str]:
    try:
        from deployer.runtime.docker import compat_image, connect

        runtime = connect()
        image = compat_image()
        if runtime.image_labels(image) is None:
            return None, f"image {image} is not built (`make image`)"
        return image, ""
    except Exception as exc:  # a benchmark reports what it could not measure instead of failing
        return None, str(exc)


@dataclass(frozen=True)
class Sample:
    sent: float  # perf_counter at send
    latency: float
    ok: bool
    version: int


class Load:
    """Paced batch-1 Classify on a label: each thread sends on its own schedule (no catch-up bursts)."""

    def __init__(self, target: str, rps: float, threads: int, lb_policy: str | None = None) -> None:
        self.target, self.rps, self.threads, self.lb_policy = target, rps, threads, lb_policy
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _worker(self, offset: float) -> None:
        from deployer.client import ServingClient
        from deployer.errors import ServerRequestError

        interval = self.threads / self.rps
        example = [dict(zip(FEATURES, ROWS[1], strict=True))]
        started = time.perf_counter()
        next_send = started + offset
        with ServingClient(self.target, timeout=10.0, lb_policy=self.lb_policy) as client:
            while not self._stop.is_set() and time.perf_counter() - started < MAX_SECONDS:
                delay = next_send - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                # Behind schedule (a slow answer): skip the missed slots rather than burst to catch up.
                next_send = max(next_send + interval, time.perf_counter())
                sent = time.perf_counter()
                try:
                    answer = client.classify("iris", example, label="stable")
                    sample = Sample(sent, time.perf_counter() - sent, True, answer.version)
                except ServerRequestError as exc:
                    sample = Sample(sent, time.perf_counter() - sent, False, 0)
                    with self._lock:
                        self.errors.append(exc.message)
                with self._lock:
                    self.samples.append(sample)

    def start(self) -> None:
        interval = self.threads / self.rps
        self._workers = [
            threading.Thread(target=self._worker, args=(i * interval / self.threads,), daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.sent < end]


def _first_answer_from(samples: list[Sample], version: int, after: float) -> float | None:
    times = [s.sent + s.latency for s in samples if s.ok and s.version == version and s.sent >= after]
    return min(times) - after if times else None


def _measure(runtime: str, image: str | None) -> tuple[list[str], list[str]]:
    from deployer.state import StateDir

    rows: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-promote-") as tmp:
        workdir = Path(tmp)
        manifest = _manifest(workdir, runtime, image)
        base = workdir / "models" / "iris"
        _write_model(base, 1)
        up_args = ["up", "-f", str(manifest), "--runtime", runtime] + (["--image", image] if image else [])
        try:
            up = _deployer(*up_args)
            if up.returncode != 0:
                raise RuntimeError(f"deployer up failed ({up.returncode}): {up.stderr[-2000:]}")
            _write_model(base, 2)  # beside v1; the specific version policy leaves it unloaded
            handle = StateDir(workdir / "state").load_handle()
            assert handle is not None
            load = Load(handle.grpc_target, TARGET_RPS, THREADS)
            marks: dict[str, float] = {"start": time.perf_counter()}
            load.start()
            try:
                time.sleep(QUIET_S)
                marks["promote"] = time.perf_counter()
                promoted = _deployer("promote", "2", "-f", str(manifest), "--json")
                marks["promoted"] = time.perf_counter()
                time.sleep(QUIET_S)
                marks["rollback"] = time.perf_counter()
                rolled = _deployer("rollback", "-f", str(manifest), "--json")
                marks["rolled_back"] = time.perf_counter()
                time.sleep(QUIET_S)
                marks["end"] = time.perf_counter()
            finally:
                load.stop()
            for name, result in (("promote", promoted), ("rollback", rolled)):
                if result.returncode != 0:
                    notes.append(f"`deployer {name}` exited {result.returncode}: {result.stderr.strip()[-300:]}")
            reports = {}
            for name, result in (("promote", promoted), ("rollback", rolled)):
                try:
                    reports[name] = json.loads(result.stdout)
                except ValueError:
                    reports[name] = {}
        finally:
            _deployer("down", "-f", str(manifest))

    samples = load.samples
    windows = [
        ("before (v1)", marks["start"], marks["promote"]),
        ("during promote 1→2", marks["promote"], marks["promoted"]),
        ("after promote (v2)", marks["promoted"], marks["rollback"]),
        ("during rollback 2→1", marks["rollback"], marks["rolled_back"]),
        ("after rollback (v1)", marks["rolled_back"], marks["end"]),
    ]
    for name, start, end in windows:
        window = _window(samples, start, end)
        ok = [s.latency * 1000 for s in window if s.ok]
        failed = sum(1 for s in window if not s.ok)
        rate = len(window) / (end - start) if end > start else 0.0
        versions = ",".join(str(v) for v in sorted({s.version for s in window if s.ok}))
        rows.append(
            f"| {runtime} | {name} | {end - start:.1f} | {len(window)} | {rate:.0f} | {failed} |"
            f" {_pct(ok, 0.5):.2f} | {_pct(ok, 0.99):.2f} | {versions} |"
        )
    total_failed = sum(1 for s in samples if not s.ok)
    switch_seen = _first_answer_from(samples, 2, marks["promote"])
    back_seen = _first_answer_from(samples, 1, marks["rollback"])
    promote_durations = reports["promote"].get("durations", {})
    rollback_durations = reports["rollback"].get("durations", {})

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows.append("")
    rows.append(
        f"**{runtime}: {total_failed} failed of {len(samples)} requests** (goal 0)."
        f" Command → label switch: promote {fmt(switch_seen)} s as seen by the load client"
        f" (CLI report: {fmt(promote_durations.get('to_switch'))} s from its start;"
        f" total {fmt(promote_durations.get('total'))} s, load {fmt(promote_durations.get('load'))} s,"
        f" smoke+diff {fmt(promote_durations.get('smoke'))} s);"
        f" rollback {fmt(back_seen)} s seen (CLI: {fmt(rollback_durations.get('to_switch'))} s,"
        f" total {fmt(rollback_durations.get('total'))} s)."
    )
    if load.errors:
        notes.append("first errors: " + "; ".join(sorted(set(load.errors))[:3]))
    wall_promote = marks["promoted"] - marks["promote"]
    notes.append(
        f"{runtime}: promote CLI wall {wall_promote:.2f} s including interpreter start-up;"
        f" median load latency overall {statistics.median([s.latency * 1000 for s in samples if s.ok]):.2f} ms"
    )
    return rows, notes


def run() -> str:
    lines = [
        "## promote",
        "",
        f"A label swap under load: {THREADS} client threads send batch-1 Classify to `stable` paced at"
        f" {TARGET_RPS} req/s in total while `deployer promote 2` (v1 → v2) and then `deployer rollback` run,"
        f" with {QUIET_S:.0f} s of load before, between and after. Latency in ms (client-side, successful"
        ' requests); "switch" is the time from the command\'s start to the first answer from the new version.',
        "",
        "| runtime | window | s | requests | req/s | failed | p50 ms | p99 ms | versions seen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    image, why = _docker_image()
    runtime = "docker" if image is not None else "local"
    if image is None:
        notes.append(f"docker unavailable ({why}); measured on the local runtime instead")
    try:
        rows, more = _measure(runtime, image)
        lines += rows
        notes += more
    except Exception as exc:  # the section says what failed instead of aborting the other groups
        lines.append(f"| {runtime} | failed: {str(exc)[:300]} | | | | | | | |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
