"""Passkey login (SECURITY.md 19-21): options, one-field mutations, challenge rules, counters,
decoys for unknown emails and a race on one challenge; on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import base64

import pytest
import pytest_asyncio

from palisade.auth.errors import AccountDisabled, InvalidEmail
from palisade.auth.passkeys.errors import (
    ChallengeInvalid,
    InvalidPasskeyCredential,
    PasskeyVerificationFailed,
)
from palisade.common.errors import InvalidArgument, Unauthenticated

from .test_passkeys_support import CLIENT, RP_ID, crypto_service, passkey_env, softauthn

EMAIL = "ada@example.com"


# One crypto service per module (its start and stop are slow), a fresh auth database per test.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crypto(tmp_path_factory):
    async with crypto_service(tmp_path_factory.mktemp("crypto")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def env(crypto, database_url):
    async with passkey_env(crypto, database_url) as environment:
        yield environment


@pytest_asyncio.fixture(loop_scope="module")
async def sqlite_env(crypto, sqlite_url):
    """For checks that do not depend on the database (verification, parsing): SQLite only."""
    async with passkey_env(crypto, sqlite_url) as environment:
        yield environment


async def _with_ada(env):
    """A user with one registered passkey, and her authenticator."""
    user_id = await env.add_user(EMAIL)
    authn = softauthn.SoftAuthenticator()
    passkey_id, _ = await env.register(authn, user_id)
    return user_id, passkey_id, authn


@pytest_asyncio.fixture(loop_scope="module")
async def ada(env):
    return await _with_ada(env)


def _decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


async def _reasons(env) -> list[str]:
    return [e["reason"] for e in await env.events("session.login_failed")]


# -- options -----------------------------------------------------------------------------------


async def test_usernameless_options_ask_for_a_discoverable_verified_credential(env) -> None:
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    assert challenge_id.startswith("wch_")
    assert len(challenge_id) >= 40
    assert options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    assert options["rpId"] == RP_ID
    assert options["timeout"] == 300_000
    assert len(_decode(options["challenge"])) >= 32
    other_id, other = await env.passkeys.login_options(email=None, client=CLIENT)
    assert other_id != challenge_id
    assert other["challenge"] != options["challenge"]


async def test_options_with_an_email_list_that_users_credentials(env, ada) -> None:
    _, _, authn = ada
    _, options = await env.passkeys.login_options(email="  ADA@example.com ", client=CLIENT)
    assert softauthn.credential_ids(options) == [authn.credential().credential_id]
    assert options["allowCredentials"][0]["transports"] == ["hybrid", "internal"]
    tokens = await env.login(authn, EMAIL)
    assert (await env.sessions.validate(tokens.access_token)).user_id == ada[0]


async def test_unknown_email_gets_stable_decoys_shaped_like_real_options(env, ada) -> None:
    _, real = await env.passkeys.login_options(email=EMAIL, client=CLIENT)
    _, first = await env.passkeys.login_options(email="nobody@example.com", client=CLIENT)
    _, again = await env.passkeys.login_options(email="nobody@example.com", client=CLIENT)
    _, other = await env.passkeys.login_options(email="someone@example.com", client=CLIENT)
    assert first.keys() == real.keys()
    assert first["allowCredentials"], "an unknown email must not get an empty allow-list"
    assert first["allowCredentials"] == again["allowCredentials"]  # stable per email
    assert set(map(bytes, softauthn.credential_ids(first))).isdisjoint(
        softauthn.credential_ids(other)
    )
    for decoy in first["allowCredentials"]:
        assert decoy.keys() == real["allowCredentials"][0].keys()
        assert 16 <= len(_decode(decoy["id"])) <= 96


async def test_user_without_passkeys_and_disabled_user_get_decoys(env, ada) -> None:
    user_id, _, authn = ada
    await env.add_user("bob@example.com")
    _, bob = await env.passkeys.login_options(email="bob@example.com", client=CLIENT)
    assert bob["allowCredentials"]
    assert authn.credential().credential_id not in softauthn.credential_ids(bob)
    await env.disable(user_id)
    _, disabled = await env.passkeys.login_options(email=EMAIL, client=CLIENT)
    assert authn.credential().credential_id not in softauthn.credential_ids(disabled)


async def test_malformed_email_is_a_400_not_a_decoy(env) -> None:
    with pytest.raises(InvalidEmail):
        await env.passkeys.login_options(email="not-an-email", client=CLIENT)


# -- a successful login ------------------------------------------------------------------------


async def test_usernameless_login_starts_a_session_and_records_use(env, ada) -> None:
    user_id, passkey_id, authn = ada
    tokens = await env.login(authn)
    grant = await env.sessions.validate(tokens.access_token)
    assert grant.user_id == user_id
    assert grant.session_id == tokens.session_id
    [event] = await env.events("session.login_succeeded")
    assert event["details"] == {
        "method": "passkey",
        "passkey_id": passkey_id,
        "session_id": tokens.session_id,
    }
    assert (event["actor"], event["ip"], event["device"]) == (
        f"user:{user_id}",
        CLIENT.ip,
        CLIENT.device,
    )
    row = await env.stored(passkey_id)
    assert row.sign_count == 1
    assert row.last_used_at == env.clock.now()
    info = await env.passkeys.get(user_id, passkey_id)
    assert info.last_used_at == env.clock.now()


# -- one-field mutations (SECURITY.md 20) ------------------------------------------------------

MUTATIONS = {
    "wrong origin": {"origin": "https://evil.example"},
    "wrong rpIdHash": {"rp_id": "evil.example"},
    "UP=0": {"up": False},
    "UV=0": {"uv": False},
    "flipped signature bit": {"flip_signature_bit": True},
    "create-type client data": {"client_data_type": "webauthn.create"},
    "another challenge signed": {"challenge": b"\x01" * 32},
    "cross-origin iframe": {"cross_origin": True},
    "backup eligibility changed": {"be": False, "bs": False},
}


@pytest.mark.parametrize("mutation", MUTATIONS.values(), ids=MUTATIONS.keys())
async def test_a_mutated_assertion_is_refused_and_burns_the_challenge(sqlite_env, mutation) -> None:
    env = sqlite_env
    user_id, passkey_id, authn = await _with_ada(env)
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    with pytest.raises(PasskeyVerificationFailed) as refused:
        await env.passkeys.login(
            challenge_id=challenge_id, credential=authn.get(options, **mutation), client=CLIENT
        )
    assert isinstance(refused.value, Unauthenticated)
    assert refused.value.code == "passkey_verification_failed"
    [event] = await env.events("session.login_failed")
    assert event["subject"] == user_id
    assert event["reason"].startswith("passkey_")
    assert (await env.stored(passkey_id)).sign_count == 0  # nothing recorded
    with pytest.raises(ChallengeInvalid):  # a failed verification used the challenge up
        await env.passkeys.login(
            challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
        )
    await env.login(authn)  # the unmutated ceremony works


async def test_a_failed_verification_burns_the_challenge(env, ada) -> None:
    _, _, authn = ada
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    with pytest.raises(PasskeyVerificationFailed):
        await env.passkeys.login(
            challenge_id=challenge_id,
            credential=authn.get(options, flip_signature_bit=True),
            client=CLIENT,
        )
    with pytest.raises(ChallengeInvalid):
        await env.passkeys.login(
            challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
        )
    assert await _reasons(env) == ["passkey_verification_failed", "passkey_challenge_invalid"]


async def test_replayed_assertion_is_refused(env, ada) -> None:
    _, _, authn = ada
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    await env.passkeys.login(
        challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
    )
    with pytest.raises(ChallengeInvalid):  # same challenge
        await env.passkeys.login(
            challenge_id=challenge_id, credential=authn.replay(), client=CLIENT
        )
    fresh_id, _ = await env.passkeys.login_options(email=None, client=CLIENT)
    with pytest.raises(PasskeyVerificationFailed):  # a new challenge, the old signed one
        await env.passkeys.login(challenge_id=fresh_id, credential=authn.replay(), client=CLIENT)


async def test_challenge_expires_after_five_minutes_on_the_clock(env, ada) -> None:
    _, _, authn = ada
    live_id, live = await env.passkeys.login_options(email=None, client=CLIENT)
    env.clock.advance(299)
    await env.passkeys.login(challenge_id=live_id, credential=authn.get(live), client=CLIENT)
    late_id, late = await env.passkeys.login_options(email=None, client=CLIENT)
    env.clock.advance(300)
    with pytest.raises(ChallengeInvalid) as refused:
        await env.passkeys.login(challenge_id=late_id, credential=authn.get(late), client=CLIENT)
    assert isinstance(refused.value, InvalidArgument)
    assert refused.value.code == "challenge_invalid"
    assert await _reasons(env) == ["passkey_challenge_invalid"]


async def test_a_used_challenge_cannot_be_used_again(env, ada) -> None:
    _, _, authn = ada
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    await env.passkeys.login(
        challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
    )
    with pytest.raises(ChallengeInvalid):  # a fresh, valid assertion over the same challenge
        await env.passkeys.login(
            challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
        )


async def test_unknown_challenge_ids_are_refused(env, ada) -> None:
    _, options = await env.passkeys.login_options(email=None, client=CLIENT)
    for challenge_id in ("", "wch_unknown", "x" * 500, "wch_" + "a" * 200):
        with pytest.raises(ChallengeInvalid):
            await env.passkeys.login(
                challenge_id=challenge_id, credential=ada[2].get(options), client=CLIENT
            )


async def test_a_registration_challenge_is_not_a_login_challenge(env, ada) -> None:
    user_id, _, authn = ada
    registration_id, _ = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    _, options = await env.passkeys.login_options(email=None, client=CLIENT)
    with pytest.raises(ChallengeInvalid):
        await env.passkeys.login(
            challenge_id=registration_id, credential=authn.get(options), client=CLIENT
        )


async def test_another_users_credential_is_refused_on_an_allow_list(env, ada) -> None:
    bob_id = await env.add_user("bob@example.com")
    bob = softauthn.SoftAuthenticator()
    await env.register(bob, bob_id)
    challenge_id, ada_options = await env.passkeys.login_options(email=EMAIL, client=CLIENT)
    assertion = bob.get(ada_options, credential_id=bob.credential().credential_id)
    with pytest.raises(PasskeyVerificationFailed):
        await env.passkeys.login(challenge_id=challenge_id, credential=assertion, client=CLIENT)
    [event] = await env.events("session.login_failed")
    assert (event["subject"], event["reason"]) == (bob_id, "passkey_not_allowed")


async def test_a_real_credential_on_a_decoy_challenge_is_refused(env, ada) -> None:
    challenge_id, options = await env.passkeys.login_options(
        email="nobody@example.com", client=CLIENT
    )
    assertion = ada[2].get(options, credential_id=ada[2].credential().credential_id)
    with pytest.raises(PasskeyVerificationFailed):
        await env.passkeys.login(challenge_id=challenge_id, credential=assertion, client=CLIENT)


async def test_unregistered_credential_is_refused(env, ada) -> None:
    user_id, _, _ = ada
    stranger = softauthn.SoftAuthenticator()
    _, creation = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    stranger.create(creation)  # made on the device, never sent to the server
    with pytest.raises(PasskeyVerificationFailed):
        await env.login(stranger)
    assert await _reasons(env) == ["passkey_unknown_credential"]


async def test_user_handle_must_match_and_is_required_without_an_email(env, ada) -> None:
    _, _, authn = ada
    with pytest.raises(PasskeyVerificationFailed):
        await env.login(authn, user_handle=b"\x07" * 32)
    with pytest.raises(PasskeyVerificationFailed):
        await env.login(authn, user_handle=None)
    assert await _reasons(env) == ["passkey_user_handle_mismatch", "passkey_user_handle_missing"]
    await env.login(authn, EMAIL, user_handle=None)  # with an allow-list it may be absent


async def test_disabled_user_cannot_log_in_with_a_passkey(env, ada) -> None:
    user_id, _, authn = ada
    await env.disable(user_id)
    # The assertion verifies (it proves the credential), then the account's state is said.
    with pytest.raises(AccountDisabled):
        await env.login(authn)
    assert await _reasons(env) == ["passkey_user_disabled"]
    with pytest.raises(PasskeyVerificationFailed):  # a broken assertion learns nothing more
        await env.login(authn, flip_signature_bit=True)


# -- the signature counter (SECURITY.md 21) ----------------------------------------------------


async def test_counter_that_does_not_increase_is_refused_and_audited(env, ada) -> None:
    user_id, passkey_id, authn = ada
    await env.login(authn, sign_count=5)
    for stale in (5, 3, 0):  # equal, lower, reset to zero
        with pytest.raises(PasskeyVerificationFailed):
            await env.login(authn, sign_count=stale)
        assert (await env.stored(passkey_id)).sign_count == 5  # unchanged
    events = await env.events("passkey.sign_count_regressed")
    assert [(e["details"]["stored_count"], e["details"]["presented_count"]) for e in events] == [
        (5, 5),
        (5, 3),
        (5, 0),
    ]
    assert {e["subject"] for e in events} == {user_id}
    assert (await _reasons(env)).count("passkey_sign_count_regressed") == 3
    await env.login(authn, sign_count=6)
    assert (await env.stored(passkey_id)).sign_count == 6


async def test_a_cloned_authenticator_is_caught_by_its_counter(env, ada) -> None:
    _, _, authn = ada
    twin = authn.clone()
    await env.login(authn)  # counter 1
    await env.login(authn)  # counter 2
    with pytest.raises(PasskeyVerificationFailed):
        await env.login(twin)  # counter 1 again
    assert len(await env.events("passkey.sign_count_regressed")) == 1


async def test_constant_zero_counter_is_allowed(env) -> None:
    user_id = await env.add_user(EMAIL)
    synced = softauthn.SoftAuthenticator(counter_step=0)
    passkey_id, _ = await env.register(synced, user_id)
    await env.login(synced)
    await env.login(synced, EMAIL)
    assert (await env.stored(passkey_id)).sign_count == 0
    assert await env.events("passkey.sign_count_regressed") == []


async def test_a_counter_may_start_after_zero(env, ada) -> None:
    _, passkey_id, authn = ada
    await env.login(authn, sign_count=0)
    await env.login(authn, sign_count=9)
    assert (await env.stored(passkey_id)).sign_count == 9


# -- races and malformed input -----------------------------------------------------------------


async def test_twenty_parallel_logins_with_one_challenge_have_one_winner(env, ada) -> None:
    _, _, authn = ada
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    assertion = authn.get(options)
    results = await asyncio.gather(
        *(
            env.passkeys.login(challenge_id=challenge_id, credential=assertion, client=CLIENT)
            for _ in range(20)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ChallengeInvalid) for r in results if r not in winners)
    assert len(await env.events("session.login_succeeded")) == 1


def _assertion_with(authn, options, **response_fields):
    assertion = authn.get(options)
    assertion["response"].update(response_fields)
    return assertion


MALFORMED = {
    "not an object": lambda authn, options: ["public-key"],
    "missing rawId": lambda authn, options: {
        k: v for k, v in authn.get(options).items() if k != "rawId"
    },
    "wrong type": lambda authn, options: {**authn.get(options), "type": "password"},
    "response not an object": lambda authn, options: {**authn.get(options), "response": "x"},
    "bad base64url signature": lambda authn, options: _assertion_with(
        authn, options, signature="!!not base64!!"
    ),
    "number for clientDataJSON": lambda authn, options: _assertion_with(
        authn, options, clientDataJSON=12.0
    ),
    "clientDataJSON not JSON": lambda authn, options: _assertion_with(
        authn, options, clientDataJSON=softauthn.b64url(b"\xff\xfenot json")
    ),
    "truncated authenticatorData": lambda authn, options: _assertion_with(
        authn, options, authenticatorData=softauthn.b64url(b"\x00" * 10)
    ),
    "garbage CBOR extensions": lambda authn, options: _assertion_with(
        authn,
        options,
        authenticatorData=softauthn.b64url(b"\x00" * 32 + b"\x85" + bytes(4) + b"\xff"),
    ),
    "empty signature": lambda authn, options: _assertion_with(authn, options, signature=""),
    "userHandle a number": lambda authn, options: _assertion_with(authn, options, userHandle=5.0),
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_assertion_is_a_400_and_leaves_the_challenge(sqlite_env, make) -> None:
    env = sqlite_env
    _, _, authn = await _with_ada(env)
    challenge_id, options = await env.passkeys.login_options(email=None, client=CLIENT)
    with pytest.raises(InvalidPasskeyCredential) as refused:
        await env.passkeys.login(
            challenge_id=challenge_id, credential=make(authn, options), client=CLIENT
        )
    assert refused.value.code == "invalid_passkey_credential"
    assert await _reasons(env) == ["passkey_malformed"]
    await env.passkeys.login(
        challenge_id=challenge_id, credential=authn.get(options), client=CLIENT
    )
