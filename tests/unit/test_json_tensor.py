"""json_tensor.cc's number formatting, debug strings and parsing rules (pure functions, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from deployer.model_server import json_tensor as jt
from deployer.model_server.status import ServingError


@pytest.mark.parametrize(
    ("value", "single", "text"),
    [
        (3.0, True, "3.0"),  # whole numbers keep a ".0"
        (float(np.float32(0.1)), True, "0.1"),  # six digits round-trip in float32
        (float(np.float32(3.14159274)), True, "3.14159274"),  # else max_digits10
        (1e7, True, "1e+07"),  # %g switches to an exponent: no ".0" added
        (0.1, False, "0.1"),
        (1 / 3, False, "0.33333333333333331"),
        (float("nan"), True, "NaN"),
        (float("-inf"), False, "-Infinity"),
    ],
)
def test_write_decimal(value: float, single: bool, text: str) -> None:
    assert jt.write_decimal(value, single=single) == text


def test_debug_string_is_rapidjson_pretty_with_single_line_arrays() -> None:
    assert jt.debug_string({"a": [1, 2.5, "x"], "b": {}}) == '{\n    "a": [1, 2.5, "x"],\n    "b": {}\n}'
    assert jt.debug_string(1e21) == "1e21"
    assert jt.debug_string(123456.0) == "123456.0"
    long = jt.debug_string({"k": ["a" * 100] * 5})
    assert len(long) < 400 and long.startswith('{\n    "k": ["' + "a" * 100)


def test_parse_json_keeps_rapidjsons_number_kinds() -> None:
    doc = jt.parse_json(b'{"i": 5, "u": 18446744073709551615, "big": 1' + b"0" * 30 + b', "n": NaN}')
    assert doc["i"] == 5 and doc["u"] == 2**64 - 1 and isinstance(doc["big"], float)
    with pytest.raises(ServingError, match="Number too big to be stored in double"):
        jt.parse_json(b'{"x": 1' + b"0" * 400 + b"}")
    with pytest.raises(ServingError, match=r"^INVALID_ARGUMENT: JSON Parse error: The document is empty$"):
        jt.parse_json(b"")
    with pytest.raises(ServingError, match=r"JSON Value: \[1, 2\] Is not object"):
        jt.parse_json(b"[1,2]")


def test_deep_nesting_is_invalid_argument_not_recursion() -> None:
    for depth in (300, 100_000):
        with pytest.raises(ServingError) as info:
            jt.parse_json(b'{"instances": ' + b"[" * depth + b"]" * depth + b"}")
        assert info.value.code_name == "INVALID_ARGUMENT"


def test_predict_inputs_row_and_columnar() -> None:
    arrays, fmt = jt.predict_inputs({"instances": [[1.0], [2.0]]}, {"x": jt.DT_FLOAT})
    assert fmt == "row" and arrays["x"].dtype == np.float32 and arrays["x"].tolist() == [[1.0], [2.0]]
    arrays, fmt = jt.predict_inputs({"inputs": {"a": [1, 2], "s": [{"b64": "AAE="}]}}, {"a": jt.DT_INT64, "s": 7})
    assert fmt == "columnar" and arrays["a"].tolist() == [1, 2] and arrays["s"].tolist() == [b"\x00\x01"]
    with pytest.raises(ServingError, match="is not of expected type: int32"):
        jt.predict_inputs({"inputs": [2**40]}, {"x": jt.DT_INT32})
