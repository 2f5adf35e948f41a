"""GET /v1/whoami over HTTP: answered from the token cache, refused like every bearer route."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from palisade_api.auth.v1 import auth_pb2

from .conftest import OTHER_TOKEN, TOKEN

PROBLEM = "application/problem+json"


async def test_whoami_answers_from_the_cache_without_a_second_auth_call(gateway) -> None:
    gateway.auth.allow(TOKEN, user="usr_ada", session="ses_42")
    answers = [await gateway.call("GET", "/v1/whoami", token=TOKEN) for _ in range(3)]
    for status, headers, body in answers:
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert headers["Cache-Control"] == "no-store"
        assert json.loads(body) == json.loads(answers[0][2])
    me = json.loads(answers[0][2])
    expected_expiry = gateway.auth.valid[TOKEN].expires_at.ToDatetime(tzinfo=UTC)
    assert me == {
        "userId": "usr_ada",
        "workspaceId": "ws_1",
        "role": "owner",
        "sessionId": "ses_42",
        "expiresAt": expected_expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert datetime.fromisoformat(me["expiresAt"]) == expected_expiry  # RFC 3339, UTC
    assert gateway.auth.validations == [TOKEN]  # one validation, then cache hits only
    assert gateway.upstream.calls == []  # and never a forwarded call


async def test_a_revocation_notice_makes_the_next_whoami_ask_auth_again(gateway) -> None:
    gateway.auth.allow(TOKEN, session="ses_gone")
    assert (await gateway.call("GET", "/v1/whoami", token=TOKEN))[0] == 200
    del gateway.auth.valid[TOKEN]  # auth revoked the session...
    await gateway.auth.notices.put(auth_pb2.Revocation(session_ids=["ses_gone"]))
    for _ in range(100):  # ...and announced it: the gateway evicts its cached grant
        if not len(gateway.cache):
            break
        await asyncio.sleep(0.01)
    status, headers, body = await gateway.call("GET", "/v1/whoami", token=TOKEN)
    assert status == 401
    assert headers["Content-Type"].startswith(PROBLEM)
    assert json.loads(body)["code"] == "session_revoked"


async def test_whoami_refusals_are_problems(gateway) -> None:
    gateway.auth.allow(TOKEN)
    cases = [
        ({}, 401, "unauthenticated"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "invalid_token"),
        ({"Authorization": f"Bearer {OTHER_TOKEN}"}, 401, "session_revoked"),  # auth says no
        # Keys may ask too; a made-up one is refused by its checksum, before any lookup.
        ({"Authorization": "Bearer sk_live_" + "A" * 38}, 401, "invalid_api_key"),
    ]
    for headers, status, code in cases:
        got, answer_headers, body = await gateway.call("GET", "/v1/whoami", headers=headers)
        assert (got, json.loads(body)["code"]) == (status, code), headers
        assert answer_headers["Content-Type"].startswith(PROBLEM)
        if status == 401:
            assert answer_headers["WWW-Authenticate"] == "Bearer"
    assert "sk_live_" + "A" * 38 not in gateway.auth.validations  # keys are never sent to auth
    # Authentication comes first; then no input is taken, not even from the query string.
    status, _, body = await gateway.call("GET", "/v1/whoami?token=x")
    assert (status, json.loads(body)["code"]) == (401, "unauthenticated")
    status, _, body = await gateway.call("GET", "/v1/whoami?userId=usr_2", token=TOKEN)
    assert (status, json.loads(body)["code"]) == (400, "invalid_request")
    status, headers, body = await gateway.call("POST", "/v1/whoami", token=TOKEN)
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


async def test_openapi_lists_whoami_with_bearer_security(gateway) -> None:
    from openapi_spec_validator import validate

    status, _, body = await gateway.call("GET", "/openapi.json")
    assert status == 200
    document = json.loads(body)
    validate(document)
    operation = document["paths"]["/v1/whoami"]["get"]
    assert operation["security"] == [{"bearer": []}]
    schema_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"workspaceId"}  # a person's fields, or a key's
    assert {"userId", "role", "sessionId", "expiresAt", "apiKeyId", "scopes"} <= set(
        schema["properties"]
    )
    for status_code in ("400", "401", "403", "503"):
        problem = operation["responses"][status_code]["content"][PROBLEM]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}


async def test_writes_keep_the_cached_token_unless_they_go_to_auth(gateway) -> None:
    """Only auth ends sessions: its writes drop the caller's cached tokens at once (the next
    request asks auth again); a write to another service must not cost a validation each."""
    gateway.auth.allow(TOKEN)
    for _ in range(3):
        status, _, _ = await gateway.call("POST", "/v1/notes", token=TOKEN, json={"text": "hi"})
        assert status == 200
    assert gateway.auth.validations == [TOKEN]
    assert [method for method, _ in gateway.upstream.calls] == ["/gateway_tests.v1.Notes/Add"] * 3
    status, _, _ = await gateway.call("POST", "/v1/me/sessions/revoke-all", token=TOKEN, json={})
    assert status == 204
    assert (await gateway.call("GET", "/v1/whoami", token=TOKEN))[0] == 200
    assert gateway.auth.validations == [TOKEN, TOKEN]  # evicted by the auth write
