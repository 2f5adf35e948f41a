"""PKCE-bound magic links (issue 12 item 8), on SQLite and Postgres: a link requested with a code
challenge redeems only with its verifier; a wrong or missing verifier consumes nothing (the
rightful client can still use the link) and is throttled; 20 parallel redemptions with the
right verifier give exactly one session; unbound links work as before."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import grpc
import pytest
from auth_email_links import MAGIC_LINK, Mailed, error_code, mailed_auth, token_in
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade.auth.links.magic import code_challenge
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
RACERS = 20
SUBJECT = "Your Palisade sign-in link"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(
        auth_factory, smtp, database_url, magic_link_verifier_failures=3
    ):
        yield harness


def _verifier() -> str:
    return secrets.token_urlsafe(48)  # 64 characters of the unreserved set


async def _link(mailed: Mailed, email: str, challenge: str = "", nth: int = 1) -> str:
    await mailed.auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email=email, code_challenge=challenge),
        metadata=mailed.auth.anonymous(),
    )
    mails = await mailed.mails_to(email, SUBJECT, nth)
    return token_in(mails[nth - 1], MAGIC_LINK)


async def _redeem(
    mailed: Mailed, token: str, verifier: str = "", ip: str = "203.0.113.7"
) -> pb.TokenResponse:
    return await mailed.auth.stub.RedeemMagicLink(
        pb.RedeemMagicLinkRequest(token=token, code_verifier=verifier),
        metadata=mailed.auth.anonymous(ip),
    )


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


def test_the_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


async def test_a_bound_link_needs_its_verifier_and_keeps_working_until_then(
    mailed: Mailed,
) -> None:
    await mailed.sign_up("pkce@example.com")
    verifier = _verifier()
    token = await _link(mailed, "pkce@example.com", code_challenge(verifier))
    [(stored,)] = mailed.rows("SELECT code_challenge FROM magic_links")
    assert stored == code_challenge(verifier)

    missing = await _refused(_redeem(mailed, token))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_code(missing) == "code_verifier_required"
    wrong = await _refused(_redeem(mailed, token, _verifier()))
    assert error_code(wrong) == "code_verifier_mismatch"
    # Nothing was consumed: the rightful client still signs in, once.
    assert mailed.count("SELECT count(*) FROM magic_links WHERE used_at IS NULL") == 1
    tokens = await _redeem(mailed, token, verifier)
    assert tokens.access_token
    again = await _refused(_redeem(mailed, token, verifier))
    assert error_code(again) == "invalid_magic_link"


async def test_twenty_parallel_redemptions_with_the_verifier_one_wins(mailed: Mailed) -> None:
    await mailed.sign_up("race@example.com")
    verifier = _verifier()
    token = await _link(mailed, "race@example.com", code_challenge(verifier))
    results = await asyncio.gather(
        *(_redeem(mailed, token, verifier) for _ in range(RACERS)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, pb.TokenResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == RACERS - 1
    assert {error_code(e) for e in losses} == {"invalid_magic_link"}
    assert mailed.count("SELECT count(*) FROM sessions") == 1


async def test_wrong_verifiers_are_throttled_per_link_and_client(mailed: Mailed) -> None:
    await mailed.sign_up("guess@example.com")
    verifier = _verifier()
    token = await _link(mailed, "guess@example.com", code_challenge(verifier))
    for _ in range(3):  # the setting allows 3 failures per (link, client network)
        assert error_code(await _refused(_redeem(mailed, token, _verifier()))) == (
            "code_verifier_mismatch"
        )
    limited = await _refused(_redeem(mailed, token, verifier))  # even the right one, here
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(limited) == "rate_limited"
    # Another client network (the rightful browser) is not held back by the guesser.
    assert (await _redeem(mailed, token, verifier, ip="198.51.100.20")).access_token


async def test_malformed_challenges_and_verifiers_are_400(mailed: Mailed) -> None:
    await mailed.sign_up("shape@example.com")
    for challenge in ("short", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "+", "é" * 43):
        refused = await _refused(
            mailed.auth.stub.RequestMagicLink(
                pb.RequestMagicLinkRequest(email="shape@example.com", code_challenge=challenge),
                metadata=mailed.auth.anonymous(),
            )
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, challenge
        assert error_code(refused) == "invalid_code_challenge"
    verifier = _verifier()
    token = await _link(mailed, "shape@example.com", code_challenge(verifier))
    for bad in ("x" * 42, "x" * 129, "x" * 42 + "!", "x" * 42 + " "):
        refused = await _refused(_redeem(mailed, token, bad))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_code(refused) == "invalid_code_verifier"
    assert (await _redeem(mailed, token, verifier)).access_token  # nothing was spent


async def test_unbound_links_work_as_before_with_or_without_a_verifier(mailed: Mailed) -> None:
    await mailed.sign_up("plain@example.com")
    first = await _link(mailed, "plain@example.com")
    assert (await _redeem(mailed, first)).access_token
    second = await _link(mailed, "plain@example.com", nth=2)
    assert (await _redeem(mailed, second, _verifier())).access_token  # ignored when unbound
    [(challenge,)] = mailed.rows("SELECT DISTINCT code_challenge FROM magic_links")
    assert challenge is None
