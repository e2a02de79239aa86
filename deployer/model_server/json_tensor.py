"""TF Serving's REST JSON <-> request/tensor conversions (util/json_tensor.cc), with its messages.

- Parsing: an empty body is ``JSON Parse error: The document is empty``; integers keep RapidJSON's kinds
  (int64, else uint64, else a double); a number beyond double range is a parse error; nesting deeper
  than Python's parser can follow is INVALID_ARGUMENT too (RapidJSON parses iteratively, then the
  request fails on its content: 400 either way, never 500).
- Classify/Regress: ``examples`` (+ optional ``context``) objects → tf.Example; JSON string / ``{"b64"}``
  → bytes_list, a number with a fraction or exponent → float_list, an integer or bool → int64_list.
- Predict: row (``instances``) and columnar (``inputs``) formats, shapes taken from the first element
  at each level (GetDenseTensorShape) and checked level by level (FillTensorProto), values checked
  against the signature's dtype (AddValueToTensor).
- Output: ``predictions`` (row) or ``outputs`` (columnar); floats via WriteDecimal (six significant
  digits when they round-trip, else max_digits10, whole numbers get ``.0``); ``*_bytes`` string
  outputs as ``{"b64": ...}``. Layout follows RapidJSON's PrettyWriter (4-space indent, leaf arrays on
  one line).

``debug_string`` reproduces JsonValueToDebugString (PrettyWriter, single-line arrays, cut at 256 bytes),
which most of these messages embed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import numpy as np

from deployer.model_server.status import ServingError, invalid

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1
MAX_DEBUG_BYTES = 256
# TensorShape holds at most 254 dims; deeper JSON can never be a tensor, and our converters recurse.
MAX_DEPTH = 256

# tensorflow DataType enum values used here (types_pb2), kept literal to avoid importing TensorFlow.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64 = 9, 10, 22, 23
_DTYPE_STRING = {
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
}
_NUMPY = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_UINT8: np.uint8,
    DT_INT16: np.int16,
    DT_INT8: np.int8,
    DT_INT64: np.int64,
    DT_BOOL: np.bool_,
    DT_UINT32: np.uint32,
    DT_UINT64: np.uint64,
}


def dtype_string(dtype: int) -> str:
    """DataTypeString (DT_FLOAT -> "float")."""
    if dtype in _DTYPE_STRING:
        return _DTYPE_STRING[dtype]
    from tensorflow.core.framework import types_pb2

    return str(types_pb2.DataType.Name(dtype))[3:].lower()


# -- parsing -----------------------------------------------------------------------------------------


class _Raw(str):
    """A number token kept as written (RawValue), so writers print it verbatim."""


def _parse_int(text: str) -> Any:
    value = int(text)
    if INT64_MIN <= value <= UINT64_MAX:
        return value
    return _parse_float(text)  # RapidJSON stores larger integers as doubles


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig(text)
    return value


class _NumberTooBig(ValueError):
    pass


def _parse_constant(name: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[name]


def parse_json(body: bytes) -> dict[str, Any]:
    """ParseJson: the request body as a JSON object, or INVALID_ARGUMENT with TF Serving's messages."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    try:
        doc = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except _NumberTooBig as exc:
        offset = text.find(str(exc))
        raise invalid(f"JSON Parse error: Number too big to be stored in double. at offset: {offset}") from exc
    except json.JSONDecodeError as exc:
        raise invalid(f"JSON Parse error: {exc.msg}. at offset: {exc.pos}") from exc
    except RecursionError as exc:
        raise invalid("JSON Parse error: The document is nested too deeply to be a request.") from exc
    if _depth(doc) > MAX_DEPTH:
        raise invalid(f"JSON Value: {debug_string(doc)} is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (the document may be deeper than the recursion limit allows)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
    return deepest


def json_type(value: Any) -> str:
    """JsonTypeString."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# -- writing (RapidJSON PrettyWriter) -------------------------------------------------------------------


def _rapidjson_double(value: float) -> str:
    """Writer::Double: Grisu shortest digits laid out by RapidJSON's Prettify."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    exp_digits = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in exp_digits.digits)
    k = int(exp_digits.exponent)
    kk = len(digits) + k
    if k >= 0 and kk <= 21:
        out = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        out = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        out = "0." + "0" * (-kk) + digits
    elif len(digits) == 1:
        out = f"{digits}e{kk - 1}"
    else:
        out = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + out


def write_decimal(value: float, *, single: bool) -> _Raw:
    """WriteDecimal: absl::StrCat (six digits) when it round-trips, else max_digits10; '.0' on whole numbers."""
    if math.isnan(value):
        return _Raw("NaN")
    if math.isinf(value):
        return _Raw("-Infinity" if value < 0 else "Infinity")
    narrow = np.float32 if single else np.float64
    text = _six_digits(float(value))
    if narrow(text) != narrow(value):
        text = f"{float(value):.{9 if single else 17}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return _Raw(text)


def _six_digits(value: float) -> str:
    """absl::SixDigits / printf %g with exponents of at least two digits."""
    return f"{value:.6g}"


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _tokens(value: Any, *, single_line_arrays: bool, level: int = 0) -> Iterator[str]:
    """PrettyWriter output of ``value`` (indent 4), one chunk per handler call."""
    indent = "    "
    if isinstance(value, dict):
        yield "{"
        first = True
        for key, item in value.items():
            yield ("\n" if first else ",\n") + indent * (level + 1) + _string(str(key))
            first = False
            inner = _tokens(item, single_line_arrays=single_line_arrays, level=level + 1)
            yield ": " + next(inner)
            yield from inner
        yield ("" if first else "\n" + indent * level) + "}"
    elif isinstance(value, list):
        yield "["
        for index, item in enumerate(value):
            inner = _tokens(item, single_line_arrays=single_line_arrays, level=level + 1)
            if single_line_arrays:
                prefix = ", " if index else ""
            else:
                prefix = ("," if index else "") + "\n" + indent * (level + 1)
            yield prefix + next(inner)
            yield from inner
        yield ("\n" + indent * level if value and not single_line_arrays else "") + "]"
    elif isinstance(value, _Raw):
        yield str(value)
    elif value is None:
        yield "null"
    elif value is True:
        yield "true"
    elif value is False:
        yield "false"
    elif isinstance(value, str):
        yield _string(value)
    elif isinstance(value, float):
        yield _rapidjson_double(value)
    else:
        yield str(int(value))


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: single-line arrays, stops once 256 bytes are written."""
    out: list[str] = []
    size = 0
    for chunk in _tokens(value, single_line_arrays=True):
        if size >= MAX_DEBUG_BYTES:
            break
        out.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(out)


# -- Classify / Regress -----------------------------------------------------------------------------------


def fill_signature(doc: dict[str, Any]) -> str:
    """FillSignature: the optional ``signature_name``."""
    if "signature_name" not in doc:
        return ""
    name = doc["signature_name"]
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def _feature_kind_error(name: str, kind: str) -> ServingError:
    return invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_value_to_feature(value: Any, name: str, feature: dict[str, list[Any]]) -> None:
    """AddValueToFeature. ``feature`` maps its one kind ("bytes"/"float"/"int64") to values."""

    def of_kind(kind: str) -> list[Any]:
        if feature and kind not in feature:
            raise _feature_kind_error(name, next(iter(feature)))
        return feature.setdefault(kind, [])

    if value is None or isinstance(value, list):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        of_kind("int64").append(1 if value else 0)
    elif isinstance(value, dict):
        if not is_base64_object(value):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
        of_kind("bytes").append(decode_base64_object(value))
    elif isinstance(value, str):
        of_kind("bytes").append(value.encode("utf-8"))
    elif isinstance(value, float):
        of_kind("float").append(value)
    else:
        values = of_kind("int64")
        if value > INT64_MAX:
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        values.append(value)


def example_from_json(value: Any) -> Any:
    """MakeExampleFromJsonObject."""
    from tensorflow.core.example import example_pb2

    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature: dict[str, list[Any]] = {}
        for item in content if isinstance(content, list) else [content]:
            _add_value_to_feature(item, name, feature)
        target = example.features.feature[name]
        for kind, values in feature.items():
            getattr(target, f"{kind}_list").value.extend(values)
    return example


def fill_classify_regress_request(doc: dict[str, Any], request: Any, method: str) -> None:
    """FillClassifyRegressRequestFromJson (the signature name is set by the caller)."""
    input_proto = request.input
    has_context = "context" in doc
    if has_context:
        input_proto.example_list_with_context.context.CopyFrom(example_from_json(doc["context"]))
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    target = input_proto.example_list_with_context if has_context else input_proto.example_list
    for value in examples:
        target.examples.add().CopyFrom(example_from_json(value))
    del method  # the message says "classify" for both methods, as upstream


# -- Predict ---------------------------------------------------------------------------------------------


def is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_base64_object(value: Any) -> bytes:
    if not is_base64_object(value):
        raise invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        # absl::Base64Unescape accepts missing padding.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("Unable to base64 decode") from exc


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: sizes along the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {dtype_string(dtype)}"
    )


def _scalar(value: Any, dtype: int) -> Any:
    """AddValueToTensor."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if not is_number:
            raise _type_error(value, dtype)
        return float(value)
    if dtype in (DT_INT32, DT_INT16, DT_INT8, DT_UINT8):
        if not (isinstance(value, int) and not isinstance(value, bool) and INT32_MIN <= value <= INT32_MAX):
            raise _type_error(value, dtype)
        return value
    if dtype == DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == DT_INT64:
        if not (isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX):
            raise _type_error(value, dtype)
        return value
    if dtype == DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == DT_UINT32:
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT32_MAX):
            raise _type_error(value, dtype)
        return value
    if dtype == DT_UINT64:
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX):
            raise _type_error(value, dtype)
        return value
    raise ServingError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_string(dtype)}",
    )


