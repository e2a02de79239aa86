"""Issue 9, items 5, 6, 8 and 15: the state directory is deployer's own and never a trap.

Item 5: state files were opened following symlinks, as root (a planted `server.log` symlink
truncated its target, a `ledger.jsonl` symlink got lines appended). Item 6: under umask 000 the state
dir was 0777 and logs/pid/lock 0666. Item 8: `config/` of an existing directory was chmodded
0700 → 0755. Item 15: a corrupt or FIFO `server.json` was a dead end for `status` and `down`.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from deployer.cli import main
from deployer.errors import UnsafeStateError
from deployer.ledger import Ledger, LedgerEntry
from deployer.runtime.base import ServerHandle
from deployer.state import CorruptHandle, StateDir
from tests import manifests

HANDLE = ServerHandle("local", "999999", "deployer-model-server", "127.0.0.1:1", None, "abc", project="p")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the state directory that a planted symlink points at."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state", "p")
    state.ensure()
    return state


def entry() -> LedgerEntry:
    return LedgerEntry(1.0, "u", "p", "iris", "stable", "promote", 1, 2, "ok")


# ---- item 5: no symlink is followed -------------------------------------------------------------

PLANTED: list[tuple[str, Callable[[StateDir], object]]] = [
    ("server.log", lambda s: s.open_log()),
    ("ledger.jsonl", lambda s: Ledger(s.ledger).append(entry())),
    ("promote.lock", lambda s: s.operation_lock("promote").__enter__()),
    ("ledger.jsonl.lock", lambda s: Ledger(s.ledger).append(entry())),
]


@pytest.mark.parametrize(("name", "action"), PLANTED, ids=[name for name, _ in PLANTED])
def test_a_planted_symlink_is_refused_and_its_target_untouched(
    state: StateDir, victim: Path, name: str, action: Callable[[StateDir], object]
) -> None:
    (state.root / name).symlink_to(victim)
    with pytest.raises(UnsafeStateError, match=r"symlink|cannot lock|cannot open"):
        action(state)
    assert victim.read_text() == "precious\n"
    assert mode(victim) == 0o644


def test_a_symlinked_handle_is_unusable_and_replacing_it_leaves_the_target(state: StateDir, victim: Path) -> None:
    state.handle_file.symlink_to(victim)
    with pytest.raises(CorruptHandle, match=r"server\.json is a symlink"):
        state.load_handle()
    state.save_handle(HANDLE)  # rename replaces the link itself
    assert victim.read_text() == "precious\n"
    assert not state.handle_file.is_symlink() and state.load_handle() == HANDLE


def test_a_symlinked_pid_file_is_ignored_and_never_written_through(state: StateDir, victim: Path) -> None:
    state.pid_file.symlink_to(victim)
    assert state.read_pid() is None
    state.write_pid(123, 456)
    assert victim.read_text() == "precious\n" and state.read_pid() == (123, 456)


def test_a_symlinked_config_dir_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    (root / "config").symlink_to(tmp_path)
    with pytest.raises(UnsafeStateError, match=r"config directory .* is a symlink"):
        StateDir(root, "p").ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_state_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(UnsafeStateError, match="owned by uid 65534"):
        StateDir(root, "p").ensure()
    with pytest.raises(UnsafeStateError, match="owned by uid 65534"):
        StateDir(root, "p").load_handle()


@pytest.mark.parametrize("bad_mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_state_dir_writable_by_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    root = tmp_path / "state"
    root.mkdir()
    root.chmod(bad_mode)
    with pytest.raises(UnsafeStateError, match="writable by other users") as info:
        StateDir(root, "p").ensure()
    assert info.value.hint == f"chmod go-w {root}"
    assert mode(root) == bad_mode  # refused, not "fixed": it is not ours to chmod


# ---- item 6: explicit modes whatever the umask ------------------------------------------------


@pytest.mark.usefixtures("umask_000")
def test_every_state_file_has_an_explicit_mode_under_umask_000(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "deep" / "state", "p")
    state.ensure()
    state.write_config_files({"models.config": "x", "monitoring.config": "y"})
    state.save_handle(HANDLE)
    os.close(state.open_log())
    state.write_pid(1, 2)
    Ledger(state.ledger).append(entry())
    with state.operation_lock("promote"):
        held = {name: mode(state.root / name) for name in ("promote.lock", "promote.lock.owner")}
    assert mode(tmp_path / "deep") == 0o755
    assert mode(state.root) == 0o700
    assert mode(state.config_dir) == 0o755
    assert mode(state.models_config) == 0o644 and mode(state.config_dir / "monitoring.config") == 0o644
    for path in (state.handle_file, state.log_file, state.pid_file, state.ledger, state.marker_file):
        assert mode(path) == 0o600, path
    assert held == {"promote.lock": 0o600, "promote.lock.owner": 0o600}


def test_the_config_stays_readable_for_the_server_under_umask_077(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        state = StateDir(tmp_path / "state", "p")
        state.write_config_files({"models.config": "x"})
    finally:
        os.umask(old)
    # The compatible image's server runs as uid 10001: it must traverse config/ and read the files.
    assert mode(state.config_dir) == 0o755 and mode(state.models_config) == 0o644


@pytest.mark.usefixtures("umask_000")
def test_a_log_left_0666_by_an_older_run_is_tightened(state: StateDir) -> None:
    state.log_file.write_text("old")
    state.log_file.chmod(0o666)
    os.close(state.open_log())
    assert mode(state.log_file) == 0o600 and state.log_file.read_text() == ""


# ---- item 8: never chmod what we did not create; refuse foreign directories -------------------


def test_an_existing_empty_dir_is_adopted_without_changing_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    root.chmod(0o750)
    (root / "config").mkdir()
    (root / "config").chmod(0o700)
    state = StateDir(root, "p")
    state.ensure()
    state.write_config_files({"models.config": "x"})
    assert mode(root) == 0o750 and mode(root / "config") == 0o700  # was chmodded to 0755 before


def test_a_non_empty_foreign_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    (root / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafeStateError, match=r"non-empty directory deployer did not create \(it holds thesis.tex\)"):
        StateDir(root, "p").ensure()
    assert sorted(os.listdir(root)) == ["thesis.tex"]


def test_a_state_dir_of_an_older_deployer_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    (root / "config").mkdir(parents=True)
    (root / "server.json").write_text("{}")
    (root / "ledger.jsonl").write_text("")
    StateDir(root, "p").ensure()
    assert json.loads((root / ".deployer-state").read_text())["project"] == "p"


def test_another_projects_state_dir_is_refused(state: StateDir) -> None:
    with pytest.raises(UnsafeStateError, match="belongs to project 'p', not 'q'"):
        StateDir(state.root, "q").ensure()


# ---- item 15: server.json is never a dead end; a state dir that is a file is exit 2 ------------


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return manifests.write_manifest(tmp_path, "p", server={"runtime": "local", "grpc_port": 0, "rest_port": 0})


def _state_of(manifest: Path) -> StateDir:
    state = StateDir(manifest.parent / "state", "p")
    state.ensure()
    return state


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"runtime": 1}', "", "\0\0\0"])
def test_down_and_status_get_past_a_corrupt_handle(manifest: Path, content: str) -> None:
    state = _state_of(manifest)
    state.handle_file.write_text(content)
    status = run("status", "-f", str(manifest))
    # Not a dead end (exit 1 before): the record is ignored, saying why, and status answers as usual.
    assert status.exit_code == 4, status.stderr
    assert "warning: ignoring" in status.stderr and "no server is running" in status.stderr
    down = run("down", "-f", str(manifest))
    assert down.exit_code == 0, down.stderr
    assert not os.path.lexists(state.handle_file)
    assert "ignoring" not in run("status", "-f", str(manifest)).stderr


@pytest.mark.timeout(60)
def test_a_fifo_handle_neither_hangs_status_nor_down(manifest: Path) -> None:
    state = _state_of(manifest)
    os.mkfifo(state.handle_file)
    results: dict[str, Result] = {}

    def commands() -> None:
        results["status"] = run("status", "-f", str(manifest))
        results["down"] = run("down", "-f", str(manifest))

    thread = threading.Thread(target=commands, daemon=True)
    thread.start()
    thread.join(30)
    assert set(results) == {"status", "down"}, "a command hung on the FIFO"
    assert results["status"].exit_code == 4 and "not a regular file" in results["status"].stderr
    assert results["down"].exit_code == 0 and not os.path.lexists(state.handle_file)


@pytest.mark.parametrize("command", ["status", "down", "up", "history", "logs"])
def test_a_state_dir_that_is_a_file_is_a_usage_error(manifest: Path, command: str) -> None:
    (manifest.parent / "state").write_text("not a directory")
    result = run(command, "-f", str(manifest))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("deployer: error: state_dir ") and "is not a directory" in result.stderr
