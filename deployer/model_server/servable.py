"""One loaded model version, loaded and run the way TF Serving's SavedModelBundle does it.

Loading uses the TF1 session loader (``tf.compat.v1.saved_model.loader.load`` into a private Graph and
Session, tag "serve"), not ``tf.saved_model.load``: a SavedModel the real server cannot load must fail
here too.

A signature is run through a C++ callable (``Session._make_callable_from_options`` with a
``CallableOptions`` naming the feed and fetch tensors, i.e. ``Session::MakeCallable``), one per
signature and fetch set, made when the version loads (others, e.g. for an ``output_filter``, on first
use). A run is then one ``Session::RunCallable`` with the GIL released, as TF Serving's
``Session::Run``: no Python-side feed conversion or static-shape check (a ``[-1, 1]`` input fed shape
``[3]`` runs, as in TF Serving), and TF's own error status codes (a genuinely incompatible feed is the
kernel's INVALID_ARGUMENT, not INTERNAL). ``Session.make_callable(feed_list=...)`` is *not* that: in
TF 2.21 it is a closure over the Python ``Session.run`` (about 5x the cost per call here).

Classify/Regress/Predict validation follows classifier.cc, regressor.cc and predict_util.cc with
``--enable_signature_method_name_check=false`` (TF Serving's default), using their messages.
Warmup follows saved_model_warmup.cc: ``assets.extra/tf_serving_warmup_requests`` (TFRecord of
PredictionLog, at most 1000 records) is replayed before the version is reported AVAILABLE.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import prediction_log_pb2

from deployer.model_server.batching import BatchScheduler
from deployer.model_server.config import BatchingParameters
from deployer.model_server.status import ServingError, code_from_number, invalid
from deployer.model_server.tensors import array_dtype_enum, array_from_proto

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: int  # tensorflow DataType enum
    shape: tuple[int, ...] | None  # None = unknown rank; -1 = unknown dim


@dataclass(frozen=True)
class Signature:
    key: str
    method_name: str
    inputs: dict[str, TensorMeta]
    outputs: dict[str, TensorMeta]
    proto: Any


def dtype_name(enum: int) -> str:
    return str(types_pb2.DataType.Name(enum))


def shape_string(shape: Sequence[int]) -> str:
    """TensorShape::DebugString."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _tensor_meta(info: Any) -> TensorMeta:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorMeta(info.name, int(info.dtype), shape)


def signatures_of(signature_defs: Any) -> dict[str, Signature]:
    """A MetaGraphDef's signature_def map as Signatures (SavedModel and TFLite servables alike)."""
    return {
        key: Signature(
            key,
            sig.method_name,
            {alias: _tensor_meta(t) for alias, t in sig.inputs.items()},
            {alias: _tensor_meta(t) for alias, t in sig.outputs.items()},
            sig,
        )
        for key, sig in signature_defs.items()
    }


def _signature_debug_string(proto: Any) -> str:
    return str(text_format.MessageToString(proto))


def map_tf_error(exc: tf.errors.OpError) -> ServingError:
    """TF runtime errors carry the same canonical code numbers as gRPC."""
    return ServingError(code_from_number(int(exc.error_code)), str(exc.message))


