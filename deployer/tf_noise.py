"""TensorFlow's start-up chatter: recognised, kept out of deployer's own output, and out of shown server logs.

Importing TensorFlow writes ~7 lines from C++ straight to file descriptor 2 (oneDNN notice, "Could not
find cuda drivers", CPU-instruction advice, ``E0000 … failed call to cuInit``) before absl logging is
initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them all, and level 3 would hide real errors
too. They say nothing about the user's model on a CPU machine. :func:`import_tensorflow` redirects
fd 2 while TensorFlow starts and replays every line that is not such chatter; :func:`strip` removes
the same lines from a model server's log (``deployer logs --raw`` shows them).

This module never imports TensorFlow at module level.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

# The C++ sources whose start-up lines are pure environment chatter on a CPU-only machine.
_NOISY_SOURCES = (
    "port.cc",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "cuda_platform.cc",
    "cuda_executor.cc",
    "cuda_diagnostics.cc",
    "cuda_dnn.cc",
    "cuda_fft.cc",
    "cuda_blas.cc",
    "computation_placer.cc",
    "gpu_device.cc",
)
_NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ (?:\S*/)?(?:" + "|".join(re.escape(s) for s in _NOISY_SOURCES) + r"):\d+\] .*"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\."
    r")\s*$"
)


def is_noise(line: str) -> bool:
    return _NOISE.match(line) is not None


def strip(text: str) -> str:
    """``text`` without TensorFlow's start-up chatter (line endings kept)."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes alike) and replay it without the chatter."""
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        # No real stderr (e.g. a test runner's capture): nothing at the fd level to filter.
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), stderr_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            capture.seek(0)
            kept = strip(capture.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` with its start-up chatter filtered; also initialises the (absent) GPU
    platform, which is where ``failed call to cuInit`` comes from. Cheap after the first call."""
    already: ModuleType | None = sys.modules.get("tensorflow")
    if already is not None and getattr(already, "config", None) is not None:
        return already
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    module: ModuleType = sys.modules["tensorflow"]
    return module
