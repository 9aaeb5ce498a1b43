"""``@record``: the decorator of the small immutable records made on every call (a ticket, a
lease, a settlement, a usage): frozen to the type checker, plain slots classes at run time.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (its own
``__setattr__`` refuses), many times a plain slot store: the ~70 fields of the records made
for an Acquire+Release pair were ~8% of a memory-backed server's instructions per pair
(callgrind: 1.11M -> 1.02M). ``mypy --strict`` (``scripts/check``) refuses any assignment to
their fields, as it does for ``@dataclass(frozen=True)``; they hash by value and compare as
frozen ones do.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[T]) -> type[T]:
    return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)
