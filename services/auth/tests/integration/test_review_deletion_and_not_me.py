"""Review (issue 13): what account deletion leaves in apikeys, and what "this wasn't me" forgets.

1. A deleted account's IP and raw User-Agent stay in apikeys' database in plaintext: the
   api_key_created notice payload (notice_outbox, kept after sending too), the key's history
   (api_key_events.ip/device) and api_keys.last_used_ip. The deletion only revokes the keys.
2. Confirming a "this wasn't me" link ends every session but leaves the reported network in
   known_networks, so the stranger signing in again from that network raises no alert.

Real crypto, auth and apikeys gRPC servers on SQLite and Postgres (deletion_support.py).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import text

from palisade.apikeys.tables import metadata as apikeys_metadata
from palisade.auth.accounts.key_revocations import ACCOUNT_DELETED
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, NOT_ME
from palisade_api.apikeys.v1 import apikeys_pb2 as kpb
from palisade_api.auth.v1 import account_pb2, account_pb2_grpc

from .deletion_support import Person, World, start_world
from .test_key_revocation_support import database_factory, eventually

KEY_OWNER_IP = "198.51.100.201"
KEY_OWNER_AGENT = "ReviewAgent/9.9 (review-unique-agent-4f1c)"
STRANGER_IP = "192.0.2.90"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    return database_factory(request, tmp_path)


async def _apikeys_dump(world: World) -> str:
    """Every row of every apikeys table, as text (what a database dump would show)."""
    assert world.apikeys is not None
    lines: list[str] = []
    async with world.apikeys.engine.connect() as conn:
        for table in apikeys_metadata.sorted_tables:
            for row in await conn.execute(text(f"SELECT * FROM {table.name}")):
                lines.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(lines)


async def test_deletion_leaves_no_ip_or_user_agent_in_apikeys(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend) as world:
        ada = await world.person()
        assert world.apikeys_stub is not None
        created = await world.apikeys_stub.CreateApiKey(
            kpb.CreateApiKeyRequest(name="Server key", type="secret", scopes=["chats:read"]),
            metadata=world.apikeys_signing.marker(
                "gateway",
                principal=f"user:{ada.user_id}",
                workspace_id=ada.workspace_id,
                session_id=ada.grant.session_id,
                client_ip=KEY_OWNER_IP,
                user_agent=KEY_OWNER_AGENT,
                role="owner",
                authenticated_at=int(world.clock.timestamp() - 5),
            ),
        )
        before = await _apikeys_dump(world)
        assert KEY_OWNER_IP in before  # the premise: apikeys recorded the creator's client

        await world.delete(ada)

        async def revoked() -> bool:
            return await world.key_revoked(created.api_key.id) == ACCOUNT_DELETED

        def client_left(dump: str) -> set[str]:
            return {
                f"{table}: {value}"
                for line in dump.splitlines()
                for value in (KEY_OWNER_IP, KEY_OWNER_AGENT)
                if value in line
                for table in [line.partition(":")[0]]
            }

        async def client_gone() -> bool:
            return not client_left(await _apikeys_dump(world))

        await eventually(revoked)
        # The revocation batches commit first; the erasure follows in its own transaction
        # before RevokeKeysOfUser answers auth. Wait (bounded) for that, then nothing is left.
        with contextlib.suppress(AssertionError):
            await eventually(client_gone)
        left = client_left(await _apikeys_dump(world))
        assert left == set(), "the deleted person's client is left in apikeys"


async def _new_ip_events(world: World, user_id: str) -> list[str]:
    return [e["ip"] for e in await world.events("session.new_ip") if e["subject"] == user_id]


async def _not_me_token(world: World, person: Person) -> str:
    """A "this wasn't me" link as the alert relay issues it."""
    tokens = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=NOT_ME, clock=world.clock)
    token = tokens.new_token()
    async with world.store().transaction() as tx:
        await tokens.issue(
            tx,
            token=token,
            user_id=person.user_id,
            lifetime=timedelta(days=7),
            retire_siblings=False,
        )
    return token


async def test_a_reported_network_alerts_again(tmp_path, backend) -> None:
    async with start_world(tmp_path, backend, with_apikeys=False) as world:
        ada = await world.person()  # signed up and signed in from 203.0.113.7
        await world.login(ada.email, ip=STRANGER_IP)  # the stranger, who has the password
        assert await _new_ip_events(world, ada.user_id) == [STRANGER_IP]

        accounts = account_pb2_grpc.AccountServiceStub(world.channel)
        await accounts.ConfirmNotMe(
            account_pb2.ConfirmNotMeRequest(token=await _not_me_token(world, ada)),
            metadata=world.anonymous(),
        )

        # The owner has not reset the password yet; the stranger signs in again from there.
        await world.login(ada.email, ip=STRANGER_IP)
        assert await _new_ip_events(world, ada.user_id) == [STRANGER_IP, STRANGER_IP], (
            "a sign-in from the network the owner reported raised no alert"
        )
