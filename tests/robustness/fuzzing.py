"""Shared knobs for the fuzzing tests."""

from __future__ import annotations

import os


def examples(count: int) -> int:
    """``count`` hypothesis examples, times $DEPLOYER_FUZZ_SCALE (e.g. 10 for a deep local run)."""
    return count * max(1, int(os.environ.get("DEPLOYER_FUZZ_SCALE", "1")))
