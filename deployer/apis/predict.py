"""The Predict API: named tensors in, named tensors out.

The manifest declares the signature's ``inputs`` (and optionally ``outputs``) as ``{name, dtype, shape}``
with ``-1`` for the batch dimension. A smoke case gives ONE instance per input (no batch dimension),
or ``inputs_file``: a JSON body in TF Serving's REST request format (``instances`` row format or
``inputs`` columnar format), whose every instance must meet the case's expectations. Requests are
TensorProtos built with numpy and the light protos (deployer.apis.tensors), never TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployer.apis import common, tensors
from deployer.apis.base import CaseDiff, SignatureCall, Verdict
from deployer.errors import StoreError
from deployer.protos import ensure_light_protos

if TYPE_CHECKING:
    from deployer.manifest import ApiName, ModelSpec, OutputExpectation, SmokeCase, TensorSpec
    from deployer.store import SignatureInfo, TensorInfo

FIELDS = ("inputs", "outputs", "inputs_file", "expect")
DEFAULT_ATOL = 1e-6
# A single-output model answered over REST loses its output's name (TF Serving drops it).
UNNAMED = "outputs"
MAX_INPUT_FILE_BYTES = 64 * 1024 * 1024

Answer = dict[str, np.ndarray]


@dataclass(frozen=True)
class PredictBatch:
    """Named input arrays (batch dimension first) and, for an inputs_file case, the file's own body."""

    arrays: dict[str, np.ndarray]
    rest_doc: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0


def _specs(model: ModelSpec) -> dict[str, TensorSpec]:
    return {t.name: t for t in model.inputs or []}