def _fill(value: Any, shape: list[int], dtype: int, out: list[Any], level: int = 0) -> None:
    """FillTensorProto: every leaf at level == rank, every list of the size its level's dim says."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != DT_STRING:
                raise _type_error(value, dtype)
            out.append(decode_base64_object(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, shape, dtype, out, level + 1)


def _array(values: list[Any], shape: list[int], dtype: int) -> np.ndarray:
    if dtype == DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.array(values, dtype=_NUMPY[dtype]).reshape(shape)


def _tensor(value: Any, dtype: int) -> tuple[list[Any], list[int]]:
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, shape, dtype, values)
    return values, shape


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def predict_inputs(doc: dict[str, Any], inputs: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson after the signature's input map is known: ({alias: array}, "row"|"columnar").

    ``inputs`` maps each signature input alias to its dtype (sorted by alias, as protobuf's Map iterates in
    C++ for the single-input case, which takes ``begin()``).
    """
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return _from_instances(instances, inputs), "row"
    if has_inputs:
        return _from_inputs(doc["inputs"], inputs), "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list[Any], infos: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )

    def is_element_object(value: Any) -> bool:
        return isinstance(value, dict) and not is_base64_object(value)

    objects = is_element_object(instances[0])
    names = sorted(infos)
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item: Any, name: str) -> None:
        """AddInstanceItem."""
        if name not in infos:
            raise invalid(f"JSON object: does not have named input: {name}")
        flat, shape = _tensor(item, infos[name])
        if name not in sizes:
            sizes[name], shapes[name] = len(flat), shape
        elif sizes[name] != len(flat):
            raise invalid(f"Expecting tensor size: {sizes[name]} but got: {len(flat)}")
        elif shapes[name] != shape:
            raise invalid(f"Expecting shape {_shape_string(shapes[name])} but got: {_shape_string(shape)}")
        values.setdefault(name, []).extend(flat)

    for index, element in enumerate(instances):
        if objects:
            if not is_element_object(element):
                raise invalid(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as exc:
                    raise invalid(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {exc}"
                    ) from exc
            if set(element) != set(names):
                raise invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if is_element_object(element):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, names[0])
            except ServingError as exc:
                raise invalid(f"Failed to process element: {index} of 'instances' list. Error: {exc}") from exc
    count = len(instances)
    return {name: _array(values[name], [count, *shapes[name]], infos[name]) for name in values}


