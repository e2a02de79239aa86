"""tf.Example features for the Classify and Regress APIs, typed by the manifest (no TensorFlow import).

A feature's manifest dtype decides its list: float → float_list, int → int64_list, string → bytes_list.
The same row becomes the gRPC request's Example and the REST request's JSON object, where a float
must stay a JSON float (TF Serving maps ``5`` to int64_list but ``5.0`` to float_list).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from deployer.protos import tf_proto

if TYPE_CHECKING:
    from deployer.manifest import ModelSpec, SmokeCase

Row = Mapping[str, Any]
_INT64 = (-(2**63), 2**63 - 1)


def coerce(value: Any, dtype: str, where: str) -> list[Any]:
    """One feature value (scalar or flat list) as a list of the dtype's Python values. Raises ValueError."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}: an empty list")
    out: list[Any] = []
    for item in items:
        if dtype == "string":
            if not isinstance(item, str):
                raise ValueError(f"{where}: {item!r} is not a string (the feature's dtype is string)")
            out.append(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"{where}: {item!r} is not a number (the feature's dtype is {dtype})")
        elif dtype == "int":
            if isinstance(item, float) and not item.is_integer():
                raise ValueError(f"{where}: {item!r} is not an integer (the feature's dtype is int)")
            if not _INT64[0] <= int(item) <= _INT64[1]:
                raise ValueError(f"{where}: {item!r} does not fit in int64")
            out.append(int(item))
        else:
            number = float(item)
            if not math.isfinite(number) or abs(number) > 3.4028234663852886e38:
                raise ValueError(f"{where}: {item!r} is not a finite float32")
            out.append(number)
    return out


def check_row(model: ModelSpec, row: Row, where: str) -> None:
    """Every declared feature present, none unknown, each value of its dtype. Raises ValueError."""
    names = model.feature_names
    missing = [n for n in names if n not in row]
    extra = sorted(set(row) - set(names))
    if missing:
        raise ValueError(f"{where}: missing feature(s) {', '.join(missing)}")
    if extra:
        raise ValueError(f"{where}: unknown feature(s) {', '.join(extra)}")
    for feature in model.features or []:
        coerce(row[feature.name], feature.dtype, f"{where}.{feature.name}")


def build_example(model: ModelSpec, row: Row) -> Any:
    """A ``tf.train.Example`` of one row, each feature in the list its dtype names."""
    example = tf_proto("tensorflow.core.example.example_pb2").Example()
    for feature in model.features or []:
        values = coerce(row[feature.name], feature.dtype, feature.name)
        target = example.features.feature[feature.name]
        if feature.dtype == "string":
            target.bytes_list.value.extend(v.encode("utf-8") for v in values)
        elif feature.dtype == "int":
            target.int64_list.value.extend(values)
        else:
            target.float_list.value.extend(values)
    return example


def serialize(model: ModelSpec, rows: Sequence[Row]) -> list[bytes]:
    return [build_example(model, row).SerializeToString() for row in rows]


def example_json(model: ModelSpec, row: Row) -> dict[str, Any]:
    """The REST ``examples`` object of one row: scalars stay scalars, floats stay JSON floats."""
    out: dict[str, Any] = {}
    for feature in model.features or []:
        values = coerce(row[feature.name], feature.dtype, feature.name)
        out[feature.name] = values if isinstance(row[feature.name], list) else values[0]
    return out


def zero_row(model: ModelSpec) -> dict[str, Any]:
    """A row of zeros/empty strings: a harmless probe when the manifest has no smoke case."""
    zeros = {"float": 0.0, "int": 0, "string": ""}
    return {f.name: zeros[f.dtype] for f in model.features or []}


def fill_input(input_proto: Any, model: ModelSpec, rows: Sequence[Row]) -> None:
    """``tensorflow.serving.Input`` (example_list) of ``rows``."""
    input_proto.example_list.SetInParent()
    for row in rows:
        input_proto.example_list.examples.append(build_example(model, row))


def rows_from_rest(doc: Any, model: ModelSpec, where: str) -> list[dict[str, Any]]:
    """TF Serving's REST classify/regress body (``{"examples": [...], "context": {...}}``) as rows."""
    if not isinstance(doc, dict) or not isinstance(doc.get("examples"), list):
        raise ValueError(f'{where}: expected {{"examples": [{{feature: value, ...}}, ...]}}')
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise ValueError(f"{where}: context must be an object")
    rows = []
    for index, example in enumerate(doc["examples"]):
        if not isinstance(example, dict):
            raise ValueError(f"{where}: examples[{index}] is not an object")
        row = {**context, **example}
        check_row(model, row, f"{where}: examples[{index}]")
        rows.append(row)
    if not rows:
        raise ValueError(f"{where}: no examples")
    return rows


class ExampleInputs:
    """The input half the two tf.Example APIs (Classify, Regress) share: a batch is a list of feature rows,
    sent as ``input.example_list`` over gRPC and as ``"examples"`` over REST. Each API names its request."""

    def _new_request(self) -> Any:
        """An empty ClassificationRequest / RegressionRequest (light protos, no TensorFlow)."""
        raise NotImplementedError

    def case_batch(self, model: ModelSpec, case: SmokeCase) -> list[Row]:
        del model
        return [dict(case.features or {})]

    def probe_batch(self, model: ModelSpec) -> list[Row]:
        return [dict(model.smoke[0].features or {})] if model.smoke else [zero_row(model)]

    def warmup_batches(self, model: ModelSpec) -> list[list[Row]]:
        """One batch of every case's row: warmup exercises the batch path, as real traffic does."""
        return [[dict(case.features or {}) for case in model.smoke] or self.probe_batch(model)]

    def batch_from_rest(self, model: ModelSpec, doc: Any, where: str) -> list[Row]:
        return list(rows_from_rest(doc, model, where))

    def grpc_request(self, model: ModelSpec, batch: list[Row]) -> Any:
        request = self._new_request()
        fill_input(request.input, model, batch)
        return request

    def rest_body(self, model: ModelSpec, batch: list[Row]) -> dict[str, Any]:
        return {"examples": [example_json(model, row) for row in batch]}
