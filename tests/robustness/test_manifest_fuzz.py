"""Hypothesis-generated manifests over the fields of issue 8 (api, typed features, predict inputs and
outputs, smoke expectations): every one either loads or is a one-line ManifestError naming a field."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.errors import ManifestError
from deployer.manifest import load_manifest

FIELD = re.compile(r"models(\[\d+\])?(\.[A-Za-z_]\w*|\[\d+\])*(:|\.)|models\[0\]")
scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), st.text(max_size=5), st.booleans(),
    st.none(),
)  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=12)
names = st.sampled_from(["image", "x", "probabilities", "bad name", "", "SepalLength", "age"])
dtypes = st.sampled_from(["float32", "float64", "int32", "int64", "string", "bool", "float", "int", "half", 3])
shapes = st.one_of(st.lists(st.integers(-2, 4), max_size=9), values)
tensor = st.fixed_dictionaries({"name": names, "dtype": dtypes, "shape": shapes})
expectation = st.dictionaries(
    st.sampled_from(["argmax", "values", "shape", "atol", "colour"]), st.one_of(values, shapes), max_size=3
)
case = st.dictionaries(
    st.sampled_from(
        ["name", "features", "inputs", "inputs_file", "expect_class", "min_score", "expect_value", "tolerance",
         "expect"]
    ),
    st.one_of(values, st.dictionaries(names, st.one_of(values, expectation), max_size=2)),
    max_size=4,
)
model = st.fixed_dictionaries(
    {"name": st.just("m"), "base_path": st.just("exports/m")},
    optional={
        "api": st.sampled_from(["classify", "regress", "predict", "explain", None]),
        "trainer": st.sampled_from(["models.iris.trainer:train", "nope"]),
        "saved_model": st.just("somewhere"),
        "features": st.lists(st.fixed_dictionaries({"name": names}, optional={"dtype": dtypes}), max_size=3),
        "classes": st.lists(st.text(max_size=2), max_size=3),
        "inputs": st.lists(tensor, max_size=2),
        "outputs": st.lists(tensor, max_size=2),
        "smoke": st.lists(case, max_size=3),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=model)
def test_generated_models_load_or_name_the_field(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "m.yaml"
    text = yaml.safe_dump({"project": "fuzz", "models": [doc]}, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        message = exc.message
        assert "\n" not in message
        assert message.startswith(f"{path}: models"), message
        assert FIELD.search(message.split(": ", 1)[1]), message
        return
    for loaded in manifest.models:
        for smoke in loaded.smoke:
            for number in (smoke.expect_value, smoke.tolerance, smoke.min_score):
                assert number is None or math.isfinite(number)


# Deeper: well-formed predict and regress models whose smoke values and expectations are fuzzed, so the
# per-API checks (instance shapes, dtypes, expectations against declared outputs) are reached.
good_shape = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(lambda dims: [-1, *dims])
predict_model = st.fixed_dictionaries(
    {
        "name": st.just("p"),
        "base_path": st.just("exports/p"),
        "api": st.just("predict"),
        "inputs": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "dtype": dtypes, "shape": good_shape}),
            min_size=1, max_size=2, unique_by=lambda t: t["name"],
        ),
        "outputs": st.just([{"name": "y", "dtype": "float32", "shape": [-1, 3]}]),
        "smoke": st.lists(
            st.fixed_dictionaries(
                {"inputs": st.dictionaries(st.sampled_from(["a", "b"]), values, max_size=2)},
                optional={"expect": st.dictionaries(st.sampled_from(["y", "z"]), expectation, max_size=1)},
            ),
            max_size=2,
        ),
    }
)  # fmt: skip
regress_model = st.fixed_dictionaries(
    {
        "name": st.just("r"),
        "base_path": st.just("exports/r"),
        "api": st.just("regress"),
        "features": st.just([{"name": "age", "dtype": "int"}, {"name": "bmi"}, {"name": "tag", "dtype": "string"}]),
        "smoke": st.lists(
            st.fixed_dictionaries(
                {"features": st.fixed_dictionaries({"age": values, "bmi": values, "tag": values})},
                optional={"expect_value": scalars, "tolerance": scalars},
            ),
            max_size=2,
        ),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(predict_model, regress_model))
def test_generated_smoke_values_load_or_name_the_field(tmp_path: Path, doc: dict[str, Any]) -> None:
    test_generated_models_load_or_name_the_field.hypothesis.inner_test(tmp_path, doc)  # type: ignore[attr-defined]
