"""Expiries reach the security log: a key whose `expiresAt` (or rotation overlap) has passed
gets one stored `expired` history entry and one `apikey.expired` security event, however many
recorders run at once (SQLite and Postgres), and none if it was revoked first. ManualClock."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from palisade.apikeys.expiry import ExpiryRecorder
from palisade.apikeys.store import ApiKeyStore
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


def _in(keys, seconds: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(keys.clock.now() + timedelta(seconds=seconds))
    return ts


async def _history(keys, key_id: str) -> list[tuple[str, str, int]]:
    events = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=key_id), metadata=keys.person()
    )
    return [(e.type, e.actor, e.occurred_at.seconds) for e in events.events]


async def test_an_expiry_is_recorded_once_with_its_own_time(keys) -> None:
    created = await keys.create(expires_at=_in(keys, 3600))
    key_id = created.api_key.id
    await keys.server.expiry.record_due()
    assert await keys.security_events("apikey.expired") == []  # not due yet

    keys.clock.advance(3600 + 120)  # recorded late: the event still carries the expiry time
    before = await _history(keys, key_id)  # synthesized from expiresAt until recorded
    await asyncio.gather(*(keys.server.expiry.record_due() for _ in range(10)))
    await keys.server.expiry.record_due()

    events = [json.loads(p) for p in await keys.security_events("apikey.expired")]
    assert len(events) == 1
    assert events[0]["subject"] == f"apikey:{key_id}"
    assert events[0]["actor"] == "system"
    assert events[0]["reason"] == "expired"
    after = await _history(keys, key_id)
    assert after == before
    assert [(kind, actor) for kind, actor, _ in after] == [
        ("expired", "system"),
        ("created", "user:usr_alice"),
    ]
    assert after[0][2] == created.api_key.expires_at.seconds
    assert (await keys.counts())["api_key_events"] == 2  # created + expired, stored


async def test_the_end_of_a_rotation_overlap_is_recorded_as_overlap_ended(keys) -> None:
    old = await keys.create()
    await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=old.api_key.id, overlap_seconds=600), metadata=keys.person()
    )
    keys.clock.advance(600)
    await keys.server.expiry.record_due()
    events = [json.loads(p) for p in await keys.security_events("apikey.expired")]
    assert [(e["subject"], e["reason"]) for e in events] == [
        (f"apikey:{old.api_key.id}", "overlap_ended")
    ]
    assert [kind for kind, _, _ in await _history(keys, old.api_key.id)] == [
        "expired",
        "rotated",
        "created",
    ]


async def test_a_key_revoked_before_its_expiry_never_expires(keys) -> None:
    created = await keys.create(expires_at=_in(keys, 60))
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    keys.clock.advance(120)
    await keys.server.expiry.record_due()
    await keys.server.expiry.record_due()
    assert await keys.security_events("apikey.expired") == []
    assert [kind for kind, _, _ in await _history(keys, created.api_key.id)] == [
        "revoked",
        "created",
    ]


async def test_many_due_keys_are_recorded_across_batches(keys) -> None:
    for _ in range(5):
        await keys.create(expires_at=_in(keys, 60))
    keys.clock.advance(61)
    store = ApiKeyStore(engine=keys.server.engine)
    small = ExpiryRecorder(store=store, clock=keys.clock, interval_seconds=1, batch_size=2)
    assert await small.record_due() == 5
    assert await small.record_due() == 0
    assert len(await keys.security_events("apikey.expired")) == 5
