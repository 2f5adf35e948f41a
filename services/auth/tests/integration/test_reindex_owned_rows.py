"""`palisade-auth reindex` beyond users and backup codes (issue 12): the other rows with a blind
index of an email address, on SQLite and Postgres, with a real crypto server and its CLI.

- Open team invitations (invitations.email_index): a re-invite finds the earlier invitation of
  the address by it (InvitationRecords.pending_for), so one left under a retired version would
  stay pending beside the new one.
- Pending email changes (account_tokens.new_email_index): confirming one checks the stored token
  against the address's tokens under the usable versions, so one left under a retired version
  could never be confirmed.

Both are moved to the primary version (found afterwards by the new version alone, once the old
one is retired), and both count in the versions reported to crypto (ReportIndexVersions), so the
old version cannot be retired while such a row still uses it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from palisade.auth.accounts.email_change import NEW_EMAIL_FIELD
from palisade.auth.accounts.reindex import token_version
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT
from palisade.auth.accounts.verification import pii_aad
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, EMAIL_CHANGE, account_tokens
from palisade.auth.team.invitation_records import (
    INVITATION,
    INVITATION_TABLE,
    InvitationRecords,
    email_aad,
    invitations,
)
from palisade.common.crypto_client import Normalization

from .test_reindex import Env, env_fixture  # noqa: F401 (the `env` fixture)

INVITED = "invitee@example.com"
NEW_ADDRESS = "ada.new@example.com"


async def _tokens(env: Env, email: str) -> list[str]:
    """The address's index tokens under every usable version, primary first (as lookups ask)."""
    return await env.crypto.blind_index(
        email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
    )


async def _workspace_of(env: Env, user_id: str) -> str:
    workspace_id = f"ws_{uuid.uuid4().hex}"
    async with env.store.transaction() as tx:
        await tx.insert_workspace(workspace_id=workspace_id, name="Team", now=env.clock.now())
        await tx.insert_membership(
            workspace_id=workspace_id, user_id=user_id, role="owner", now=env.clock.now()
        )
    return workspace_id


async def _invite(env: Env, workspace_id: str, sender: str, email: str) -> str:
    """An invitation stored as CreateInvitation stores one (index under today's primary)."""
    invitation_id = f"inv_{uuid.uuid4().hex}"
    [index] = await env.crypto.blind_index(email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
    [email_ct] = await env.crypto.encrypt([(email.encode(), email_aad(invitation_id))])
    async with env.store.transaction() as tx:
        await SingleUseTokens(table=INVITATION_TABLE, purpose=INVITATION, clock=env.clock).issue(
            tx,
            user_id=invitation_id,
            lifetime=timedelta(days=7),
            retire_siblings=False,
            values={
                "workspace_id": workspace_id,
                "email_index": index,
                "email_ct": email_ct,
                "role": "member",
                "created_by": sender,
            },
        )
    return invitation_id


async def _request_email_change(env: Env, user_id: str, email: str) -> bytes:
    """A pending email change stored as RequestEmailChange stores one; its token hash."""
    [index] = await env.crypto.blind_index(email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT)
    [email_ct] = await env.crypto.encrypt([(email.encode(), pii_aad(user_id, NEW_EMAIL_FIELD))])
    core = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_CHANGE, clock=env.clock)
    async with env.store.transaction() as tx:
        issued = await core.issue(
            tx,
            user_id=user_id,
            lifetime=timedelta(days=1),
            retire_siblings=False,
            values={"new_email_ct": email_ct, "new_email_index": index},
        )
    return core.check(issued.token)


async def _invitation_index(env: Env, invitation_id: str) -> str:
    async with env.store.transaction() as tx:
        return str(
            (
                await tx.conn.execute(
                    select(invitations.c.email_index).where(invitations.c.id == invitation_id)
                )
            ).scalar_one()
        )


async def _change_index(env: Env, token_hash: bytes) -> str:
    async with env.store.transaction() as tx:
        return str(
            (
                await tx.conn.execute(
                    select(account_tokens.c.new_email_index).where(
                        account_tokens.c.token_hash == token_hash
                    )
                )
            ).scalar_one()
        )


async def _close(env: Env, invitation_id: str) -> None:
    async with env.store.transaction() as tx:
        assert await InvitationRecords(tx).close([invitation_id], env.clock.now())


