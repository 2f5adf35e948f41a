"""Passkeys through the gateway, driven by a software authenticator (SECURITY.md 19-22):
register, list, username-less and allow-list login, and refusals of tampered assertions."""

from __future__ import annotations

import uuid

import pytest
from softauthn import SoftAuthenticator

from .conftest import PASSKEY_ORIGIN, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _registered(suite: Suite) -> tuple[str, str, SoftAuthenticator]:
    email = f"pk-{uuid.uuid4().hex[:10]}@example.com"
    access = (await suite.sign_up_and_log_in(email))["accessToken"]
    status, options, headers = await suite.json_call(
        "POST", "/v1/me/passkeys/options", token=access, json={}
    )
    assert status == 200, options
    assert headers["Cache-Control"] == "no-store"
    public_key = options["publicKey"]
    assert public_key["rp"]["id"] == "localhost"
    assert public_key["authenticatorSelection"]["userVerification"] == "required"
    authenticator = SoftAuthenticator(origin=PASSKEY_ORIGIN)
    credential = authenticator.create(public_key)
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/me/passkeys",
        token=access,
        json={"challengeId": options["challengeId"], "credential": credential, "name": "Laptop"},
    )
    assert status == 201, body
    return email, access, authenticator


async def _login(suite: Suite, authenticator: SoftAuthenticator, email: str | None = None, **knobs):
    status, options, _ = await suite.json_call(
        "POST", "/v1/auth/passkeys/login/options", json={"email": email} if email else {}
    )
    assert status == 200, options
    assertion = authenticator.get(options["publicKey"], **knobs)
    return await suite.json_call(
        "POST",
        "/v1/auth/passkeys/login",
        json={"challengeId": options["challengeId"], "credential": assertion},
    )


async def test_register_list_and_log_in_without_a_username(suite: Suite) -> None:
    email, access, authenticator = await _registered(suite)
    status, listing, _ = await suite.json_call("GET", "/v1/me/passkeys", token=access)
    assert status == 200
    assert [p["name"] for p in listing["passkeys"]] == ["Laptop"]
    _, me, _ = await suite.json_call("GET", "/v1/me", token=access)
    assert me["mfa"]["passkeys"] == 1

    status, tokens, headers = await _login(suite, authenticator)
    assert status == 200, tokens
    assert headers["Cache-Control"] == "no-store"
    _, me, _ = await suite.json_call("GET", "/v1/me", token=tokens["accessToken"])
    assert me["email"] == email

    status, tokens, _ = await _login(suite, authenticator, email)
    assert status == 200, tokens


@pytest.mark.parametrize(
    "knobs",
    [
        {"origin": "https://evil.example"},
        {"rp_id": "evil.example"},
        {"up": False},
        {"uv": False},
        {"flip_signature_bit": True},
    ],
)
async def test_tampered_assertions_are_refused(suite: Suite, knobs: dict) -> None:
    _, _, authenticator = await _registered(suite)
    status, problem, _ = await _login(suite, authenticator, **knobs)
    assert 400 <= status < 500, problem
    assert status != 200


async def test_a_replayed_assertion_is_refused(suite: Suite) -> None:
    _, _, authenticator = await _registered(suite)
    status, options, _ = await suite.json_call("POST", "/v1/auth/passkeys/login/options", json={})
    assertion = authenticator.get(options["publicKey"])
    body = {"challengeId": options["challengeId"], "credential": assertion}
    assert (await suite.json_call("POST", "/v1/auth/passkeys/login", json=body))[0] == 200
    status, _, _ = await suite.json_call("POST", "/v1/auth/passkeys/login", json=body)
    assert 400 <= status < 500
