"""The first proof of an address against sessions being carried on in parallel, on SQLite and
on real Postgres (where row locks, not one writer at a time, decide it).

Someone who signed up with another person's address keeps several sessions and moves each to
another workspace over and over (every switch ends the session and makes its successor, the
way a hijacker would try to outrun the proof) while the address's owner redeems a magic link
or confirms the verification email. Afterwards no session made before the proof, nor any
session made from one by a switch, validates or refreshes; the owner's request never fails
(no deadlock, no 503); the switches that lost say "not signed in", never an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
from auth_email_links import MAGIC_LINK, Mailed, error_code, mailed_auth, token_in
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import team_pb2, team_pb2_grpc

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

HIJACKER_SESSIONS = 4
TRIALS = 6
# Bounds each switching loop (it stops as soon as the proof has answered); never reached.
MAX_SWITCHES = 400
MAGIC_SUBJECT = "Your Palisade sign-in link"
OWNER_IP = "203.0.113.9"
T = TypeVar("T")


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(auth_factory, smtp, database_url):
        yield harness


@dataclass
class _Loop:
    """One hijacker session being switched again and again; every token pair it was given."""

    issued: list[pb.TokenResponse]
    switched: asyncio.Event = field(default_factory=asyncio.Event)
    switches: int = 0


async def _switch_loop(
    mailed: Mailed, team: team_pb2_grpc.TeamServiceStub, loop: _Loop, stop: asyncio.Event
) -> None:
    auth = mailed.auth
    current = loop.issued[0]
    for _ in range(MAX_SWITCHES):
        if stop.is_set():
            return
        grant = await _answer(auth.validate(current.access_token))
        if not isinstance(grant, pb.ValidateAccessTokenResponse):
            # Ended by the proof: the only way this loop may stop before `stop`.
            assert grant == (grpc.StatusCode.UNAUTHENTICATED, "session_revoked"), grant
            return
        switched = await _answer(
            team.SwitchWorkspace(
                team_pb2.SwitchWorkspaceRequest(workspace_id=grant.workspace_id),
                metadata=auth.as_user(grant),
            )
        )
        if not isinstance(switched, pb.TokenResponse):
            # Lost to the proof: not signed in any more; never 503 nor a conflict.
            assert switched == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"), switched
            return
        current = switched
        loop.issued.append(current)
        loop.switches += 1
        loop.switched.set()
    raise AssertionError("the proof never answered while the sessions were switching")


async def _answer(call: Awaitable[T]) -> T | tuple[grpc.StatusCode, str]:
    """The response, or the refusal's status and error code."""
    try:
        return await call
    except grpc.aio.AioRpcError as refused:
        return refused.code(), error_code(refused)


async def _is_dead(mailed: Mailed, tokens: pb.TokenResponse) -> bool:
    validated = await _answer(mailed.auth.validate(tokens.access_token))
    refreshed = await _answer(mailed.auth.refresh(tokens.refresh_token))
    return (
        isinstance(validated, tuple)
        and validated[0] == grpc.StatusCode.UNAUTHENTICATED
        and isinstance(refreshed, tuple)
        and refreshed[0] == grpc.StatusCode.UNAUTHENTICATED
    )


async def _magic_link(mailed: Mailed, email: str) -> str:
    await mailed.auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email=email), metadata=mailed.auth.anonymous(OWNER_IP)
    )
    [mail] = await mailed.mails_to(email, MAGIC_SUBJECT)
    return token_in(mail, MAGIC_LINK)


def _proof(mailed: Mailed, kind: str, token: str) -> Awaitable[object]:
    """The owner's one request proving the address."""
    if kind == "magic_link":
        return mailed.auth.stub.RedeemMagicLink(
            pb.RedeemMagicLinkRequest(token=token), metadata=mailed.auth.anonymous(OWNER_IP)
        )
    return mailed.confirm(token, ip=OWNER_IP)


@pytest.mark.parametrize("proof", ["magic_link", "email_verification"])
async def test_no_session_from_before_the_first_proof_survives_parallel_switches(
    mailed: Mailed, proof: str
) -> None:
    auth = mailed.auth
    channel = auth.signing.channel(auth.servers[0].running.target)
    total_switches = 0
    async with channel as opened:
        team = team_pb2_grpc.TeamServiceStub(opened)
        for trial in range(TRIALS):
            email = f"owner{trial}@example.com"
            signed_up = await mailed.sign_up(email)  # by the hijacker: unverified
            loops = [
                _Loop([await auth.login(email, ip="198.51.100.66")])
                for _ in range(HIJACKER_SESSIONS)
            ]
            if proof == "magic_link":
                token = await _magic_link(mailed, email)
            else:
                token = await mailed.verification_token(email)
            stop = asyncio.Event()
            running = [
                asyncio.create_task(_switch_loop(mailed, team, loop, stop)) for loop in loops
            ]
            # Every session is being carried on before the owner acts (no sleeps: events).
            await asyncio.wait_for(asyncio.gather(*(loop.switched.wait() for loop in loops)), 30)
            try:
                # Once, never again: a failure (503, a conflict) fails the test.
                answer = await _proof(mailed, proof, token)
            finally:
                stop.set()
                await asyncio.gather(*running)
            total_switches += sum(loop.switches for loop in loops)

            for loop in loops:
                for tokens in loop.issued:
                    assert await _is_dead(mailed, tokens), f"trial {trial}: a session survived"
            live = mailed.count(
                "SELECT count(*) FROM sessions WHERE user_id = %s AND revoked_at IS NULL",
                signed_up.user_id,
            )
            if proof == "magic_link":
                assert isinstance(answer, pb.TokenResponse)
                owner = await auth.validate(answer.access_token)
                assert owner.user_id == signed_up.user_id
                assert list(owner.restrictions) == []  # verified: the owner's own session
                assert live == 1
            else:
                assert live == 0
    assert total_switches >= TRIALS * HIJACKER_SESSIONS
