"""The record schema as generation uses it (NSS 0.1.16 ``validation.enforce_numeric_range``)."""

from __future__ import annotations

from typing import Any

from .params import ValidationParameters

__all__ = ["generation_schema", "relax_numeric_bounds"]


def generation_schema(schema: dict[str, Any], validation: ValidationParameters) -> dict[str, Any]:
    """The schema records are checked against and structured outputs are built from."""
    return schema if validation.enforce_numeric_range else relax_numeric_bounds(schema)


def relax_numeric_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy without ``minimum``/``maximum`` on pure ``number`` columns (NSS ``relax_numeric_bounds``).

    Why: neither structured-outputs method bounds a float, so on a wide float table the training
    range only rejects records. Integer and enum constraints, which a grammar enforces, stay.
    """
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return dict(schema)
    relaxed = {}
    for name, prop in properties.items():
        if isinstance(prop, dict):
            types = prop.get("type")
            types = types if isinstance(types, list) else [types]
            if "number" in types and "integer" not in types:
                prop = {k: v for k, v in prop.items() if k not in ("minimum", "maximum")}
        relaxed[name] = prop
    return {**schema, "properties": relaxed}
