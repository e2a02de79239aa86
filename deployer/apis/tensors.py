"""numpy arrays ⇄ TensorProto and TF Serving's REST tensor JSON, without importing TensorFlow.

``deployer smoke`` builds Predict requests here: the light protos (deployer.protos) plus numpy, never
``tf.make_tensor_proto``. Only the dtypes a manifest may declare are written; reading also covers the
other numeric dtypes a signature may return.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deployer.protos import tf_proto

# Manifest dtype → (DataType enum name, numpy dtype). Strings are numpy object arrays of bytes.
MANIFEST_DTYPES: dict[str, tuple[str, Any]] = {
    "float32": ("DT_FLOAT", np.float32),
    "float64": ("DT_DOUBLE", np.float64),
    "int32": ("DT_INT32", np.int32),
    "int64": ("DT_INT64", np.int64),
    "string": ("DT_STRING", np.object_),
    "bool": ("DT_BOOL", np.bool_),
}
# DataType enum name → numpy dtype, for reading any numeric answer.
_READ_DTYPES: dict[str, Any] = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_INT16": np.int16,
    "DT_INT8": np.int8,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_HALF": np.float16,
    "DT_BOOL": np.bool_,
    "DT_STRING": np.object_,
}
# Where the typed repeated fields of a TensorProto hold each dtype (when tensor_content is empty).
_VAL_FIELDS = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT32": "int_val",
    "DT_INT16": "int_val",
    "DT_INT8": "int_val",
    "DT_UINT8": "int_val",
    "DT_UINT16": "int_val",
    "DT_INT64": "int64_val",
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
    "DT_BOOL": "bool_val",
    "DT_STRING": "string_val",
    "DT_HALF": "half_val",
}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _types() -> Any:
    return tf_proto("tensorflow.core.framework.types_pb2")


def dtype_enum_name(manifest_dtype: str) -> str:
    return MANIFEST_DTYPES[manifest_dtype][0]


def as_array(value: Any, dtype: str, where: str) -> np.ndarray:
    """Nested lists (one manifest/JSON value) → an array of ``dtype``. Raises ValueError naming ``where``."""
    if dtype == "string":
        flat = np.asarray(value, dtype=object)
        if flat.dtype != object or any(isinstance(v, list) for v in flat.reshape(-1)):
            raise ValueError(f"{where}: ragged nested lists")
        out = np.empty(flat.shape, dtype=object)
        for index, item in np.ndenumerate(flat):
            if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
                try:
                    out[index] = base64.b64decode(item["b64"], validate=True)
                except ValueError:
                    raise ValueError(f"{where}: invalid base64 in a b64 value") from None
            elif isinstance(item, str):
                out[index] = item.encode("utf-8")
            else:
                raise ValueError(f"{where}: {item!r} is not a string")
        return out
    try:
        raw = np.asarray(value, dtype=object)
    except ValueError:
        raise ValueError(f"{where}: ragged nested lists") from None
    if raw.dtype != object:
        raise ValueError(f"{where}: not a number or list of numbers")
    for item in raw.reshape(-1):
        if isinstance(item, list):
            raise ValueError(f"{where}: ragged nested lists")
        if dtype == "bool":
            if not isinstance(item, bool):
                raise ValueError(f"{where}: {item!r} is not a boolean")
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"{where}: {item!r} is not a number")
        elif dtype in _INT_RANGES:
            low, high = _INT_RANGES[dtype]
            if not isinstance(item, int) and not (isinstance(item, float) and item.is_integer()):
                raise ValueError(f"{where}: {item!r} is not an integer")
            if not low <= int(item) <= high:
                raise ValueError(f"{where}: {item!r} does not fit in {dtype}")
        elif not _finite(item):
            raise ValueError(f"{where}: {item!r} is not a finite number")
    numpy_dtype = MANIFEST_DTYPES[dtype][1]
    if raw.size == 0:
        return np.zeros(raw.shape, dtype=numpy_dtype)
    converted = np.array(raw.tolist(), dtype=numpy_dtype)
    if dtype in ("float32", "float64") and not np.all(np.isfinite(converted)):
        raise ValueError(f"{where}: a value overflows {dtype}")
    return converted


def _finite(item: int | float) -> bool:
    # np.isfinite raises TypeError on an int beyond int64 (found by tests/robustness/test_manifest_fuzz.py).
    try:
        return math.isfinite(item)
    except OverflowError:
        return False


def shape_matches(shape: tuple[int, ...], wanted: list[int] | tuple[int, ...]) -> bool:
    """``shape`` fits ``wanted``, where -1 in ``wanted`` is any size."""
    return len(shape) == len(wanted) and all(w == -1 or w == s for s, w in zip(shape, wanted, strict=True))


def to_tensor_proto(array: np.ndarray, dtype: str) -> Any:
    """A TensorProto of a manifest dtype: numbers as tensor_content (little-endian), strings as string_val."""
    tensor_pb2 = tf_proto("tensorflow.core.framework.tensor_pb2")
    enum_name, numpy_dtype = MANIFEST_DTYPES[dtype]
    proto = tensor_pb2.TensorProto(dtype=_types().DataType.Value(enum_name))
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    if dtype == "string":
        proto.string_val.extend(bytes(v) for v in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=np.dtype(numpy_dtype).newbyteorder("<")).tobytes()
    return proto


def from_tensor_proto(proto: Any) -> np.ndarray:
    """A TensorProto as numpy (strings as an object array of bytes). Raises ValueError for other dtypes."""
    name = _types().DataType.Name(proto.dtype)
    numpy_dtype = _READ_DTYPES.get(name)
    if numpy_dtype is None:
        raise ValueError(f"cannot read a {name} tensor")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    if name != "DT_STRING" and proto.tensor_content:
        flat = np.frombuffer(proto.tensor_content, dtype=np.dtype(numpy_dtype).newbyteorder("<"))
        return flat.astype(numpy_dtype).reshape(shape)
    values = list(getattr(proto, _VAL_FIELDS[name]))
    if name == "DT_HALF":
        array = np.array(values, dtype=np.uint16).view(np.float16)
    elif name == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = [bytes(v) for v in values]
    else:
        array = np.array(values, dtype=numpy_dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 0:
        return np.zeros(shape, dtype=numpy_dtype)
    if array.size < count:
        # TensorProto semantics: the last value repeats to fill the shape.
        return np.concatenate([array, np.full(count - array.size, array[-1], dtype=array.dtype)]).reshape(shape)
    raise ValueError(f"a {name} tensor of shape {list(shape)} holds {array.size} values")


def to_json_value(array: np.ndarray) -> Any:
    """An array as REST JSON (strings as text, or {"b64": ...} when not UTF-8)."""
    if array.dtype == object:

        def text(value: bytes) -> Any:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}

        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def from_json_output(value: Any, *, binary: bool = False) -> np.ndarray:
    """One output of a REST predict answer as numpy (numbers as float64/int64/bool, strings as bytes)."""
    try:
        raw = np.asarray(value, dtype=object)
    except ValueError:
        raise ValueError("ragged output") from None
    flat = raw.reshape(-1)
    if flat.size and all(isinstance(v, str | dict) for v in flat):
        out = np.empty(raw.shape, dtype=object)
        for index, item in np.ndenumerate(raw):
            if isinstance(item, dict):
                out[index] = base64.b64decode(str(item.get("b64", "")))
            else:
                out[index] = base64.b64decode(item) if binary else item.encode("utf-8")
        return out
    if flat.size and all(isinstance(v, bool) for v in flat):
        return raw.astype(np.bool_)
    if flat.size and all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        return raw.astype(np.int64)
    try:
        return raw.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError("not a tensor of numbers, strings or booleans") from None


def stack_instances(instances: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row format → columnar: one batched array per input name."""
    names = list(instances[0])
    return {name: np.stack([inst[name] for inst in instances]) for name in names}
