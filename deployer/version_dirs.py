"""Which children of a base path are model versions: the one rule shared by deployer's store and its server.

TF Serving (``sources/storage_path/file_system_storage_path_source.cc``) lists the base path's children
and keeps those whose *name* parses with ``strings::safe_strto64`` (today ``absl::SimpleAtoi``): ASCII
whitespace around an optional sign and ASCII decimal digits, within int64. Everything else — ``latest``,
``.tmp-…``, ``²``, ``٣``, ``0x5``, a number beyond int64 — is ignored, never an error. A version is served
from the child *as found*: ``00000123`` is version 123 loaded from ``<base>/00000123``. When two children
name the same version (``7`` and ``007``), the latest and specific policies take the one that sorts last
(byte order) and log a warning; the ``all`` policy emits both, and the manager keeps the first.

TF Serving does not check that a child is a directory; neither does this rule (a file named ``5`` is
version 5, whose load then fails, as it does upstream). No TensorFlow import here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_ASCII_SPACE = " \t\n\v\f\r"
_DIGITS = frozenset("0123456789")


def parse_version(name: str) -> int | None:
    """The version a child named ``name`` stands for, or None (``absl::SimpleAtoi`` into int64)."""
    text = name.strip(_ASCII_SPACE)
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not _DIGITS.issuperset(digits):
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def list_children(base_path: str | os.PathLike[str]) -> list[str]:
    """The base path's children, sorted bytewise as TF Serving's std::set does. Raises OSError."""
    return sorted(os.listdir(base_path), key=os.fsencode)


def version_children(children: Iterable[str]) -> list[tuple[int, str]]:
    """(version, child) for every child that is a version, in the children's (sorted) order."""
    found = []
    for child in children:
        version = parse_version(child)
        if version is not None:
            found.append((version, child))
    return found


def index_by_version(children: Iterable[str], *, warn: bool = True) -> dict[int, str]:
    """IndexChildrenByVersion: version -> child; of duplicates the last child (bytewise) wins."""
    index: dict[int, str] = {}
    for version, child in version_children(children):
        if warn and version in index:
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                version,
                child,
                index[version],
            )
        index[version] = child
    return index


def scan(base_path: str | os.PathLike[str]) -> dict[int, str]:
    """version -> child name under ``base_path`` (latest/specific policy view). Raises OSError."""
    return index_by_version(list_children(base_path), warn=False)
