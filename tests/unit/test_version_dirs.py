"""The one version-directory rule (deployer.version_dirs), checked against TF Serving's safe_strto64/SimpleAtoi."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer import version_dirs


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("1", 1),
        ("0042", 42),
        ("00000123", 123),
        ("0", 0),
        ("-3", -3),
        ("+5", 5),
        (" 7\t", 7),
        (str(2**63 - 1), 2**63 - 1),
        (str(-(2**63)), -(2**63)),
    ],
)
def test_int64_names_are_versions(name: str, version: int) -> None:
    assert version_dirs.parse_version(name) == version


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "-",
        "+",
        "²",
        "٣",
        "1²",
        "0x5",
        "1_000",
        "1.0",
        "1e3",
        "latest",
        ".tmp-3",
        "--1",
        "+-1",
        "1 2",
        str(2**63),
        str(-(2**63) - 1),
        "9" * 400,
    ],
)
def test_other_names_are_ignored(name: str) -> None:
    assert version_dirs.parse_version(name) is None


def test_scan_indexes_duplicates_like_index_children_by_version(tmp_path: Path) -> None:
    for name in ["007", "7", "²", "99999999999999999999", "12"]:
        (tmp_path / name).mkdir()
    assert version_dirs.scan(tmp_path) == {7: "7", 12: "12"}
    with pytest.raises(FileNotFoundError):
        version_dirs.scan(tmp_path / "missing")
