"""What becomes of an invitation's sealed address (issue 13 item 6): the invitee has no account,
so it is sealed under no subject; accepting moves it under the new member's subject key (their
deletion then erases it with the rest of them), and an invitation that expired unaccepted has
its address erased by the sweep. On SQLite and Postgres, real crypto and SMTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from palisade.auth.subjects import under_subject, user_subject
from palisade.auth.team.invitation_expiry import ExpiredInvitationSweeper
from palisade.auth.team.invitation_records import email_aad, invitations
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.auth.v1 import team_pb2

from .team_support import Team, running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
NEW_PASSWORD = "a long and unguessable passphrase"


@pytest.fixture
async def team(auth_factory, database_url: str):
    async with running_team(auth_factory, database_url) as running:
        yield running


async def _row(team: Team, invitation_id: str):
    async with team.engine.connect() as conn:
        return (
            await conn.execute(select(invitations).where(invitations.c.id == invitation_id))
        ).one()


async def _listed(team: Team, person) -> dict[str, tuple[str, str]]:
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(person.grant)
    )
    return {i.invitation_id: (i.email, i.state) for i in listed.invitations}


def _crypto(team: Team) -> CryptoClient:
    channel = insecure_channel(team.auth.settings.crypto_target)
    return CryptoClient(
        channel=channel, identity=ServiceIdentity(name="auth", signer=team.auth.signer("auth"))
    )


async def test_an_accepted_invitations_address_moves_under_the_members_subject(
    team: Team,
) -> None:
    ada = await team.person("ada@example.com")
    created = await team.invite(ada, "newcomer@example.com")
    pending = await _row(team, created.invitation_id)
    assert not under_subject(bytes(pending.email_ct))  # an invitee: nobody's subject yet
    await team.accept(
        await team.invitation_token("newcomer@example.com"), name="New", password=NEW_PASSWORD
    )
    accepted = await _row(team, created.invitation_id)
    assert under_subject(bytes(accepted.email_ct))
    assert await _listed(team, ada) == {created.invitation_id: ("newcomer@example.com", "accepted")}
    crypto = _crypto(team)
    item = (bytes(accepted.email_ct), email_aad(created.invitation_id))
    assert await crypto.decrypt([item]) == [b"newcomer@example.com"]
    await crypto.shred_subject(user_subject(accepted.accepted_by))  # what deleting them does
    with pytest.raises(SubjectErased):
        await crypto.decrypt([item])
    # The list still answers, without the address.
    assert await _listed(team, ada) == {created.invitation_id: ("", "accepted")}


async def test_an_expired_invitations_address_is_erased_by_the_sweep(team: Team) -> None:
    ada = await team.person("ada@example.com")
    late = await team.invite(ada, "late@example.com")
    revoked = await team.invite(ada, "revoked@example.com")
    await team.stub.RevokeInvitation(
        team_pb2.RevokeInvitationRequest(invitation_id=revoked.invitation_id),
        metadata=team.as_person(ada.grant),
    )
    sweeper = ExpiredInvitationSweeper(engine=team.engine, clock=team.auth.clock, batch_size=1)
    assert await sweeper.run_once() == 0  # nothing has expired yet
    assert await _listed(team, ada) == {
        late.invitation_id: ("late@example.com", "pending"),
        revoked.invitation_id: ("revoked@example.com", "revoked"),
    }
    team.auth.clock.advance(timedelta(days=7, seconds=1))
    assert await sweeper.run_once() == 1  # a batch at a time
    assert await sweeper.run_once() == 1
    assert await sweeper.run_once() == 0
    for invitation_id in (late.invitation_id, revoked.invitation_id):
        row = await _row(team, invitation_id)
        assert (bytes(row.email_ct), row.email_index) == (b"", "")
    assert await _listed(team, ada) == {
        late.invitation_id: ("", "expired"),
        revoked.invitation_id: ("", "revoked"),
    }