def serialized_examples(input_proto: Any) -> list[bytes]:
    """util.cc InputToSerializedExampleTensor: Examples as bytes, context bytes prepended."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        # Concatenated serialized messages merge: the example's fields extend/override the context.
        context = input_proto.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return examples


def session_config(intra_op_threads: int = 0, inter_op_threads: int = 0) -> Any:
    """The ConfigProto of every servable's Session.

    ``intra_op_threads`` 0 keeps TF's choice (one per core), as TF Serving does. ``inter_op_threads`` 0
    is ours: -1, i.e. every op of a step runs in the calling thread (DirectSession
    ``run_in_caller_thread``), where TF Serving lets TF pick a pool of one thread per core. For the small
    graphs served here that removes two thread hand-offs per ``session.run`` (about half its cost on a
    2-core machine) and the tail latency they add under load; concurrent requests still run in parallel
    on their own gRPC threads. A positive value (``--tensorflow_inter_op_parallelism`` or
    ``--tensorflow_session_parallelism``) restores a pool of that size.
    """
    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads,
        inter_op_parallelism_threads=inter_op_threads or -1,
    )


CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def check_classification(
    classes: np.ndarray | None, scores: np.ndarray | None, n: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """PostProcessClassificationResult's checks on (classes [B,K] string, scores [B,K] float32)."""
    for label, tensor, want in (("classes", classes, np.object_), ("scores", scores, np.float32)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {shape_string(tensor.shape)}")
        if tensor.dtype != want:
            expected = "DT_STRING" if label == "classes" else "DT_FLOAT"
            got = dtype_name(tf.dtypes.as_dtype(tensor.dtype).as_datatype_enum)
            raise invalid(f"Expected {label} Tensor of {expected}. Got: {got}")
        if tensor.shape[0] != n:
            raise invalid(f"Expected {label} output batch size of {n}. Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    return classes, scores


def check_regression(out: np.ndarray, n: int) -> np.ndarray:
    """PostProcessRegressionResult's checks; the values as a flat float32 vector."""
    if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
        raise invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{shape_string(out.shape)}"
        )
    if out.shape[0] != n:
        raise invalid(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
    if out.dtype != np.float32:
        got = dtype_name(tf.dtypes.as_dtype(out.dtype).as_datatype_enum)
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {got}")
    return np.asarray(out).reshape(-1)


class _ClassifyPlan:
    __slots__ = ("fetches", "has_classes", "has_scores", "input_name")

    def __init__(self, input_name: str, fetches: list[str], has_classes: bool, has_scores: bool) -> None:
        self.input_name = input_name
        self.fetches = fetches
        self.has_classes = has_classes
        self.has_scores = has_scores


@dataclass(frozen=True)
class PredictPlan:
    """A validated Predict: feed aliases in feed order (sorted) and the aliases to fetch."""

    signature: Signature
    aliases: tuple[str, ...]
    out_aliases: tuple[str, ...]


Runner = Callable[[Sequence[np.ndarray]], list[Any]]
RunKey = tuple[tuple[str, ...], tuple[str, ...]]

# Callables made on first use (fetch sets from output_filter) are cached up to this many per version;
# beyond it each such request makes and releases its own, so no client can grow memory without bound.
MAX_CACHED_CALLABLES = 64
# close() waits this long for runs in flight before closing the Session under them.
DRAIN_SECONDS = 30.0


class Servable:
    """A SavedModel version in its own tf.compat.v1 Graph and Session."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        *,
        batching: BatchingParameters | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._batching = batching
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(
            graph=self._graph, config=session_config(intra_op_threads, inter_op_threads)
        )
        self._lock = threading.Lock()  # runs in flight and the closed flag
        self._make_lock = threading.Lock()  # making callables (can take a while: not under self._lock)
        self._runners: dict[RunKey, Runner] = {}
        self._schedulers: list[BatchScheduler] = []
        self._classify_plans: dict[str, _ClassifyPlan] = {}
        # Runs in flight, so that close() (an unload) lets them finish instead of cancelling them:
        # TF Serving's unload likewise waits for every ServableHandle to be released.
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False
        try:
            with self._graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
        except tf.errors.OpError as exc:
            self._session.close()
            raise map_tf_error(exc) from exc
        except (OSError, RuntimeError, ValueError) as exc:
            self._session.close()
            raise ServingError(grpc.StatusCode.INTERNAL, f"Failed to load SavedModel from {path}: {exc}") from exc
        self.signature_defs = meta_graph.signature_def
        self.signatures: dict[str, Signature] = signatures_of(self.signature_defs)
        self._prepare_runners()

    # -- running -------------------------------------------------------------------------------

    def _prepare_runners(self) -> None:
        """Make each signature's callables at load: its Predict fetch set and, if it has the shape of
        one, its Classify or Regress fetch set. A signature whose tensors are not in the graph is left
        to fail on use with TF's error, as TF Serving loads such a model and fails the request."""
        keys: list[RunKey] = []
        for key, sig in self.signatures.items():
            keys.append(
                (
                    tuple(sig.inputs[a].name for a in sorted(sig.inputs)),
                    tuple(sig.outputs[a].name for a in sorted(sig.outputs)),
                )
            )
            proto = sig.proto
            if len(proto.inputs) == 1 and "inputs" in proto.inputs:
                with contextlib.suppress(ServingError):
                    plan = self._classify_plan(key)
                    keys.append(((plan.input_name,), tuple(plan.fetches)))
                if len(proto.outputs) == 1 and "outputs" in proto.outputs:
                    keys.append(((proto.inputs["inputs"].name,), (proto.outputs["outputs"].name,)))
        for feeds, fetches in dict.fromkeys(keys):
            try:
                self._runner(feeds, fetches)
            except ServingError as exc:
                # e.g. TF2's "__saved_model_init_op" signature, whose output is an operation, not a tensor.
                log.debug("%s:%d: no callable for %s -> %s: %s", self.name, self.version, feeds, fetches, exc)

    def _make_callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Any:
        options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
        try:
            return self._session._make_callable_from_options(options)
        except tf.errors.OpError as exc:
            raise map_tf_error(exc) from exc
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise invalid(str(exc)) from exc

    def _runner(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Runner:
        key = (feeds, fetches)
        runner = self._runners.get(key)
        if runner is not None:
            return runner
        with self._make_lock:
            runner = self._runners.get(key)
            if runner is not None:
                return runner
            if len(self._runners) >= MAX_CACHED_CALLABLES:
                return self._one_off_runner(feeds, fetches)
            call = self._make_callable(feeds, fetches)

            def direct(values: Sequence[np.ndarray], call: Any = call) -> list[Any]:
                return list(call(*values))

            runner = direct
            if self._batching is not None:
                scheduler = BatchScheduler(self._batching, direct, f"{self.name}:{self.version}")
                self._schedulers.append(scheduler)
                runner = scheduler.submit
            self._runners[key] = runner
        return runner

    def _one_off_runner(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Runner:
        def once(values: Sequence[np.ndarray]) -> list[Any]:
            call = self._make_callable(feeds, fetches)
            try:
                return list(call(*values))
            finally:
                del call  # releases the C++ callable (Session::ReleaseCallable)

        return once

    def run(self, feeds: tuple[str, ...], fetches: tuple[str, ...], values: Sequence[np.ndarray]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE, f"Servable {self.name} version {self.version} has been unloaded"
                )
            self._in_flight += 1
        try:
            return self._runner(feeds, fetches)(values)
        except tf.errors.OpError as exc:
            raise map_tf_error(exc) from exc
        finally:
            with self._lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._idle.notify_all()

    # -- signatures ----------------------------------------------------------------------------

    def signature(self, name: str, *, predict: bool = False) -> Signature:
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            if predict:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
            raise invalid(f"No signature was found with the name: {key}")
        return sig

    def _classify_plan(self, name: str) -> _ClassifyPlan:
        plan = self._classify_plans.get(name)
        if plan is not None:
            return plan
        sig = self.signature(name)
        proto = sig.proto
        if len(proto.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if len(proto.outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(proto.outputs)}")
        if "inputs" not in proto.inputs:
            raise invalid(f"No classification inputs found in SignatureDef: {_signature_debug_string(proto)}")
        has_classes = "classes" in proto.outputs
        has_scores = "scores" in proto.outputs
        if not (has_classes or has_scores):
            raise invalid(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {_signature_debug_string(proto)}"
            )
        fetches = []
        if has_classes:
            fetches.append(proto.outputs["classes"].name)
        if has_scores:
            fetches.append(proto.outputs["scores"].name)
        plan = _ClassifyPlan(proto.inputs["inputs"].name, fetches, has_classes, has_scores)
        self._classify_plans[name] = plan
        return plan

    def classify(self, signature_name: str, input_proto: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Returns (classes [B,K] bytes | None, scores [B,K] float32 | None), validated as classifier.cc."""
        plan = self._classify_plan(signature_name)
        examples = serialized_examples(input_proto)
        batch = np.array(examples, dtype=object)
        outputs = self.run((plan.input_name,), tuple(plan.fetches), (batch,))
        classes = outputs[0] if plan.has_classes else None
        scores = outputs[-1] if plan.has_scores else None
        return check_classification(classes, scores, len(examples))

    def _regress_plan(self, name: str) -> tuple[str, str]:
        """PreProcessRegression: (input tensor name, output tensor name)."""
        proto = self.signature(name).proto
        if len(proto.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if len(proto.outputs) != 1:
            raise invalid("Expected one output Tensor.")
        if "inputs" not in proto.inputs:
            raise invalid(f"No regression inputs found in SignatureDef: {_signature_debug_string(proto)}")
        if "outputs" not in proto.outputs:
            raise invalid(f"No regression outputs found in SignatureDef: {_signature_debug_string(proto)}")
        return proto.inputs["inputs"].name, proto.outputs["outputs"].name

    def regress(self, signature_name: str, input_proto: Any) -> np.ndarray:
        input_name, output_name = self._regress_plan(signature_name)
        examples = serialized_examples(input_proto)
        (out,) = self.run((input_name,), (output_name,), (np.array(examples, dtype=object),))
        return check_regression(out, len(examples))

    def predict_plan(
        self, signature_name: str, dtypes: Mapping[str, int], output_filter: Sequence[str] = ()
    ) -> PredictPlan:
        """Validate a Predict before any input tensor is materialised: aliases, their DataType enums
        (``dtypes``) and the output filter against the signature, with predict_util.cc's messages."""
        sig = self.signature(signature_name, predict=True)
        for alias in dtypes:
            if alias not in sig.inputs:
                expected = ",".join(sorted(sig.inputs))
                raise invalid(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{expected}}}."
                )
        missing = sorted(set(sig.inputs) - set(dtypes))
        if missing:
            raise invalid(
                f"Request inputs do not match required inputs for model `{self.name}`. "
                f"Send extra: {{}}. Missing but required: {{{','.join(missing)}}}."
            )
        aliases = tuple(sorted(dtypes))
        for index, alias in enumerate(aliases):
            want, got = sig.inputs[alias].dtype, dtypes[alias]
            if got != want:
                # DataTypeString: DT_FLOAT -> "float", as the C++ session reports it.
                raise invalid(
                    f"Expects arg[{index}] to be {dtype_name(want)[3:].lower()} but "
                    f"{dtype_name(got)[3:].lower()} is provided"
                )
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                expected = ",".join(sorted(sig.outputs))
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{expected}}}."
                )
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        # Sorted, so that every order of the same filter shares one callable.
        return PredictPlan(sig, aliases, tuple(sorted(output_filter or sig.outputs)))

    def run_predict(self, plan: PredictPlan, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = plan.signature
        outputs = self.run(
            tuple(sig.inputs[a].name for a in plan.aliases),
            tuple(sig.outputs[a].name for a in plan.out_aliases),
            [inputs[a] for a in plan.aliases],
        )
        return {alias: np.asarray(value) for alias, value in zip(plan.out_aliases, outputs, strict=True)}

    def predict(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        dtypes = {alias: array_dtype_enum(value) for alias, value in inputs.items()}
        return self.run_predict(self.predict_plan(signature_name, dtypes, output_filter), inputs)

    # -- MultiInference ------------------------------------------------------------------------

    def multi_inference(self, request: Any) -> list[tuple[str, Any]]:
        """multi_inference.cc TensorFlowMultiInferenceRunner::Infer, with its validation and messages.

        Every task names the same model and a distinct signature; each signature passes the
        Classify/Regress preprocessing for its ``method_name``. One run feeds the serialized examples
        to every task's input tensor and fetches the union of their outputs (sorted, as std::set).
        Returns ("classification_result" | "regression_result", (model_spec, result data)) per task.
        """
        model_name = ""
        seen: set[str] = set()
        input_names: set[str] = set()
        output_names: set[str] = set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task.model_spec.name
            elif model_name != task.model_spec.name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise invalid(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            proto = self.signature_defs.get(key)
            if proto is None:
                raise invalid(f"Requested signature not found in model graph: {key}")
            if task.method_name == CLASSIFY_METHOD:
                plan = self._classify_plan(key)
                input_names.add(plan.input_name)
                output_names.update(plan.fetches)
            elif task.method_name == REGRESS_METHOD:
                input_name, output_name = self._regress_plan(key)
                input_names.add(input_name)
                output_names.add(output_name)
            else:
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
                )
        examples = serialized_examples(request.input)
        batch = np.array(examples, dtype=object)
        feeds = tuple(sorted(input_names))
        fetches = tuple(sorted(output_names))
        values = dict(zip(fetches, self.run(feeds, fetches, tuple(batch for _ in feeds)), strict=True))
        results: list[tuple[str, Any]] = []
        for task in request.tasks:
            key = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if task.method_name == CLASSIFY_METHOD:
                plan = self._classify_plan(key)
                classes = values[plan.fetches[0]] if plan.has_classes else None
                scores = values[plan.fetches[-1]] if plan.has_scores else None
                results.append(("classification_result", check_classification(classes, scores, len(examples))))
            else:
                _input, output_name = self._regress_plan(key)
                results.append(("regression_result", check_regression(values[output_name], len(examples))))
        return results

    # -- warmup --------------------------------------------------------------------------------

    def warmup(self) -> int:
        """Replay warmup records; any failure fails the load (as in saved_model_warmup.cc)."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        records = list(tf.compat.v1.io.tf_record_iterator(path))
        if len(records) > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        for raw in records:
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(raw)
            kind = entry.WhichOneof("log_type")
            if kind == "classify_log":
                req = entry.classify_log.request
                self.classify(req.model_spec.signature_name, req.input)
            elif kind == "regress_log":
                req = entry.regress_log.request
                self.regress(req.model_spec.signature_name, req.input)
            elif kind == "predict_log":
                req = entry.predict_log.request
                dtypes = {alias: int(t.dtype) for alias, t in req.inputs.items()}
                plan = self.predict_plan(req.model_spec.signature_name, dtypes, list(req.output_filter))
                arrays = {alias: array_from_proto(alias, t) for alias, t in req.inputs.items()}
                self.run_predict(plan, arrays)
            else:
                raise invalid(f"Unsupported log_type for warmup: {kind}")
        return len(records)

    def close(self) -> None:
        """Unload: wait (bounded) for runs in flight, then close the batch queues and the Session."""
        deadline = time.monotonic() + DRAIN_SECONDS
        with self._lock:
            self._closed = True
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            if self._in_flight:
                log.warning("%s:%d: closing with %d runs still in flight", self.name, self.version, self._in_flight)
        with self._make_lock:
            self._runners.clear()  # releases the callables while the Session is still open
        for scheduler in self._schedulers:
            scheduler.close()
        self._session.close()
