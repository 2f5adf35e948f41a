"""The COPY row and the INSERT row of an appended event hold the same values per column."""

from __future__ import annotations

from dataclasses import fields

from palisade.audit.model import SealedEvent
from palisade.audit.store import _APPENDED, _copy_row, event_row
from palisade.audit.tables import events


def test_copy_and_insert_rows_agree_column_by_column() -> None:
    event = SealedEvent(*(f"value-{f.name}" for f in fields(SealedEvent)))
    by_name = event_row(event, b"digest")
    assert list(_copy_row(event, b"digest")) == [by_name[c] for c in _APPENDED]
    # Every column but the two the database fills (id, tx_order) is written.
    assert set(_APPENDED) == {c.name for c in events.columns} - {"id", "tx_order"}
