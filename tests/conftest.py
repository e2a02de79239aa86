"""Test tiers: unit (fakes allowed), grpc (a real server over a real channel), docker (the real daemon).

Under CI=true a tier that cannot run fails instead of skipping.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip locally; fail under CI=true, where every tier must run."""
    if IN_CI:
        pytest.fail(f"CI=true and this tier cannot run: {reason}", pytrace=False)
    pytest.skip(reason)
