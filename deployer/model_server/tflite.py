"""``--prefer_tflite_model``: serve ``<version>/model.tflite`` with TF's own TFLite interpreter.

Mirrors TF Serving's ``saved_model_bundle_factory.cc`` + ``tflite_session.cc``: when the flag is set and the
version directory holds ``model.tflite``, that model is served instead of ``saved_model.pb``. Its
signatures come from the model's ``signature_defs_metadata`` (``tflite::GetSignatureDefMap``); a model
without them (what the converter writes) gets a generated ``serving_default`` Predict signature whose
inputs/outputs are keyed by the tensor names without their ``:N`` suffix, with the interpreter's dtype
and static dims. A run feeds inputs by tensor name, resizes an input whose shape differs and
re-allocates (``ResizeInputTensor``/``AllocateTensors``), invokes, and fetches outputs by name.
Interpreter failures are INTERNAL with TF Serving's messages.

One interpreter per model, used under a lock (TF Serving keeps a pool, ``--num_tflite_pools``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from deployer.model_server.servable import DEFAULT_SIGNATURE, Servable, signatures_of
from deployer.model_server.status import ServingError

log = logging.getLogger(__name__)

TFLITE_MODEL_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"
PREDICT_METHOD = "tensorflow/serving/predict"


def _internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def _legacy_name(tf_name: str) -> str:
    """TfToTfLiteLegacyTensorName: early converters stripped the ':0' suffix."""
    return tf_name.split(":", 1)[0]


def _tensor_info(detail: dict[str, Any]) -> Any:
    info = meta_graph_pb2.TensorInfo(name=detail["name"], dtype=tf.as_dtype(detail["dtype"]).as_datatype_enum)
    for size in detail["shape"]:
        info.tensor_shape.dim.add(size=int(size))
    return info


def _metadata_signature_defs(flatbuffer: bytes) -> dict[str, Any]:
    """The SignatureDefs a model stores under ``signature_defs_metadata`` (a flexbuffer map), if any."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        return {}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name != SIGNATURE_DEFS_METADATA:
            continue
        from flatbuffers import flexbuffers

        data = bytes(model.buffers[entry.buffer].data)
        # signature_def_util.cc writes a map of signature key -> serialized SignatureDef (as a string).
        root = flexbuffers.GetRoot(data).AsMap
        signatures = {}
        for key, value in zip(root.Keys, root.Values, strict=True):
            sig = meta_graph_pb2.SignatureDef()
            sig.ParseFromString(bytes(value.AsStringBytes if value.IsString else value.AsBlob))
            signatures[key.AsKey] = sig
        return signatures
    return {}


class TfLiteServable(Servable):
    """A ``model.tflite`` version behind the Servable interface (Predict; Classify/Regress validate as usual)."""

    def __init__(self, name: str, version: int, path: str) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._batching = None
        self._schedulers = []
        self._classify_plans = {}
        self._runners = {}
        self._lock = threading.Lock()
        model_file = f"{path}/{TFLITE_MODEL_FILE}"
        try:
            with open(model_file, "rb") as handle:
                flatbuffer = handle.read()
        except OSError as exc:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"{model_file}; {exc.strerror}") from exc
        try:
            self._interpreter = tf.lite.Interpreter(model_content=flatbuffer)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Cannot build FlatBufferModel from buffer.") from exc
        self._inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        self._outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        signature_defs = _metadata_signature_defs(flatbuffer)
        if signature_defs:
            for sig in signature_defs.values():
                for kind, known in (("input", self._inputs), ("output", self._outputs)):
                    for alias, info in (sig.inputs if kind == "input" else sig.outputs).items():
                        info.name = self._fix_name(known, info.name, f"Signature {kind} {alias} references")
        else:
            log.warning("No signature def found in TFLite model. Generating one.")
            sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for detail in self._inputs.values():
                sig.inputs[_legacy_name(detail["name"])].CopyFrom(_tensor_info(detail))
            for detail in self._outputs.values():
                sig.outputs[_legacy_name(detail["name"])].CopyFrom(_tensor_info(detail))
            signature_defs = {DEFAULT_SIGNATURE: sig}
        holder = meta_graph_pb2.MetaGraphDef()
        for key, sig in signature_defs.items():
            holder.signature_def[key].CopyFrom(sig)
        self.signature_defs = holder.signature_def
        self.signatures = signatures_of(self.signature_defs)

    @staticmethod
    def _fix_name(known: dict[str, Any], name: str, context: str) -> str:
        """FixTfLiteTensorName: the name as given, or its legacy form without ``:N``."""
        if name in known:
            return name
        if _legacy_name(name) in known:
            return _legacy_name(name)
        raise _internal(f"{context} an unknown tensor: Unknown tensor '{name}'.")

    def run(self, feeds: tuple[str, ...], fetches: tuple[str, ...], values: Sequence[np.ndarray]) -> list[Any]:
        interpreter = self._interpreter
        with self._lock:
            for feed, value in zip(feeds, values, strict=True):
                name = self._fix_name(self._inputs, feed, "Missing input TFLite tensor:")
                detail = self._inputs[name]
                index = detail["index"]
                want = np.asarray(value)
                if tuple(interpreter.get_input_details()[self._input_position(name)]["shape"]) != want.shape:
                    try:
                        interpreter.resize_tensor_input(index, list(want.shape))
                        interpreter.allocate_tensors()
                    except (ValueError, RuntimeError) as exc:
                        raise _internal(f"Failed to resize input tensor: {name}") from exc
                try:
                    interpreter.set_tensor(index, want)
                except ValueError as exc:
                    raise _internal(f"Failed to set input tensor {name}: {exc}") from exc
            try:
                interpreter.invoke()
            except RuntimeError as exc:
                raise _internal("Failed to invoke TfLite interpreter") from exc
            results = []
            for fetch in fetches:
                name = self._fix_name(self._outputs, fetch, f"Missing output TFLite tensor: {fetch}:")
                results.append(np.array(interpreter.get_tensor(self._outputs[name]["index"])))
            return results

    def _input_position(self, name: str) -> int:
        return list(self._inputs).index(name)

    def close(self) -> None:
        self._interpreter = None
