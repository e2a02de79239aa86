"""Group "up": `deployer up` per phase, cold and warm, per runtime; `deployer smoke` wall time and peak RSS.

cold    = empty base path and no server: train, export, start, healthy, smoke.
restart = a version exists, no server: start, healthy, smoke (what a machine reboot costs).
warm    = the server runs with an unchanged spec: `up` only re-checks health and smokes.
Goals: docker warm ≤ 10 s, cold ≤ 30 s; smoke ≤ 1 s wall and ≤ 150 MB peak RSS for 10 cases.
Everything runs on free ports in a temporary project; every server is taken down at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("runtime", "train", "export", "start", "healthy", "smoke", "total")
SMOKE_RUNS = 5


def _env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


# The measured CLI is started by this small launcher, not by the benchmark process: Python spawns
# children with vfork, and Linux folds the pre-exec address space's high-water mark (here the bench's
# own ~600 MB with TensorFlow loaded) into the child's ru_maxrss.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _deployer(*args: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run the CLI; returns the process, its wall time and its own peak RSS in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        command = [sys.executable, "-c", "from deployer.cli import main; main()", *args]
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(rss_file), *command],
            capture_output=True, text=True, env=_env(), cwd=str(ROOT), check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        rss_mb = int(rss_file.read_text()) / 1024  # Linux reports KiB
    return subprocess.CompletedProcess(command, process.returncode, process.stdout, process.stderr), wall, rss_mb


def _manifest(workdir: Path, runtime: str, image: str | None) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "iris.yaml").read_text())
    doc["project"] = f"bench-{runtime}-{uuid.uuid4().hex[:6]}"
    doc["project_root"] = str(ROOT)
    doc["state_dir"] = str(workdir / "state")
    doc["models"][0]["base_path"] = str(workdir / "exports" / "iris")
    doc["server"].update({"runtime": runtime, "grpc_port": 0, "rest_port": 0})
    if image:
        doc["server"]["image"] = image
    # Ten smoke cases, the size the smoke goal is stated for.
    cases = doc["models"][0]["smoke"]
    doc["models"][0]["smoke"] = (cases * 2)[:10]
    path = workdir / "deployer.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _up(manifest: Path) -> dict[str, float]:
    result, wall, _ = _deployer("up", "-f", str(manifest), "--json")
    if result.returncode != 0:
        raise RuntimeError(f"deployer up failed ({result.returncode}): {result.stderr[-2000:]}")
    timings: dict[str, float] = json.loads(result.stdout)["timings_s"]
    timings["wall"] = wall
    return timings


def _runtime_rows(runtime: str, image: str | None) -> tuple[list[str], list[float], list[float]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"bench-up-{runtime}-") as tmp:
        manifest = _manifest(Path(tmp), runtime, image)
        try:
            for kind in ("cold", "warm"):
                t = _up(manifest)
                rows.append(_row(runtime, kind, t))
            _deployer("down", "-f", str(manifest))
            rows.append(_row(runtime, "restart", _up(manifest)))
            walls, rss = [], []
            for _ in range(SMOKE_RUNS):
                result, wall, peak = _deployer("smoke", "-f", str(manifest))
                if result.returncode != 0:
                    raise RuntimeError(f"deployer smoke failed: {result.stderr[-1000:]}")
                walls.append(wall)
                rss.append(peak)
        finally:
            _deployer("down", "-f", str(manifest))
    return rows, walls, rss


def _row(runtime: str, kind: str, t: dict[str, float]) -> str:
    cells = " | ".join(f"{t.get(p, 0.0):.2f}" for p in PHASES)
    return f"| {runtime} | {kind} | {cells} | {t['wall']:.2f} |"


def _docker_image() -> tuple[str | None, str]:
    try:
        from deployer.runtime.docker import compat_image, connect

        runtime = connect()
        image = compat_image()
        if runtime.image_labels(image) is None:
            return None, f"skipped: image {image} is not built (`make image`)"
        return image, ""
    except Exception as exc:  # a benchmark reports what it could not measure instead of failing
        return None, f"skipped: {exc}"


def run() -> str:
    lines = [
        "## up",
        "",
        "`deployer up` on the iris manifest (10 smoke cases), seconds per phase as `up --json` reports them; "
        "`wall` is the whole CLI process. cold = empty base path, no server; warm = server running, unchanged "
        "spec; restart = version on disk, no server.",
        "",
        "| runtime | run | " + " | ".join(PHASES) + " | wall |",
        "|---|---|" + "---|" * (len(PHASES) + 1),
    ]
    smoke_lines = []
    notes = []
    targets: list[tuple[str, str | None]] = [("local", None)]
    image, why = _docker_image()
    if image is not None:
        targets.append(("docker", image))
    else:
        notes.append(f"docker: {why}")
    for runtime, img in targets:
        try:
            rows, walls, rss = _runtime_rows(runtime, img)
        except RuntimeError as exc:
            notes.append(f"{runtime}: failed: {exc}")
            continue
        lines += rows
        smoke_lines.append(
            f"| {runtime} | {statistics.median(walls):.2f} | {max(walls):.2f} | {max(rss):.0f} |"
        )
    lines += [
        "",
        f"`deployer smoke` (10 cases over gRPC, {SMOKE_RUNS} runs; peak RSS of the CLI process from wait4):",
        "",
        "| runtime | wall median (s) | wall max (s) | peak RSS (MB) |",
        "|---|---|---|---|",
        *smoke_lines,
        "",
        "Goals: docker warm ≤ 10 s, cold ≤ 30 s; smoke ≤ 1 s wall and ≤ 150 MB RSS.",
    ]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
