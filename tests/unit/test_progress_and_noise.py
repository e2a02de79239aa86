"""Long steps report progress (image pulls, training epochs); TensorFlow's start-up chatter stays out of
deployer's output (issue 12 item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deployer import tf_noise
from deployer.runtime.docker import PullProgress

CHATTER = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796100376.919273   21602 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796100376.919593   21602 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796100377.038608   21602 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796100378.637473   21602 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""  # noqa: E501
REAL = """\
2026-11-30 10:00:00 INFO deployer.model_server: Loading servable iris version 1
E0000 00:00:1796100378.1   21602 loader_harness.cc:74] Loading servable: {name: iris version: 1} failed: NOT_FOUND
"""


def test_strip_removes_the_chatter_and_keeps_real_lines() -> None:
    assert tf_noise.strip(CHATTER) == ""
    assert tf_noise.strip(CHATTER + REAL) == REAL
    assert all(not tf_noise.is_noise(line) for line in REAL.splitlines())


def test_importing_tensorflow_through_deployer_prints_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = (
        "import sys\n"
        "from deployer.tf_noise import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "print(tf.constant([2.0]).numpy()[0])\n"
        "print('real error kept', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.0"
    assert result.stderr == "real error kept\n"


def test_writes_inside_the_filter_are_replayed_unless_chatter(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from deployer.tf_noise import filtered_stderr\n"
        "with filtered_stderr():\n"
        f"    os.write(2, {CHATTER.encode()!r})\n"
        "    os.write(2, b'W0000 00:00:1.0 1 saver.cc:10] a real warning\\n')\n"
        "print('after', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stderr == "W0000 00:00:1.0 1 saver.cc:10] a real warning\nafter\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pull_progress_reports_layers_and_megabytes_every_few_seconds() -> None:
    clock, lines = Clock(), []
    progress = PullProgress("tensorflow/serving:2.19.1", lines.append, every_s=2.0, clock=clock)
    events = [{"status": "Pulling from tensorflow/serving", "id": "2.19.1"}]
    events += [{"status": "Pulling fs layer", "id": layer} for layer in ("a", "b", "c")]
    events += [{"status": "Already exists", "id": "c"}]
    for step in range(1, 11):
        events.append({"status": "Downloading", "id": "a", "progressDetail": {"current": step * 10_000_000,
                                                                               "total": 100_000_000}})  # fmt: skip
        events.append({"status": "Downloading", "id": "b", "progressDetail": {"current": step * 2_000_000,
                                                                               "total": 20_000_000}})  # fmt: skip
    events += [{"status": "Pull complete", "id": "a"}, {"status": "Pull complete", "id": "b"}]
    for event in events:
        clock.now += 0.5
        progress.update(event)
    progress.finish()
    assert 3 <= len(lines) <= 8, lines
    assert any("MB downloaded" in line for line in lines)
    assert lines[0] == "pulling tensorflow/serving:2.19.1: 0 of 3 layers done"
    assert "pulling tensorflow/serving:2.19.1: 1 of 3 layers done, 94 of 120 MB downloaded" in lines
    assert lines[-1] == "pulled tensorflow/serving:2.19.1 (3 layers)"


def test_training_reports_epochs(tmp_path: Path) -> None:
    from deployer.manifest import load_manifest
    from deployer.trainer import run_trainer
    from tests.unit.conftest import tmp_iris_manifest

    manifest = load_manifest(tmp_iris_manifest(tmp_path))
    lines: list[str] = []
    run_trainer(manifest, manifest.model(), progress=lines.append)
    assert lines[0] == "300 epochs over 120 rows"
    assert lines[-1].startswith("epoch 300/300: loss ")