def _from_inputs(value: Any, infos: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap."""
    names = sorted(infos)
    if not isinstance(value, dict) or is_base64_object(value):
        if len(infos) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        flat, shape = _tensor(value, infos[names[0]])
        return {names[0]: _array(flat, shape, infos[names[0]])}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        flat, shape = _tensor(value[name], infos[name])
        arrays[name] = _array(flat, shape, infos[name])
    return arrays


# -- responses -------------------------------------------------------------------------------------------


def _leaf(value: Any, dtype: np.dtype[Any], as_bytes: bool) -> Any:
    if dtype == np.float32 or dtype == np.float16:
        return write_decimal(float(value), single=True)
    if dtype == np.float64:
        return write_decimal(float(value), single=False)
    if dtype == np.object_ or dtype.kind in "SU":
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if as_bytes:
            return {"b64": base64.b64encode(raw).decode("ascii")}
        return raw.decode("utf-8", "replace")
    if dtype == np.bool_:
        return bool(value)
    return int(value)


def _values(array: np.ndarray, as_bytes: bool) -> Any:
    """AddTensorValues: nested lists of JSON leaves."""
    leaves = np.empty(array.size, dtype=object)
    leaves[:] = [_leaf(v, array.dtype, as_bytes) for v in array.reshape(-1).tolist()]
    return leaves.reshape(array.shape).tolist() if array.ndim else leaves[0]


def _is_bytes(name: str, array: np.ndarray) -> bool:
    return (array.dtype == np.object_ or array.dtype.kind == "S") and name.endswith("_bytes")


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors for a row or columnar request."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            body: Any = _values(outputs[names[0]], _is_bytes(names[0], outputs[names[0]]))
        else:
            body = {name: _values(outputs[name], _is_bytes(name, outputs[name])) for name in names}
        return _layout({"outputs": body})
    batch = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and batch != array.shape[0]:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows = {name: _values(outputs[name], _is_bytes(name, outputs[name])) for name in names}
    if len(names) == 1:
        predictions: list[Any] = rows[names[0]]
    else:
        predictions = [{name: rows[name][i] for name in names} for i in range(batch)]
    return _layout({"predictions": predictions})


def _layout(body: Any) -> str:
    """PrettyWriter, with each result row's arrays on one line (kFormatSingleLineArray per row)."""
    key: str
    key, value = next(iter(body.items()))
    if key == "outputs":
        return "".join(_tokens(body, single_line_arrays=False))
    head = '{\n    "' + key + '": '
    if not isinstance(value, list):
        return head + "".join(_tokens(value, single_line_arrays=True, level=1)) + "\n}"
    if not value:
        return head + "[]\n}"
    rows = ["\n        " + "".join(_tokens(row, single_line_arrays=True, level=2)) for row in value]
    return head + "[" + ",".join(rows) + "\n    ]\n}"


def classify_response(result: Any) -> str:
    """MakeJsonFromClassificationResult."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = [
        [[c.label, write_decimal(c.score, single=True)] for c in classifications.classes]
        for classifications in result.classifications
    ]
    return _layout({"results": rows})


def regress_response(result: Any) -> str:
    """MakeJsonFromRegressionResult: one single-line array."""
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    values = [write_decimal(r.value, single=True) for r in result.regressions]
    return '{\n    "results": ' + "".join(_tokens(values, single_line_arrays=True, level=1)) + "\n}"


def error_response(message: str) -> str:
    """MakeJsonFromStatus."""
    return '{\n    "error": ' + _string(message) + "\n}"
