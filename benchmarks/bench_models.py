"""Benchmark group "models": the three example models (iris Classify, diabetes Regress, digits Predict)
served together from manifests/zoo.yaml on the local runtime.

Per model, in one run with the variants interleaved: ``deployer smoke --model M`` wall time and the CLI's
own peak RSS (goal ≤ 150 MB: smoke never imports TensorFlow), and batch-1 requests/s of the server
(one client process over gRPC, the model's first smoke case, built by deployer.apis) against the
in-process signature call (the same request's tensors through the session-loaded signature).
Run alone: ``python -m benchmarks.run models``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
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

from benchmarks.bench_up import _deployer, _env

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("iris", "diabetes", "digits")
SMOKE_RUNS = 5
DURATION = float(os.environ.get("BENCH_MODELS_SECONDS", "3"))


def _manifest(workdir: Path) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests" / "zoo.yaml").read_text())
    doc["project"] = f"bench-zoo-{uuid.uuid4().hex[:6]}"
    doc["project_root"] = str(ROOT)
    doc["state_dir"] = str(workdir / "state")
    for model in doc["models"]:
        model["base_path"] = str(workdir / "exports" / model["name"])
    doc["server"].update({"runtime": "local", "grpc_port": 0, "rest_port": 0})
    path = workdir / "zoo.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _client(manifest_path: str, name: str, target: str, duration: float, out: Any) -> None:
    """A separate process: no GIL shared with the measuring side; TensorFlow-free like `deployer smoke`."""
    from deployer import apis
    from deployer.apis import request_builder
    from deployer.client import ServingClient
    from deployer.manifest import load_manifest

    model = load_manifest(manifest_path).model(name)
    api = apis.piece(model.declared_api or "classify")
    request = request_builder.grpc_request(
        api, model, api.case_batch(model, model.smoke[0]), request_builder.Target(label=model.primary_label)
    )
    with ServingClient(target) as client:
        client.infer(api.grpc_method, request)
        count, end = 0, time.perf_counter() + duration
        while time.perf_counter() < end:
            client.infer(api.grpc_method, request)
            count += 1
    out.put(count / duration)


def _server_rate(manifest_path: Path, name: str, target: str) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_client, args=(str(manifest_path), name, target, DURATION, queue))
    process.start()
    rate = float(queue.get(timeout=DURATION + 120))
    process.join(30)
    return rate


def _in_process_rate(manifest_path: Path, name: str) -> float:
    from deployer import apis, store
    from deployer.local_run import LocalModel
    from deployer.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    model = manifest.model(name)
    _, path = store.resolve_version(manifest.base_path(model), None)
    sig = store.find_signature(path, model)
    api = apis.resolve(model, sig)
    batch = api.case_batch(model, model.smoke[0])
    with LocalModel(path) as loaded:
        call = loaded.caller(sig)
        api.run_local(model, call, sig, batch)
        count, end = 0, time.perf_counter() + DURATION
        while time.perf_counter() < end:
            api.run_local(model, call, sig, batch)
            count += 1
    return count / DURATION


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        manifest = _manifest(Path(tmp))
        up, up_wall, _ = _deployer("up", "-f", str(manifest), "--json")
        if up.returncode != 0:
            raise RuntimeError(f"deployer up failed:\n{up.stderr[-3000:]}")
        target = json.loads(up.stdout)["server"]["grpc"]
        rows = []
        try:
            walls: dict[str, list[float]] = {m: [] for m in MODELS}
            rss: dict[str, list[float]] = {m: [] for m in MODELS}
            for _ in range(SMOKE_RUNS):  # interleaved: every model once per round
                for name in MODELS:
                    result, wall, peak = _deployer("smoke", "-f", str(manifest), "--model", name)
                    if result.returncode != 0:
                        raise RuntimeError(f"deployer smoke --model {name} failed:\n{result.stderr[-3000:]}")
                    walls[name].append(wall)
                    rss[name].append(peak)
            for name in MODELS:
                local = _in_process_rate(manifest, name)
                served = _server_rate(manifest, name, target)
                rows.append((name, local, served, walls[name], rss[name]))
        finally:
            subprocess.run(
                [sys.executable, "-c", "from deployer.cli import main; main()", "down", "-f", str(manifest)],
                env=_env(), capture_output=True, check=False,
            )  # fmt: skip
    api_of = {"iris": "Classify", "diabetes": "Regress", "digits": "Predict"}
    lines = [
        "## models",
        "",
        f"The example models served together (`manifests/zoo.yaml`, local runtime; `up` incl. training all three:"
        f" {up_wall:.1f} s). Smoke: {SMOKE_RUNS} runs per model, interleaved; peak RSS of the CLI process"
        f" (wait4). Throughput: batch-1 requests of the model's first smoke case for {DURATION:g} s, one client"
        " process over gRPC, against the same tensors through the session-loaded signature in-process.",
        "",
        "| model | API | smoke wall median (s) | smoke peak RSS (MB) | server req/s | in-process calls/s"
        " | server / in-process |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, local, served, wall, peak in rows:
        lines.append(
            f"| {name} | {api_of[name]} | {statistics.median(wall):.2f} | {max(peak):.0f} | {served:,.0f}"
            f" | {local:,.0f} | {served / local:.2f}× |"
        )
    lines += ["", "Goal: smoke ≤ 150 MB peak RSS for every API (no TensorFlow import)."]
    return "\n".join(lines) + "\n"
