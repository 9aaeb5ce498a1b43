"""``@record`` (``admitd._records``): the records made on every call are frozen to the type
checker, which ``scripts/check`` runs, and compare, hash and ``replace`` by value at run time
as frozen dataclasses do (they are plain slots classes then, made cheaply)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from mypy import api

from admitd._usage import Usage
from support import ROOT


def test_a_record_compares_and_hashes_by_value_and_replace_makes_another() -> None:
    usage = Usage(10, 5)
    assert usage == Usage(10, 5)
    assert hash(usage) == hash(Usage(10, 5))
    assert {usage: 1}[Usage(10, 5)] == 1
    other = dataclasses.replace(usage, output_tokens=6)
    assert other == Usage(10, 6)
    assert usage == Usage(10, 5)
    assert not hasattr(usage, "__dict__")  # slots


def test_assigning_a_field_of_a_record_is_refused_by_the_type_checker(tmp_path: Path) -> None:
    snippet = tmp_path / "change.py"
    snippet.write_text(
        textwrap.dedent(
            """
        from admitd._model import LeaseRecord
        from admitd._requests import AcquireSpec
        from admitd._usage import Usage

        def change(usage: Usage, spec: AcquireSpec, lease: LeaseRecord) -> None:
            usage.input_tokens = 1
            spec.pool = "other"
            lease.lease_id = "x"
        """
        )
    )
    out, err, status = api.run(
        ["--strict", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)]
    )
    assert status == 1, out + err
    refused = [line for line in out.splitlines() if "is read-only" in line]
    assert len(refused) == 3, out
    for field in ("input_tokens", "pool", "lease_id"):
        assert any(f'"{field}"' in line for line in refused), out
