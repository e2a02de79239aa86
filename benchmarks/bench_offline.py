"""Benchmark group "offline": `deployer train` (train + export) and the offline read commands.

Each measurement is a whole fresh process, as a user runs it (so TensorFlow's import is included),
repeated RUNS times; the table reports the median. ``seconds_train``/``seconds_export`` come from
``deployer train --json`` (in-process perf_counter; train includes the trainer's Keras import).
Peak RSS is the largest child's ru_maxrss. Exports go to a temporary directory, not exports/.
Run alone: ``python -m benchmarks.bench_offline``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_OFFLINE_RUNS", "3"))
DEPLOYER = Path(sys.executable).with_name("deployer")
SEED_EXAMPLE = ["SepalLength=5.1", "SepalWidth=3.3", "PetalLength=1.7", "PetalWidth=0.5"]


def _manifest(tmp: Path) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "iris.yaml").read_text(encoding="utf-8"))
    doc["project_root"] = str(ROOT)
    doc["state_dir"] = str(tmp / "state")
    doc["models"][0]["base_path"] = str(tmp / "exports" / "iris")
    path = tmp / "iris.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _timed(args: list[str]) -> tuple[float, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}"


def run() -> str:
    walls: list[float] = []
    trains: list[float] = []
    exports: list[float] = []
    accuracies: list[float] = []
    predicts: list[float] = []
    inspects: list[float] = []
    imports: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(_manifest(Path(tmp)))
        for _ in range(RUNS):
            wall, out = _timed([str(DEPLOYER), "train", "-f", manifest, "--json"])
            payload = json.loads(out)
            walls.append(wall)
            trains.append(payload["seconds_train"])
            exports.append(payload["seconds_export"])
            accuracies.append(payload["metrics"]["accuracy"])
        example_args = [arg for pair in SEED_EXAMPLE for arg in ("--example", pair)]
        for _ in range(RUNS):
            predicts.append(_timed([str(DEPLOYER), "predict", "-f", manifest, "--local", *example_args])[0])
            inspects.append(_timed([str(DEPLOYER), "inspect", "-f", manifest])[0])
            imports.append(_timed([sys.executable, "-c", "import keras, tensorflow"])[0])
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    spread = f"min {min(accuracies):.4f}, max {max(accuracies):.4f}"
    same = "identical in every run" if len(set(accuracies)) == 1 else spread
    return "\n".join(
        [
            "## offline",
            "",
            f"Iris (Keras [10, 10] DNN, 120 train / 30 held-out rows, seed 42), median of {RUNS} fresh processes.",
            "",
            "| step | median s | runs (s) |",
            "|---|---|---|",
            f"| `deployer train` whole process | {_median(walls)} | {', '.join(f'{w:.2f}' for w in walls)} |",
            f"| ↳ train (incl. Keras/TF import) | {_median(trains)} | {', '.join(f'{t:.2f}' for t in trains)} |",
            f"| ↳ export (SavedModel + warmup + metadata, fsync, rename) | {_median(exports)} | "
            f"{', '.join(f'{e:.2f}' for e in exports)} |",
            f"| for scale: `python -c 'import keras, tensorflow'` | {_median(imports)} | "
            f"{', '.join(f'{i:.2f}' for i in imports)} |",
            f"| `deployer predict --local` (1 row) whole process | {_median(predicts)} | "
            f"{', '.join(f'{p:.2f}' for p in predicts)} |",
            f"| `deployer inspect` whole process (no TF import) | {_median(inspects)} | "
            f"{', '.join(f'{i:.2f}' for i in inspects)} |",
            "",
            f"- Held-out accuracy: **{statistics.median(accuracies):.4f}** ({same})",
            f"- Peak RSS of the largest child process: **{peak_rss_mib:.0f} MiB**",
            "",
        ]
    )


if __name__ == "__main__":
    print(run())
