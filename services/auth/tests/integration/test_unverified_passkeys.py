"""Passkey registration before the address is verified (accounts/restrictions.py): refused by
auth itself at both steps, on SQLite and Postgres (the gateway refuses both routes first)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from palisade.auth.accounts.restrictions import EmailNotVerified

from .test_passkeys_support import CLIENT, crypto_service, passkey_env, softauthn

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crypto(tmp_path_factory):
    async with crypto_service(tmp_path_factory.mktemp("crypto")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def env(crypto, database_url):
    async with passkey_env(crypto, database_url) as environment:
        yield environment


async def test_no_creation_options_for_an_unverified_account(env) -> None:
    user_id = await env.add_user("new@example.com", verified=False)
    with pytest.raises(EmailNotVerified):
        await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    await env.set_verified(user_id, True)
    challenge_id, _ = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    assert challenge_id.startswith("wch_")


async def test_a_ceremony_begun_while_verified_does_not_finish_once_unverified(env) -> None:
    """Defence in depth: the registration step checks again, uses the challenge up and records
    why (the options could have been asked for before this rule existed)."""
    user_id = await env.add_user("pending@example.com")
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    response = softauthn.SoftAuthenticator().create(options)
    await env.set_verified(user_id, False)
    with pytest.raises(EmailNotVerified):
        await env.passkeys.register(
            user_id=user_id, challenge_id=challenge_id, credential=response, name="", client=CLIENT
        )
    failures = await env.events("passkey.registration_failed")
    assert [e["reason"] for e in failures] == ["email_not_verified"]
    assert await env.events("passkey.registered") == []
    await env.set_verified(user_id, True)
    passkey_id, _ = await env.register(softauthn.SoftAuthenticator(), user_id)
    assert passkey_id.startswith("pkey_")
