from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployer.errors import DeployerError
from deployer.runtime.base import ServerHandle
from deployer.state import StateDir, write_atomic


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "config" / "models.config"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["models.config"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "models.config"
    write_atomic(target, "old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["models.config"]


def test_handle_round_trip_and_corruption(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.load_handle() is None
    handle = ServerHandle("local", "123", "deployer-model-server", "127.0.0.1:1", None, "abc")
    state.ensure()
    state.save_handle(handle)
    assert state.load_handle() == handle
    state.handle_file.write_text("{not json")
    with pytest.raises(DeployerError, match="corrupt server state"):
        state.load_handle()
    state.clear_handle()
    assert state.load_handle() is None


def test_written_files_are_world_readable_for_a_server_running_as_another_user(tmp_path: Path) -> None:
    target = tmp_path / "models.config"
    write_atomic(target, "x")
    assert target.stat().st_mode & 0o777 == 0o644
