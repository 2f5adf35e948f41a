"""What an account may not do before its email address is verified, over real HTTP.

By default an unverified account may not create API keys or invite members
(PALISADE_AUTH_UNVERIFIED_RESTRICTIONS), and never enrol a second factor (TOTP or a passkey):
403 problem+json `email_not_verified` from the gateway. The address is marked verified by a
direct database update (the verification link is tested where it is built), then the person
logs in again: proving an address ends the sessions created before the proof.
"""

from __future__ import annotations

import asyncio

import pytest
from auth_email_links import token_in

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

KEY_BODY = {"name": "integration", "type": "secret", "scopes": ["team:read"]}
# Each of these is refused before any backend sees it (an empty body is enough to show that).
RESTRICTED = [
    ("POST", "/v1/api-keys", KEY_BODY),
    ("POST", "/v1/me/totp", {}),
    ("POST", "/v1/me/totp/confirm", {"code": "123456"}),
    ("POST", "/v1/me/passkeys/options", {}),
    ("POST", "/v1/me/passkeys", {}),
    ("POST", "/v1/team/invitations", {"email": "friend@example.com", "role": "member"}),
]


async def _refused_unverified(suite: Suite, method: str, path: str, body: dict, token: str):
    status, problem, headers = await suite.json_call(method, path, json=body, token=token)
    assert status == 403, (path, problem)
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["code"] == "email_not_verified", (path, problem)
    assert problem["type"] == "urn:palisade:problem:email_not_verified"


async def test_an_unverified_account_is_refused_keys_second_factors_and_invitations(
    suite: Suite,
) -> None:
    access = (await suite.sign_up_and_log_in("new@example.com", verified=False))["accessToken"]
    for method, path, body in RESTRICTED:
        await _refused_unverified(suite, method, path, body, access)
    # Everything else works as before: the profile, the key list.
    status, me, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert status == 200, me
    status, keys, _ = await suite.json_call("GET", "/v1/api-keys", token=access)
    assert (status, keys.get("apiKeys", [])) == (200, [])
    assert suite.auth_database_dump().count(b"mfa.totp_enrollment_started") == 0


async def test_after_verification_a_new_session_may_do_all_of_it(suite: Suite) -> None:
    email = "later@example.com"
    before = (await suite.sign_up_and_log_in(email, verified=False))["accessToken"]
    await _refused_unverified(suite, "POST", "/v1/api-keys", KEY_BODY, before)
    await suite.verify_email(email)
    access = (await suite.log_in(email))["accessToken"]
    status, created, _ = await suite.json_call("POST", "/v1/api-keys", json=KEY_BODY, token=access)
    assert status == 201, created
    status, enrolment, _ = await suite.json_call("POST", "/v1/me/totp", json={}, token=access)
    assert status == 200, enrolment
    assert enrolment["otpauthUri"].startswith("otpauth://totp/")
    status, options, _ = await suite.json_call(
        "POST", "/v1/me/passkeys/options", json={}, token=access
    )
    assert status == 200, options
    # The key works for its integration whatever its creator's state.
    status, members, _ = await suite.json_call(
        "GET", "/v1/team/members", headers={"Authorization": f"Bearer {created['key']}"}
    )
    assert status == 200, members


async def test_the_emailed_proof_ends_the_restricted_session_and_its_cached_grant(
    suite: Suite,
) -> None:
    """Why the gateway may cache a token's restrictions: the first proof of an address ends
    every session made before it, so no cached "unverified" outlives its session."""
    email = "proof@example.com"
    old = (await suite.sign_up_and_log_in(email, verified=False))["accessToken"]
    await _refused_unverified(suite, "POST", "/v1/api-keys", KEY_BODY, old)  # cached now
    token = token_in(await suite.mail.wait_for(email))  # the sign-up's verification email
    status, _, body = await suite.call(
        "POST", "/v1/auth/email-verification/confirm", json={"token": token}
    )
    assert status == 204, body
    # The revocation feed evicts the old token from the gateway's cache (wall time: it
    # crosses processes); it is refused, not served with its stale restrictions.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await suite.call("GET", "/v1/me", token=old))[0] != 401:
        assert loop.time() < deadline, "the old session outlived the proof"
        await asyncio.sleep(0.01)
    status, problem, _ = await suite.json_call("POST", "/v1/api-keys", json=KEY_BODY, token=old)
    assert status == 401, problem
    access = (await suite.log_in(email))["accessToken"]
    status, created, _ = await suite.json_call("POST", "/v1/api-keys", json=KEY_BODY, token=access)
    assert status == 201, created


@pytest.mark.parametrize("auth_overrides", [{"unverified_restrictions": ()}])
async def test_with_the_setting_emptied_keys_are_allowed_but_second_factors_never(
    suite: Suite,
) -> None:
    access = (await suite.sign_up_and_log_in("open@example.com", verified=False))["accessToken"]
    status, created, _ = await suite.json_call("POST", "/v1/api-keys", json=KEY_BODY, token=access)
    assert status == 201, created
    await _refused_unverified(suite, "POST", "/v1/me/totp", {}, access)
    await _refused_unverified(suite, "POST", "/v1/me/passkeys/options", {}, access)
    # The key an unverified person made is an integration's credential like any other.
    key = created["key"]
    status, members, _ = await suite.json_call(
        "GET", "/v1/team/members", headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 200, members
    status, whoami, _ = await suite.json_call(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 200, whoami


async def test_api_keys_hear_people_only_not_email_not_verified(suite: Suite) -> None:
    access = (await suite.sign_up_and_log_in("owner@example.com"))["accessToken"]
    status, created, _ = await suite.json_call("POST", "/v1/api-keys", json=KEY_BODY, token=access)
    assert status == 201, created
    status, problem, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        json=KEY_BODY,
        headers={"Authorization": f"Bearer {created['key']}"},
    )
    assert (status, problem["code"]) == (403, "people_only")