def _instance(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    """One instance (no batch dimension) of ``spec``. Raises ValueError."""
    array = tensors.as_array(value, spec.dtype, where)
    wanted = spec.shape[1:]
    if not tensors.shape_matches(array.shape, wanted):
        raise ValueError(f"{where}: one instance must have shape {wanted}, got {list(array.shape)}")
    return array


def _batched(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    array = tensors.as_array(value, spec.dtype, where)
    if array.ndim == 0 or not tensors.shape_matches(array.shape[1:], spec.shape[1:]):
        raise ValueError(f"{where}: expected shape {spec.shape}, got {list(array.shape)}")
    return array


def _named(model: ModelSpec, names: set[str], where: str) -> None:
    declared = [t.name for t in model.inputs or []]
    missing = [n for n in declared if n not in names]
    extra = sorted(names - set(declared))
    if missing:
        raise ValueError(f"{where}: missing input(s) {', '.join(missing)}")
    if extra:
        raise ValueError(f"{where}: unknown input(s) {', '.join(extra)} (declared: {', '.join(declared)})")


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and "b64" not in value


def _describe(exp: OutputExpectation) -> str:
    if exp.argmax is not None:
        return f"argmax {exp.argmax}"
    if exp.shape is not None:
        return f"shape {exp.shape}"
    return f"values (atol {exp.atol if exp.atol is not None else DEFAULT_ATOL:g})"


def _numeric(array: np.ndarray) -> bool:
    return array.dtype != object and array.dtype.kind in "fiub"


def _check_instance(name: str, exp: OutputExpectation, inst: np.ndarray) -> str | None:
    """Why one instance of output ``name`` misses ``exp`` (None when it meets it)."""
    if exp.shape is not None:
        if not tensors.shape_matches(inst.shape, exp.shape):
            return f"output {name!r}: expected shape {exp.shape}, got {list(inst.shape)}"
        return None
    if exp.argmax is not None:
        if not _numeric(inst) or inst.size == 0:
            return f"output {name!r}: argmax needs a non-empty numeric output"
        got = int(np.argmax(inst.reshape(-1)))
        if got != exp.argmax:
            return f"output {name!r}: expected argmax {exp.argmax}, got {got}"
        return None
    expected = np.asarray(exp.values, dtype=object)
    if expected.shape != inst.shape:
        return f"output {name!r}: expected values of shape {list(expected.shape)}, got {list(inst.shape)}"
    if inst.dtype == object:
        want = [v.encode("utf-8") if isinstance(v, str) else v for v in expected.reshape(-1)]
        if list(inst.reshape(-1)) != want:
            return f"output {name!r}: expected {exp.values!r}, got {tensors.to_json_value(inst)!r}"
        return None
    try:
        target = expected.astype(np.float64)
    except (TypeError, ValueError):
        return f"output {name!r}: expected values are not numbers, the output is {inst.dtype}"
    atol = exp.atol if exp.atol is not None else DEFAULT_ATOL
    worst = float(np.max(np.abs(inst.astype(np.float64) - target))) if inst.size else 0.0
    if not np.isfinite(worst) or worst > atol:
        return f"output {name!r}: values differ by up to {worst:.6g}, above atol {atol:g}"
    return None


def _argmax_rows(array: np.ndarray) -> list[int] | None:
    if not _numeric(array) or array.ndim < 2 or array[0].size == 0:
        return None
    return [int(np.argmax(row.reshape(-1))) for row in array]


def _summary(answer: Answer) -> str:
    parts = []
    for name in sorted(answer):
        array = answer[name]
        rows = _argmax_rows(array)
        if rows is not None:
            parts.append(f"{name} argmax {rows[0] if len(rows) == 1 else rows}")
        else:
            text = json.dumps(tensors.to_json_value(array))
            parts.append(f"{name} {text[:40] + '…' if len(text) > 40 else text}")
    return "; ".join(parts)


def _compatible(declared: list[int], found: list[int] | None) -> bool:
    if found is None:
        return True
    return len(declared) == len(found) and all(
        d == -1 or f == -1 or d == f for d, f in zip(declared, found, strict=True)
    )


def _check_tensor(kind: str, spec: TensorSpec, found: TensorInfo | None, has: list[str], where: str) -> None:
    if found is None:
        raise StoreError(
            f"{where}: the manifest's {kind} {spec.name!r} is not in the signature (has: {', '.join(has)})"
        )
    want = tensors.dtype_enum_name(spec.dtype)
    if found.dtype != want:
        raise StoreError(f"{where}: {kind} {spec.name!r} is {found.dtype}, the manifest declares {spec.dtype} ({want})")
    if not _compatible(spec.shape, found.shape):
        raise StoreError(f"{where}: {kind} {spec.name!r} has shape {found.shape}, the manifest declares {spec.shape}")


class PredictApi:
    name: ApiName = "predict"
    method_name = "tensorflow/serving/predict"
    grpc_method = "Predict"
    rest_verb = "predict"
    log_field = "predict_log"

    # -- manifest ---------------------------------------------------------------------------------
    def check_model(self, model: ModelSpec, where: str) -> None:
        common.reject_fields(model, FIELDS, self.name, where)
        if model.inputs is None:
            raise ValueError(f"{where}.inputs: a predict model needs its inputs [{{name, dtype, shape}}]")
        specs = _specs(model)
        outputs = {t.name: t for t in model.outputs or []}
        for index, case in enumerate(model.smoke):
            at = f"{where}.smoke[{index}]"
            if (case.inputs is None) == (case.inputs_file is None):
                raise ValueError(f"{at}.inputs: give inputs (one instance per input) or inputs_file, not both")
            if case.inputs is not None:
                _named(model, set(case.inputs), f"{at}.inputs")
                for name, value in case.inputs.items():
                    _instance(specs[name], value, f"{at}.inputs.{name}")
            for name, exp in (case.expect or {}).items():
                if model.outputs is not None and name not in outputs:
                    raise ValueError(f"{at}.expect.{name}: not one of the declared outputs {sorted(outputs)}")
                spec = outputs.get(name)
                if spec is not None:
                    self._check_expectation(spec, exp, f"{at}.expect.{name}")

    @staticmethod
    def _check_expectation(spec: TensorSpec, exp: OutputExpectation, where: str) -> None:
        instance_shape = spec.shape[1:]
        if exp.argmax is not None and spec.dtype in ("string", "bool"):
            raise ValueError(f"{where}.argmax: output {spec.name!r} is {spec.dtype}, not numeric")
        if exp.shape is not None and len(exp.shape) != len(instance_shape):
            raise ValueError(f"{where}.shape: one instance of {spec.name!r} has rank {len(instance_shape)}")
        if exp.values is not None:
            try:
                _instance(spec, exp.values, f"{where}.values")
            except ValueError as exc:
                raise ValueError(str(exc)) from None

    def check_files(self, model: ModelSpec, where: str) -> None:
        for index, case in enumerate(model.smoke):
            if case.inputs_file is not None:
                self._file_batch(model, case.inputs_file, f"{where}.smoke[{index}].inputs_file")

    def _file_batch(self, model: ModelSpec, path: Path, where: str) -> PredictBatch:
        try:
            if path.stat().st_size > MAX_INPUT_FILE_BYTES:
                raise ValueError(f"{where}: {path} is larger than {MAX_INPUT_FILE_BYTES} bytes")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{where}: {path} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{where}: cannot read {path}: {exc}") from None
        return self.batch_from_rest(model, doc, where)

    # -- contract ---------------------------------------------------------------------------------
    def check_contract(self, sig: SignatureInfo, model: ModelSpec) -> None:
        where = f"signature {sig.name!r}"
        inputs = {t.name: t for t in sig.inputs}
        outputs = {t.name: t for t in sig.outputs}
        for spec in model.inputs or []:
            _check_tensor("input", spec, inputs.get(spec.name), sorted(inputs), where)
        undeclared = sorted(set(inputs) - {t.name for t in model.inputs or []})
        if undeclared:
            # TF Serving's Predict needs every input of the signature.
            raise StoreError(f"{where}: input(s) {', '.join(undeclared)} are not in the manifest's inputs")
        for spec in model.outputs or []:
            _check_tensor("output", spec, outputs.get(spec.name), sorted(outputs), where)
        for case in model.smoke:
            for name in case.expect or {}:
                if name not in outputs:
                    raise StoreError(
                        f"{where}: a smoke case expects output {name!r}, the signature has {', '.join(sorted(outputs))}"
                    )

    # -- inputs -----------------------------------------------------------------------------------
    def case_batch(self, model: ModelSpec, case: SmokeCase) -> PredictBatch:
        if case.inputs_file is not None:
            return self._file_batch(model, case.inputs_file, "inputs_file")
        specs = _specs(model)
        arrays = {
            name: _instance(specs[name], value, f"inputs.{name}")[np.newaxis, ...]
            for name, value in (case.inputs or {}).items()
        }
        return PredictBatch(arrays)

    def probe_batch(self, model: ModelSpec) -> PredictBatch:
        if model.smoke:
            return self.case_batch(model, model.smoke[0])
        arrays = {}
        for spec in model.inputs or []:
            shape = [1] + [1 if d == -1 else d for d in spec.shape[1:]]
            if spec.dtype == "string":
                array = np.full(shape, b"", dtype=object)
            else:
                array = np.zeros(shape, dtype=tensors.MANIFEST_DTYPES[spec.dtype][1])
            arrays[spec.name] = array
        return PredictBatch(arrays)

    def warmup_batches(self, model: ModelSpec) -> list[PredictBatch]:
        """One per case: instances of different cases may not stack."""
        return [self.case_batch(model, case) for case in model.smoke] or [self.probe_batch(model)]

    def batch_from_rest(self, model: ModelSpec, doc: Any, where: str) -> PredictBatch:
        """TF Serving's REST predict body: ``{"instances": [...]}`` (row) or ``{"inputs": ...}`` (columnar)."""
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object with 'instances' or 'inputs'")
        unknown = sorted(set(doc) - {"instances", "inputs", "signature_name"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
        if ("instances" in doc) == ("inputs" in doc):
            raise ValueError(f"{where}: give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
        specs = _specs(model)
        single = len(specs) == 1
        arrays: dict[str, np.ndarray] = {}
        if "instances" in doc:
            instances = doc["instances"]
            if not isinstance(instances, list) or not instances:
                raise ValueError(f"{where}: 'instances' must be a non-empty list")
            if all(_is_named(inst) for inst in instances):
                for index, inst in enumerate(instances):
                    _named(model, set(inst), f"{where}: instances[{index}]")
                rows = [
                    {name: _instance(specs[name], inst[name], f"{where}: instances[{i}].{name}") for name in inst}
                    for i, inst in enumerate(instances)
                ]
                arrays = tensors.stack_instances(rows)
            elif single:
                (spec,) = specs.values()
                arrays = {
                    spec.name: np.stack(
                        [_instance(spec, v, f"{where}: instances[{i}]") for i, v in enumerate(instances)]
                    )
                }
            else:
                raise ValueError(f"{where}: with {len(specs)} inputs each instance must be an object of named inputs")
        else:
            columns = doc["inputs"]
            if _is_named(columns):
                _named(model, set(columns), f"{where}: inputs")
                arrays = {
                    name: _batched(specs[name], value, f"{where}: inputs.{name}") for name, value in columns.items()
                }
            elif single:
                (spec,) = specs.values()
                arrays = {spec.name: _batched(spec, columns, f"{where}: inputs")}
            else:
                raise ValueError(f"{where}: with {len(specs)} inputs 'inputs' must be an object of named inputs")
            sizes = {a.shape[0] for a in arrays.values()}
            if len(sizes) > 1:
                raise ValueError(f"{where}: inputs have different batch sizes {sorted(sizes)}")
        if any(a.shape[0] == 0 for a in arrays.values()):
            raise ValueError(f"{where}: an empty batch")
        return PredictBatch(arrays, {k: v for k, v in doc.items() if k != "signature_name"})

    # -- requests and answers ---------------------------------------------------------------------
    def grpc_request(self, model: ModelSpec, batch: PredictBatch) -> Any:
        ensure_light_protos()
        from tensorflow_serving.apis import predict_pb2

        specs = _specs(model)
        request = predict_pb2.PredictRequest()
        for name, array in batch.arrays.items():
            request.inputs[name].CopyFrom(tensors.to_tensor_proto(array, specs[name].dtype))
        return request

    def rest_body(self, model: ModelSpec, batch: PredictBatch) -> dict[str, Any]:
        del model
        if batch.rest_doc is not None:
            return dict(batch.rest_doc)
        columns = {name: tensors.to_json_value(array) for name, array in batch.arrays.items()}
        return {"instances": [{name: column[i] for name, column in columns.items()} for i in range(batch.size)]}

    def parse_grpc(self, response: Any) -> Answer:
        return {name: tensors.from_tensor_proto(proto) for name, proto in response.outputs.items()}

    def parse_rest(self, model: ModelSpec, case: SmokeCase | None, payload: Any) -> Answer:
        if not isinstance(payload, dict) or ("predictions" not in payload and "outputs" not in payload):
            raise ValueError(f"unexpected predict response: {str(payload)[:200]}")
        try:
            if "predictions" in payload:
                rows = payload["predictions"]
                if isinstance(rows, list) and rows and all(isinstance(r, dict) and "b64" not in r for r in rows):
                    return {
                        name: tensors.from_json_output([r[name] for r in rows], binary=name.endswith("_bytes"))
                        for name in rows[0]
                    }
                name = self._unnamed_output(model, case)
                return {name: tensors.from_json_output(rows, binary=name.endswith("_bytes"))}
            columns = payload["outputs"]
            if _is_named(columns):
                return {n: tensors.from_json_output(v, binary=n.endswith("_bytes")) for n, v in columns.items()}
            name = self._unnamed_output(model, case)
            return {name: tensors.from_json_output(columns, binary=name.endswith("_bytes"))}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unexpected predict response: {exc}: {str(payload)[:200]}") from None

    @staticmethod
    def _unnamed_output(model: ModelSpec, case: SmokeCase | None) -> str:
        """The name of a single output TF Serving's REST answer left unnamed: declared, or expected."""
        if model.outputs is not None and len(model.outputs) == 1:
            return model.outputs[0].name
        expected = list((case.expect or {}) if case is not None else {})
        return expected[0] if len(expected) == 1 else UNNAMED

    def judge(self, model: ModelSpec, case: SmokeCase, answer: Answer) -> Verdict:
        expect = case.expect or {}
        expected = "; ".join(f"{name} {_describe(exp)}" for name, exp in expect.items()) or "an answer"
        got = _summary(answer)
        details: dict[str, Any] = {"outputs": sorted(answer)}
        for spec in model.outputs or []:
            if spec.name not in answer and UNNAMED not in answer:
                return Verdict(
                    False, expected, got, f"declared output {spec.name!r} is missing from the answer", details
                )
        batch = self.case_batch(model, case).size
        for name, exp in expect.items():
            output = answer.get(name)
            if output is None:
                return Verdict(
                    False,
                    expected,
                    got,
                    f"no output {name!r} in the answer (has: {', '.join(sorted(answer))})",
                    details,
                )
            if output.ndim == 0 or output.shape[0] != batch:
                return Verdict(
                    False,
                    expected,
                    got,
                    f"output {name!r} has shape {list(output.shape)}, not a batch of {batch}",
                    details,
                )
            for row in range(batch):
                problem = _check_instance(name, exp, output[row])
                if problem is not None:
                    where = f" (instance {row})" if batch > 1 else ""
                    return Verdict(False, expected, got, problem + where, details)
        return Verdict(True, expected, got, "", details)

    def diff(self, name: str, current: Answer, candidate: Answer) -> CaseDiff:
        changed = False
        delta: float | None = None
        per_output: dict[str, Any] = {}
        for output in sorted(set(current) | set(candidate)):
            before, after = current.get(output), candidate.get(output)
            entry: dict[str, Any] = {}
            if before is None or after is None or before.shape != after.shape:
                changed = True
                entry["shape_changed"] = True
            elif _numeric(before) and _numeric(after):
                worst = (
                    float(np.max(np.abs(after.astype(np.float64) - before.astype(np.float64)))) if before.size else 0.0
                )
                entry["max_abs_delta"] = round(worst, 6)
                delta = worst if delta is None else max(delta, worst)
                argmax_changed = _argmax_rows(before) != _argmax_rows(after)
                entry["argmax_changed"] = argmax_changed
                changed = changed or argmax_changed
            else:
                differs = before.tolist() != after.tolist()
                entry["values_changed"] = differs
                changed = changed or differs
            per_output[output] = entry
        return CaseDiff(name, _summary(current), _summary(candidate), changed, delta, {"outputs": per_output})

    def to_json(self, answer: Answer) -> list[dict[str, Any]]:
        count = min((a.shape[0] for a in answer.values() if a.ndim), default=0)
        return [{name: tensors.to_json_value(array[i]) for name, array in answer.items()} for i in range(count)]

    # -- in-process ---------------------------------------------------------------------------------
    def run_local(self, model: ModelSpec, call: SignatureCall, sig: SignatureInfo, batch: PredictBatch) -> Answer:
        del model, sig
        return {name: np.asarray(value) for name, value in call(batch.arrays).items()}

    def export_function(self, keras_model: Any, model: ModelSpec) -> tuple[Callable[..., Any], list[Any]]:
        """TensorFlow inside. The trainer contract: a Keras model taking the manifest's inputs (in order;
        one input → one tensor) and returning one tensor, a list, or a dict of named outputs."""
        import tensorflow as tf

        specs = list(model.inputs or [])
        declared = [t.name for t in model.outputs or []]
        probe = [self.probe_batch(model.model_copy(update={"smoke": []})).arrays[s.name] for s in specs]
        try:
            result = keras_model(probe[0] if len(probe) == 1 else probe, training=False)
        except Exception as exc:  # any failure here means the trainer broke the contract
            raise common.trainer_error(
                model,
                f"its model does not accept the manifest's inputs {[s.name for s in specs]}: "
                f"{type(exc).__name__}: {exc}",
            ) from None
        names = _output_names(model, result, declared)

        def predict(*args: Any) -> dict[str, Any]:
            out = keras_model(args[0] if len(args) == 1 else list(args), training=False)
            if isinstance(out, dict):
                return {name: out[name] for name in names}
            if isinstance(out, list | tuple):
                return dict(zip(names, out, strict=True))
            return {names[0]: out}

        signature = [
            tf.TensorSpec(
                [None if d == -1 else d for d in s.shape], tf.dtypes.as_dtype(_TF_DTYPES[s.dtype]), name=s.name
            )
            for s in specs
        ]
        return predict, signature


_TF_DTYPES = {
    "float32": "float32",
    "float64": "float64",
    "int32": "int32",
    "int64": "int64",
    "string": "string",
    "bool": "bool",
}


def _output_names(model: ModelSpec, result: Any, declared: list[str]) -> list[str]:
    if isinstance(result, dict):
        names = sorted(result)
        if declared and sorted(declared) != names:
            raise common.trainer_error(model, f"its model returns outputs {names}, the manifest declares {declared}")
        return names
    count = len(result) if isinstance(result, list | tuple) else 1
    if declared and len(declared) != count:
        raise common.trainer_error(model, f"its model returns {count} output(s), the manifest declares {declared}")
    if declared:
        return declared
    return [UNNAMED] if count == 1 else [f"output_{i}" for i in range(count)]


API = PredictApi()
