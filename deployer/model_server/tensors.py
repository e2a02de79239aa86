"""Request TensorProto → ndarray, with the size it will occupy checked before anything is allocated.

A TensorProto may carry fewer values than its shape holds: TF (``Tensor::FromProto``) then fills the
rest with the last value (or zeros when none are given), and ``tf.make_ndarray`` does the same. So a
37-byte request can claim shape ``[2**27]`` with one float and make the server allocate 512 MiB
before any signature check runs. Here the element count is computed first (from the shape alone,
with TF's validity rules), ``tensor_content`` must hold exactly that many elements (as in TF), and a
tensor filled in from fewer values than it holds may occupy at most ``MAX_FILL_BYTES`` (ours: TF
Serving would allocate it). Everything that passes is converted by ``tf.make_ndarray``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from deployer.model_server.status import ServingError, invalid

# A tensor with fewer values than elements may be filled in up to this size (1 MiB): enough for the
# broadcast constants clients build with make_tensor_proto(scalar, shape=...), not a lever for memory.
MAX_FILL_BYTES = 1 << 20
_MAX_RANK = 254  # TensorShape's limit
_INT64_MAX = 2**63 - 1

# DataType -> the repeated field holding its values and how many field entries make one element.
_VALUE_FIELDS: dict[int, tuple[str, int]] = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


def _parse_error(alias: str, detail: str = "") -> ServingError:
    # predict_util.cc's text, with the reason appended where it helps the client.
    return invalid(f"tensor parsing error: {alias}" + (f" ({detail})" if detail else ""))


def element_count(alias: str, proto: Any) -> int:
    """The number of elements ``proto``'s shape holds, rejected as TF's TensorShape::IsValid would."""
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise _parse_error(alias)
    if len(shape.dim) > _MAX_RANK:
        raise _parse_error(alias, f"rank {len(shape.dim)} is above {_MAX_RANK}")
    count = 1
    for dim in shape.dim:
        if dim.size < 0:
            raise _parse_error(alias)
        count *= dim.size
        if count > _INT64_MAX:
            raise _parse_error(alias, "shape holds more than 2**63-1 elements")
    return count


def _item_size(dtype: int) -> int:
    if dtype == types_pb2.DT_STRING:
        return 8  # one object pointer per element
    try:
        return int(np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype).itemsize)
    except (TypeError, ValueError):
        return 8


def array_from_proto(alias: str, proto: Any) -> np.ndarray:
    """``tf.make_ndarray(proto)`` for request input ``alias``, refusing sizes the request does not carry."""
    count = element_count(alias, proto)
    dtype = int(proto.dtype)
    size = _item_size(dtype)
    if proto.tensor_content:
        if dtype != types_pb2.DT_STRING and len(proto.tensor_content) != count * size:
            held = len(proto.tensor_content)
            raise _parse_error(alias, f"tensor_content holds {held} bytes, its shape needs {count * size}")
    else:
        field, per = _VALUE_FIELDS.get(dtype, ("", 1))
        present = len(getattr(proto, field)) // per if field else 0
        if present < count and count * size > MAX_FILL_BYTES:
            raise _parse_error(
                alias,
                f"shape holds {count} elements but {present} values were sent; a tensor filled in from fewer "
                f"values may hold at most {MAX_FILL_BYTES} bytes",
            )
    try:
        array: np.ndarray = tf.make_ndarray(proto)
    except (TypeError, ValueError, IndexError) as exc:
        raise _parse_error(alias) from exc
    return array


def array_dtype_enum(value: np.ndarray) -> int:
    """The DataType a feed of ``value`` has (object and bytes arrays are DT_STRING)."""
    if value.dtype == np.object_ or value.dtype.kind == "S":
        return int(types_pb2.DT_STRING)
    try:
        return int(tf.dtypes.as_dtype(value.dtype).as_datatype_enum)
    except TypeError:
        return int(types_pb2.DT_INVALID)
