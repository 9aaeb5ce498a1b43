"""The strict base every settings model shares (``model.py``, ``access.py``, ``envoy.py``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are errors, values are not coerced (YAML already knows numbers from
    strings), settings are immutable, and the docstring under each field is its description."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )
