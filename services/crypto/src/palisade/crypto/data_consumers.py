"""Which data key versions services' stored envelopes still use, so retiring one they use is
refused (the data-key counterpart of index_consumers).

A service that keeps envelopes and rewraps them reports, with ReportDataVersions, every data
key version its rows still use (visitors does it after each full rewrap walk, at the end of
`palisade-visitors rewrap`, and whenever it first stores a row under a version it had not
reported). `palisade-crypto keys retire --below N` (data keys) then refuses, exit 3 naming the
service, while any reporting service's latest report holds a version below N. Services that
never report (auth, apikeys, audit, webhooks: they do not rewrap their rows yet) are not
guarded: their operators must move their rows first (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.clock import Clock
from palisade.common.db import UTCDateTime

metadata = MetaData()
data_consumers = Table(
    "data_consumers",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("versions_in_use", String(512), nullable=False),
    Column("reported_at", UTCDateTime(), nullable=False),
)


def _encode(versions: Sequence[int]) -> str:
    return ",".join(str(v) for v in sorted(set(versions)))


def _decode(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


class DataConsumers:
    """The crypto database's record of data-version reports (shared by every replica)."""

    def __init__(self, *, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def report(self, service: str, versions: Sequence[int]) -> None:
        """Replaces service's report of the data key versions its rows use."""
        values = {"versions_in_use": _encode(versions), "reported_at": self._clock.now()}
        insert = self._insert(data_consumers).values(service=service, **values)
        upsert = insert.on_conflict_do_update(
            index_elements=[data_consumers.c.service], set_=values
        )
        async with self._engine.begin() as conn:
            await conn.execute(upsert)


@dataclass(frozen=True)
class DataReport:
    service: str
    versions_in_use: list[int]
    reported_at: datetime


async def data_reports(engine: AsyncEngine) -> list[DataReport]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(data_consumers).order_by("service"))).all()
    return [DataReport(r.service, _decode(r.versions_in_use), r.reported_at) for r in rows]


def data_retire_blockers(below: int, reports: Sequence[DataReport]) -> list[str]:
    """Why data versions below `below` may not be retired yet (empty: as far as reports go)."""
    reasons = []
    for report in reports:
        old = [v for v in report.versions_in_use if v < below]
        if old:
            reasons.append(
                f"service {report.service!r} reported rows still under data key version(s) "
                f"{', '.join(f'v{v}' for v in old)} (at {report.reported_at.isoformat()}); "
                "run its rewrap job (e.g. palisade-visitors rewrap) and resolve what it reports"
            )
    return reasons
