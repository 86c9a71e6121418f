from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.strict_input import JsonInteger


class Line(BaseModel):
    quantity: Annotated[int, Field(ge=1, le=10, strict=True), JsonInteger]


@pytest.mark.parametrize("value", [3, 3.0])
def test_a_json_integer_is_one_with_or_without_a_zero_fraction(value: object) -> None:
    assert Line.model_validate({"quantity": value}).quantity == 3


@pytest.mark.parametrize("value", [True, False, "3", 2.5, float("inf"), float("nan"), 11.0, 0])
def test_booleans_strings_fractions_and_out_of_bounds_are_not(value: object) -> None:
    with pytest.raises(ValidationError):
        Line.model_validate({"quantity": value})


def test_the_bounds_are_json_schema_keywords() -> None:
    assert Line.model_json_schema()["properties"]["quantity"] == {
        "maximum": 10,
        "minimum": 1,
        "title": "Quantity",
        "type": "integer",
    }


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {key for value in node.values() for key in _keys(value)}
    if isinstance(node, list):
        return {key for value in node for key in _keys(value)}
    return set()


def test_no_bound_of_the_app_reaches_its_schema_in_pydantics_own_words(
    settings: Settings,
) -> None:
    # "ge"/"le" are not JSON Schema: clients and fuzzers would ignore the bound.
    schema = create_app(settings).openapi()
    assert {"ge", "le", "gt", "lt"} & _keys(schema["components"]["schemas"]) == set()
