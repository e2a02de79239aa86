"""A SavedModel loaded in this process the way TF Serving loads it, and its signatures run by tensor name.

``tf.compat.v1.saved_model.loader.load`` into a private Graph and Session with tag "serve" (what the
C++ server and deployer-model-server do), so a model ``deployer import`` or ``predict --local``
accepts is one the server can load. TensorFlow is imported inside; importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from deployer.apis.base import SignatureCall
from deployer.errors import StoreError
from deployer.store import SAVED_MODEL_TAG, SignatureInfo


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LocalModel:
    """One SavedModel in its own Graph and Session. Raises StoreError when the loader refuses it."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        # The v1 loader logs a deprecation warning per call; the user asked for a load, not for that.
        tf.get_logger().setLevel("ERROR")
        self.path = path
        self._tf = tf
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                tf.compat.v1.saved_model.loader.load(self._session, [SAVED_MODEL_TAG], str(path))
        except Exception as exc:  # the loader raises OpError, RuntimeError, ValueError, IOError...
            self._session.close()
            raise StoreError(f"{path}: TF Serving's session loader cannot load it: {_first_line(exc)}") from None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def caller(self, sig: SignatureInfo) -> SignatureCall:
        """Feeds by input alias → every output by alias, as numpy (strings as object arrays of bytes)."""
        tensors = {t.name: t.tensor for t in sig.inputs}
        fetches = {t.name: t.tensor for t in sig.outputs}

        def call(feeds: Mapping[str, Any]) -> dict[str, Any]:
            unknown = sorted(set(feeds) - set(tensors))
            if unknown:
                raise StoreError(f"signature {sig.name!r} has no input(s) {', '.join(unknown)}")
            try:
                out: dict[str, Any] = self._session.run(
                    fetches, feed_dict={tensors[alias]: value for alias, value in feeds.items()}
                )
            except (self._tf.errors.OpError, ValueError, TypeError) as exc:
                raise StoreError(f"running signature {sig.name!r} failed: {_first_line(exc)}") from None
            return out

        return call