async def test_invitations_and_email_changes_move_and_are_found_by_the_new_version(
    env: Env,
) -> None:
    ada = await env.add_user("ada@example.com")
    workspace = await _workspace_of(env, ada)
    invitation = await _invite(env, workspace, ada, INVITED)
    closed = await _invite(env, workspace, ada, "closed@example.com")
    await _close(env, closed)
    change = await _request_email_change(env, ada, NEW_ADDRESS)
    assert token_version(await _invitation_index(env, invitation)) == 1
    assert token_version(await _change_index(env, change)) == 1
    await env.rotate_index()
    before = await env.reindexer().versions_in_use()
    assert before["invitations.email_index"] == [1]
    assert before["account_tokens.new_email_index"] == [1]

    result = await env.reindexer(batch_size=1).run()

    assert (result.invitations.scanned, result.invitations.updated) == (1, 1)  # not the closed
    assert (result.email_changes.scanned, result.email_changes.updated) == (1, 1)
    assert result.versions_in_use == {
        "users.email_index": [2],
        "invitations.email_index": [2],
        "account_tokens.new_email_index": [2],
    }
    assert result.reported
    assert token_version(await _invitation_index(env, invitation)) == 2
    assert token_version(await _change_index(env, change)) == 2
    # A closed invitation is never looked up by its index: left as it was, and not counted.
    assert token_version(await _invitation_index(env, closed)) == 1
    printed = "\n".join(result.lines())
    assert "invitations updated: 1" in printed
    assert "email changes updated: 1" in printed

    again = await env.reindexer().run()  # idempotent
    assert (again.invitations.updated, again.email_changes.updated) == (0, 0)

    # Version 1 goes; what a re-invite and a confirmation look for is found by version 2 alone.
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 0
    tokens = await _tokens(env, INVITED)
    assert [token_version(t) for t in tokens] == [2]
    async with env.store.transaction() as tx:
        pending = await InvitationRecords(tx).pending_for(workspace, tokens, env.clock.now())
    assert pending == [invitation]
    assert await _change_index(env, change) in await _tokens(env, NEW_ADDRESS)


async def test_an_invitation_left_on_the_old_version_is_reported_and_blocks_retire(
    env: Env, capsys
) -> None:
    ada = await env.add_user("ada@example.com")
    workspace = await _workspace_of(env, ada)
    await _invite(env, workspace, ada, INVITED)
    await env.rotate_index()
    # Everything of Ada's is moved, but for her invitation (put back under version 1 after the
    # run, as if the run had stopped before it): the report must still say version 1.
    await env.reindexer().run()
    async with env.store.transaction() as tx:
        await tx.conn.execute(update(invitations).values(email_index="bi1.1.stored-before"))
    result = await env.reindexer().run(after=ada)  # resumed past Ada: her rows are not walked

    assert result.invitations.scanned == 0
    assert result.versions_in_use == {"users.email_index": [2], "invitations.email_index": [1]}
    assert result.all_versions() == [1, 2]
    assert result.reported
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 3
    assert "v1" in capsys.readouterr().err

    await env.reindexer().run()  # a full run moves it (its ciphertext is what is indexed)
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 0


async def test_an_invitation_closed_during_the_run_is_not_rewritten(env: Env, monkeypatch) -> None:
    ada = await env.add_user("ada@example.com")
    workspace = await _workspace_of(env, ada)
    invitation = await _invite(env, workspace, ada, INVITED)
    await env.rotate_index()
    original = env.crypto.blind_index_many

    async def closed_meanwhile(values, normalization, context, **kwargs):
        tokens = await original(values, normalization, context, **kwargs)
        if values == [INVITED] and normalization == Normalization.EMAIL:
            await _close(env, invitation)  # revoked (or accepted) right now
        return tokens

    monkeypatch.setattr(env.crypto, "blind_index_many", closed_meanwhile)
    result = await env.reindexer().run()
    assert result.invitations.updated == 0
    assert result.invitations.changed_meanwhile == 1
    assert token_version(await _invitation_index(env, invitation)) == 1  # untouched
    assert "invitations.email_index" not in result.versions_in_use  # closed: no longer counts
