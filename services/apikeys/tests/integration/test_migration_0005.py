"""Migration 0005 on a database with notices in it: those already sent or given up lose their
client (IP and User-Agent), those still waiting keep it for their email; both backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import insert, select

from palisade.apikeys.notices import Notice
from palisade.apikeys.tables import MIGRATIONS_PACKAGE, notice_outbox
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _notice() -> str:
    doc = json.loads(
        Notice("api_key_created", NOW, user_id="usr_1", ip="127.0.0.77", user_agent="A/1").to_json()
    )
    del doc["actor"]  # as rows written before 0005 were
    return json.dumps(doc, sort_keys=True)


async def test_done_notices_lose_their_client(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE, "0004")
        rows = {
            "ntc_sent": {"sent_at": NOW},
            "ntc_failed": {"failed_at": NOW},
            "ntc_waiting": {},
        }
        async with engine.begin() as conn:
            for notice_id, ends in rows.items():
                await conn.execute(
                    insert(notice_outbox).values(
                        id=notice_id,
                        kind="api_key_created",
                        created_at=NOW,
                        next_attempt_at=NOW,
                        attempts=0,
                        payload=_notice(),
                        **ends,
                    )
                )
        await upgrade(engine, MIGRATIONS_PACKAGE)
        async with engine.connect() as conn:
            found = dict(
                (await conn.execute(select(notice_outbox.c.id, notice_outbox.c.payload))).all()
            )
    finally:
        await engine.dispose()
    clients = {
        k: (Notice.from_json(v).ip, Notice.from_json(v).user_agent) for k, v in found.items()
    }
    assert clients == {
        "ntc_sent": ("", ""),
        "ntc_failed": ("", ""),
        "ntc_waiting": ("127.0.0.77", "A/1"),
    }
