"""TF Serving's protobuf modules without importing TensorFlow.

``tensorflow_serving.apis.*_pb2`` import ``tensorflow.core.*_pb2``. Any such import runs
``tensorflow/__init__.py`` (``from a.b import c`` ends in ``__import__('a.b.c')``, which imports ``a``),
loading all of TensorFlow: seconds and ~600 MB. The generated modules need only protobuf, so we
load the ``tensorflow.*_pb2`` files they reach ourselves, in dependency order, under their real
names, and attach each to its (real, light) parent package. The top-level ``tensorflow`` package is
never registered, so a later ``import tensorflow`` runs normally and reuses these very modules:
one descriptor pool, one class per message.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

_TF_IMPORT = re.compile(r"^from (tensorflow(?:\.\w+)+) import (\w+)", re.MULTILINE)
_done = False


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{top} is not installed; its generated protobuf modules are needed")
    return Path(next(iter(spec.submodule_search_locations)))


def _attach(name: str, module: types.ModuleType) -> None:
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def _exec_file(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _attach(name, module)
    return module


def _ensure_subpackage(name: str, tf_dir: Path) -> None:
    """Register tensorflow.<a>.<b> packages (never the top-level one) from their real __init__.py."""
    parts = name.split(".")
    for depth in range(2, len(parts) + 1):
        pkg = ".".join(parts[:depth])
        if pkg in sys.modules:
            continue
        directory = tf_dir.joinpath(*parts[1:depth])
        init = directory / "__init__.py"
        if init.is_file():
            _exec_file(pkg, init, directory)
        else:
            module = types.ModuleType(pkg)
            module.__path__ = [str(directory)]
            sys.modules[pkg] = module
            _attach(pkg, module)


def _load_tf_proto(name: str, tf_dir: Path) -> None:
    if name in sys.modules:
        return
    path = tf_dir.joinpath(*name.split(".")[1:]).with_suffix(".py")
    for package, module in _TF_IMPORT.findall(path.read_text(encoding="utf-8")):
        _load_tf_proto(f"{package}.{module}", tf_dir)
    _ensure_subpackage(name.rpartition(".")[0], tf_dir)
    _exec_file(name, path)


def ensure_light_protos() -> None:
    """Make ``tensorflow_serving.apis``/``.config`` importable without importing TensorFlow (idempotent)."""
    global _done
    if _done:
        return
    if "tensorflow" not in sys.modules:
        tf_dir = _package_dir("tensorflow")
        serving_dir = _package_dir("tensorflow_serving")
        for source in sorted(serving_dir.glob("*/*_pb2*.py")):
            for package, module in _TF_IMPORT.findall(source.read_text(encoding="utf-8")):
                _load_tf_proto(f"{package}.{module}", tf_dir)
    _done = True


def tf_proto(name: str) -> types.ModuleType:
    """A ``tensorflow.*_pb2`` module (e.g. ``tensorflow.core.protobuf.saved_model_pb2``) without TensorFlow."""
    ensure_light_protos()
    if name not in sys.modules:
        _load_tf_proto(name, _package_dir("tensorflow"))
    return sys.modules[name]
