from __future__ import annotations

from palisade_api.apikeys.v1 import apikeys_pb2 as pb


async def test_create_and_get(keys_sqlite) -> None:
    created = await keys_sqlite.create()
    assert created.key.startswith("sk_live_")
    got = await keys_sqlite.stub.GetApiKey(
        pb.GetApiKeyRequest(id=created.api_key.id), metadata=keys_sqlite.person()
    )
    assert got.state == "active"
    assert got.rate_limit.requests_per_minute == 600
