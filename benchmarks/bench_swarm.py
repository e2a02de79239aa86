"""Group "swarm": two replicas on a single-node Docker Swarm next to one docker container, in the same run.

Per round and runtime (rounds interleaved: docker, swarm, docker, swarm): `deployer up` cold (nothing
running: container or service created, model loaded, every replica healthy and smoked), `deployer up`
warm (the running server reused), then `deployer promote 2` under paced batch-1 Classify load on the
label (swarm: a gRPC client with the round_robin policy over both replicas' endpoints), reporting
requests, failed requests and p50/p99 before, during and after the promotion. The swarm is
initialised here when the daemon has none, and left afterwards only then. Everything is local
(127.0.0.1) and taken down at the end.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_promote import (
    QUIET_S,
    THREADS,
    Load,
    _deployer,
    _docker_image,
    _manifest,
    _pct,
    _window,
    _write_model,
)

ROUNDS = 2
TARGET_RPS = 250
REPLICAS = 2


def _ensure_swarm() -> tuple[bool, str]:
    """(created, problem): initialise a single-node swarm unless one is active."""
    from deployer.runtime.docker import connect

    client = connect().client
    info = client.info().get("Swarm") or {}
    if info.get("LocalNodeState") == "active":
        return False, "" if info.get("ControlAvailable") else "this engine is a swarm worker"
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    except Exception as exc:  # the section reports what it could not measure
        return False, f"cannot initialise a swarm: {exc}"
    return True, ""


def _leave_swarm() -> None:
    from deployer.runtime.docker import connect

    connect().client.swarm.leave(force=True)


def _round(runtime: str, image: str) -> dict[str, Any]:
    from deployer.state import StateDir

    with tempfile.TemporaryDirectory(prefix=f"bench-{runtime}-") as tmp:
        workdir = Path(tmp)
        manifest = _manifest(workdir, runtime, image)
        if runtime == "swarm":
            doc = yaml.safe_load(manifest.read_text())
            doc["server"]["replicas"] = REPLICAS
            manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        base = workdir / "models" / "iris"
        _write_model(base, 1)
        out: dict[str, Any] = {"runtime": runtime}
        try:
            for phase in ("cold", "warm"):
                started = time.perf_counter()
                up = _deployer("up", "-f", str(manifest))
                out[f"up_{phase}"] = time.perf_counter() - started
                if up.returncode != 0:
                    raise RuntimeError(f"deployer up ({phase}) exited {up.returncode}: {up.stderr[-1500:]}")
            _write_model(base, 2)
            handle = StateDir(workdir / "state").load_handle()
            assert handle is not None
            endpoints = [e.grpc_target for e in handle.fleet]
            target = endpoints[0] if len(endpoints) == 1 else "ipv4:" + ",".join(endpoints)
            load = Load(target, TARGET_RPS, THREADS, lb_policy="round_robin" if len(endpoints) > 1 else None)
            marks = {"start": time.perf_counter()}
            load.start()
            try:
                time.sleep(QUIET_S)
                marks["promote"] = time.perf_counter()
                promoted = _deployer("promote", "2", "-f", str(manifest))
                marks["promoted"] = time.perf_counter()
                time.sleep(QUIET_S)
                marks["end"] = time.perf_counter()
            finally:
                load.stop()
            if promoted.returncode != 0:
                raise RuntimeError(f"deployer promote exited {promoted.returncode}: {promoted.stderr[-1500:]}")
            out["replicas"] = len(endpoints)
            out["windows"] = []
            for name, start, end in (
                ("before", marks["start"], marks["promote"]),
                ("during", marks["promote"], marks["promoted"]),
                ("after", marks["promoted"], marks["end"]),
            ):
                window = _window(load.samples, start, end)
                ok = [s.latency * 1000 for s in window if s.ok]
                out["windows"].append(
                    (name, end - start, len(window), sum(1 for s in window if not s.ok), _pct(ok, 0.5), _pct(ok, 0.99))
                )
            out["errors"] = sorted(set(load.errors))[:3]
        finally:
            _deployer("down", "-f", str(manifest))
    return out


def run() -> str:
    lines = [
        "## swarm",
        "",
        f"Two replicas as a Docker Swarm service (`--runtime swarm`, `server.replicas: {REPLICAS}`) next to one"
        f" container (`--runtime docker`), same image, rounds interleaved ({ROUNDS} per runtime). `up` cold: nothing"
        " running (container/service created, model loaded, every replica healthy, smoke on every replica);"
        " warm: the running server reused. Then `deployer promote 2` under paced batch-1 Classify on `stable` at"
        f" {TARGET_RPS} req/s from {THREADS} threads (swarm: `round_robin` over both replicas' endpoints), with"
        f" {QUIET_S:.0f} s of load before and after. Latency in ms, client-side, successful requests.",
        "",
    ]
    image, why = _docker_image()
    if image is None:
        return "\n".join([*lines, f"Not measured: docker unavailable ({why}).", ""])
    created, problem = _ensure_swarm()
    if problem:
        return "\n".join([*lines, f"Not measured: {problem}.", ""])
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        for _ in range(ROUNDS):
            for runtime in ("docker", "swarm"):
                try:
                    results.append(_round(runtime, image))
                except Exception as exc:  # report the failure, keep measuring the rest
                    notes.append(f"{runtime}: {str(exc)[:400]}")
    finally:
        if created:
            _leave_swarm()
    lines += ["| runtime | replicas | `up` cold s (median) | `up` warm s (median) |", "|---|---|---|---|"]
    for runtime in ("docker", "swarm"):
        mine = [r for r in results if r["runtime"] == runtime]
        if mine:
            cold = statistics.median(r["up_cold"] for r in mine)
            warm = statistics.median(r["up_warm"] for r in mine)
            lines.append(f"| {runtime} | {mine[0]['replicas']} | {cold:.2f} | {warm:.2f} |")
    lines += [
        "",
        "| runtime | round | window | s | requests | failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for runtime in ("docker", "swarm"):
        for index, result in enumerate(r for r in results if r["runtime"] == runtime):
            for name, seconds, requests, failed, p50, p99 in result["windows"]:
                lines.append(
                    f"| {runtime} | {index + 1} | {name} promote | {seconds:.1f} | {requests} | {failed} |"
                    f" {p50:.2f} | {p99:.2f} |"
                )
            if result["errors"]:
                notes.append(f"{runtime} round {index + 1} errors: " + "; ".join(result["errors"]))
    total_failed = sum(w[3] for r in results for w in r["windows"])
    lines += ["", f"**{total_failed} failed requests in total** (goal 0)."]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
