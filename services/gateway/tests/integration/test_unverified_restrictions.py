"""The gateway refuses a route whose action the person's account may not perform until its
email address is verified: 403 problem+json email_not_verified, and no backend call."""

from __future__ import annotations

import json

from .conftest import OTHER_TOKEN, TOKEN

UNVERIFIED = ("create_api_keys", "enrol_second_factor", "invite_members")


async def test_an_unverified_person_is_refused_enrolment_before_any_backend_call(gateway) -> None:
    gateway.auth.allow(TOKEN, restrictions=UNVERIFIED)
    for method, path in (
        ("POST", "/v1/me/totp"),
        ("POST", "/v1/me/totp/confirm"),
        ("POST", "/v1/me/passkeys/options"),
        ("POST", "/v1/me/passkeys"),
    ):
        status, headers, body = await gateway.call(method, path, token=TOKEN, json={})
        assert status == 403, (path, body)
        assert headers["Content-Type"].startswith("application/problem+json")
        problem = json.loads(body)
        assert problem["code"] == "email_not_verified"
        assert problem["type"] == "urn:palisade:problem:email_not_verified"
        assert headers["Cache-Control"] == "no-store"
    assert gateway.upstream.calls == []
    assert gateway.auth.validations == [TOKEN]  # one validation, then the cached grant


async def test_the_unverified_person_may_still_use_other_routes(gateway) -> None:
    gateway.auth.allow(TOKEN, restrictions=UNVERIFIED)
    status, _, _ = await gateway.call("GET", "/v1/me", token=TOKEN)
    assert status == 200
    status, _, _ = await gateway.call("POST", "/v1/notes", token=TOKEN, json={"text": "hi"})
    assert status == 200
    status, _, _ = await gateway.call("DELETE", "/v1/me/totp", token=TOKEN)
    assert status == 204  # not an enrolment
    assert [method.rsplit("/", 1)[1] for method, _ in gateway.upstream.calls] == [
        "GetMe",
        "Add",
        "DisableTotp",
    ]


async def test_a_verified_person_passes_and_restrictions_are_per_token(gateway) -> None:
    gateway.auth.allow(TOKEN, restrictions=UNVERIFIED, session="ses_old")
    gateway.auth.allow(OTHER_TOKEN, session="ses_new")  # a session after the proof
    status, _, _ = await gateway.call("POST", "/v1/me/totp", token=TOKEN, json={})
    assert status == 403
    status, _, body = await gateway.call("POST", "/v1/me/totp", token=OTHER_TOKEN, json={})
    assert status == 200, body
    assert [method for method, _ in gateway.upstream.calls] == [
        "/palisade.auth.v1.AuthService/StartTotpEnrollment"
    ]


async def test_the_setting_emptied_leaves_only_second_factors_restricted(gateway) -> None:
    gateway.auth.allow(TOKEN, restrictions=("enrol_second_factor",))
    status, _, body = await gateway.call("POST", "/v1/me/passkeys/options", token=TOKEN, json={})
    assert (status, json.loads(body)["code"]) == (403, "email_not_verified")
    status, _, _ = await gateway.call("POST", "/v1/notes", token=TOKEN, json={"text": "hi"})
    assert status == 200
