"""Visitors end to end: the whole suite (crypto, auth, audit, apikeys, visitors, gateway) on
Postgres and Redis, driven over real HTTP (issue 14; SECURITY.md 29-30, 33-35).

Visitor PII is encrypted by the crypto service before the visitors service stores it: the
database dumps taken here hold no name, email or phone of a test visitor while the API returns
them, and none after erasure.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote, urlencode

import pytest

from .conftest import Suite
from .visitors_support import (
    api_key,
    create_visitor,
    find,
    owner,
    post_message,
    start_chat,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADA = {"name": "Ada Lovelace", "email": "Ada.Lovelace@Example.com", "phone": "+44 20 7946 0958"}


def _q(**params: str) -> str:
    return urlencode(params, quote_via=quote)


def _pii_forms(visitor: dict[str, str]) -> list[bytes]:
    """Every form a visitor's PII could be stored in: as given, normalized, and in the
    encodings a careless store might use."""
    forms = set()
    for value in (visitor["name"], visitor["email"], visitor["phone"]):
        for variant in (value, value.casefold(), value.strip(), value.replace(" ", "")):
            forms.add(variant.encode())
            forms.add(variant.encode("utf-16-le"))
    forms.add(visitor["email"].split("@")[0].casefold().encode())  # the local part alone
    forms.add(b"442079460958")  # the phone's digits
    return sorted(forms)


async def test_crud_with_a_secret_key_and_with_a_session(suite: Suite) -> None:
    token = await owner(suite)
    key = await api_key(suite, token)
    created = await create_visitor(suite, key, **ADA)
    assert created["id"].startswith("vis_")
    assert (created["name"], created["email"], created["phone"]) == (
        "Ada Lovelace",
        "Ada.Lovelace@Example.com",
        "+442079460958",  # E.164
    )
    assert "test" not in created  # a live key's visitor
    assert "createdAt" in created
    for credential in (key, token):
        status, body, headers = await suite.json_call(
            "GET", f"/v1/visitors/{created['id']}", token=credential
        )
        assert (status, body) == (200, created)
        assert headers["Cache-Control"] == "no-store"
    by_person = await create_visitor(suite, token, name="Grace Hopper")
    assert set(by_person) == {"id", "name", "createdAt", "source"}
    # Who created each: a person from the dashboard, a secret key from the API.
    assert (by_person["source"], created["source"]) == ("dashboard", "api")
    assert [v["id"] for v in await find(suite, token, _q(email="ada.lovelace@example.com"))] == [
        created["id"]
    ]
    status, _, body = await suite.call("DELETE", f"/v1/visitors/{created['id']}", token=key)
    assert (status, body) == (204, b"")
    status, erased, _ = await suite.json_call("GET", f"/v1/visitors/{created['id']}", token=token)
    assert status == 200
    assert erased["erased"] is True
    assert not {"name", "email", "phone"} & set(erased)
    # Erasure is idempotent, and an erased visitor is never found again.
    status, _, _ = await suite.call("DELETE", f"/v1/visitors/{created['id']}", token=token)
    assert status == 204
    assert await find(suite, key, _q(email="ada.lovelace@example.com")) == []
    status, _, _ = await suite.call("DELETE", f"/v1/visitors/{by_person['id']}", token=token)
    assert status == 204


async def test_lookup_by_email_is_exact_after_nfkc_and_case_folding(suite: Suite) -> None:
    token = await owner(suite)
    ada = await create_visitor(suite, token, name="Ada", email="Ada.Lovelace@Example.com")
    greek = await create_visitor(suite, token, name="Odysseus", email="ΟΔΥΣΣΕΥΣ@example.gr")
    for variant in (
        "ada.lovelace@example.com",
        "ADA.LOVELACE@EXAMPLE.COM",
        "  Ada.Lovelace@Example.com ",
        "Ａｄａ.Ｌｏｖｅｌａｃｅ@Ｅｘａｍｐｌｅ.ｃｏｍ",  # fullwidth: NFKC makes it ASCII
    ):
        found = await find(suite, token, _q(email=variant))
        assert [v["id"] for v in found] == [ada["id"]], variant
    for variant in ("οδυσσευς@example.gr", "οδυσσευσ@example.gr", "ΟΔΥΣΣΕΥΣ@EXAMPLE.GR"):
        found = await find(suite, token, _q(email=variant))  # final sigma and capital sigma
        assert [v["id"] for v in found] == [greek["id"]], variant
    for other in ("ada.lovelace@example.org", "adalovelace@example.com", "ada@example.com"):
        assert await find(suite, token, _q(email=other)) == [], other


async def test_lookup_by_phone_ignores_formatting(suite: Suite) -> None:
    token = await owner(suite)
    visitor = await create_visitor(suite, token, name="Ada", phone="+49 151 2345 6789")
    assert visitor["phone"] == "+4915123456789"
    for variant in (
        "+4915123456789",
        "+49 151 2345 6789",
        "+49-151-2345-6789",
        "+49 (151) 2345.6789",
        "0049 151 23456789",
    ):
        found = await find(suite, token, _q(phone=variant))
        assert [v["id"] for v in found] == [visitor["id"]], variant
    assert await find(suite, token, _q(phone="+4915123456780")) == []
    # A bare + in a query string is a space (form encoding): that is not this number.
    status, body, _ = await suite.json_call("GET", "/v1/visitors?phone=+4915123456789", token=token)
    assert status in (200, 400), body
    assert status == 400 or body.get("visitors", []) == []


async def test_scopes_are_enforced_on_every_route(suite: Suite) -> None:
    token = await owner(suite)
    visitor = await create_visitor(suite, token, name="Ada", email="ada@example.com")
    writer = await api_key(suite, token, scopes=["visitors:write"])
    reader = await api_key(suite, token, scopes=["visitors:read"])
    chats = await api_key(suite, token, scopes=["chats:read", "chats:write"])
    vid = visitor["id"]
    for credential, method, path, body in (
        (writer, "GET", f"/v1/visitors/{vid}", None),
        (writer, "GET", f"/v1/visitors?{_q(email='ada@example.com')}", None),
        (reader, "POST", "/v1/visitors", {"name": "x"}),
        (reader, "DELETE", f"/v1/visitors/{vid}", None),
        (chats, "GET", f"/v1/visitors/{vid}", None),
        (writer, "POST", "/v1/chats", {"visitorId": vid}),
        (reader, "GET", "/v1/chats/search?q=hello", None),
    ):
        status, answer, _ = await suite.json_call(method, path, token=credential, json=body)
        assert (status, answer["code"]) == (403, "insufficient_scope"), (method, path)
    status, still, _ = await suite.json_call("GET", f"/v1/visitors/{vid}", token=reader)
    assert (status, still["name"]) == (200, "Ada")  # nothing was erased


async def test_test_mode_visitors_are_invisible_to_live_keys_and_people(suite: Suite) -> None:
    token = await owner(suite)
    live = await api_key(suite, token)
    test = await api_key(suite, token, mode="test")
    test_visitor = await create_visitor(suite, test, name="Tess", email="tess@example.com")
    live_visitor = await create_visitor(suite, live, name="Liv", email="liv@example.com")
    assert test_visitor["test"] is True
    assert "test" not in live_visitor
    test_chat = await start_chat(suite, test, test_visitor["id"])
    await post_message(suite, test, test_chat["id"], "sandbox marmalade")
    for credential in (live, token):
        for method, path, body in (
            ("GET", f"/v1/visitors/{test_visitor['id']}", None),
            ("DELETE", f"/v1/visitors/{test_visitor['id']}", None),
            ("POST", "/v1/chats", {"visitorId": test_visitor["id"]}),
            ("GET", f"/v1/chats/{test_chat['id']}/messages", None),
            ("POST", f"/v1/chats/{test_chat['id']}/messages", {"body": "hi"}),
            ("GET", f"/v1/chats/{test_chat['id']}", None),
            ("GET", f"/v1/visitors/{test_visitor['id']}/chats", None),
        ):
            status, answer, _ = await suite.json_call(method, path, token=credential, json=body)
            assert status == 404, (method, path, answer)
        assert await find(suite, credential, _q(email="tess@example.com")) == []
        status, found, _ = await suite.json_call(
            "GET", "/v1/chats/search?q=marmalade", token=credential
        )
        assert (status, found.get("messages", [])) == (200, [])
    # ...and the other way round.
    status, _, _ = await suite.json_call("GET", f"/v1/visitors/{live_visitor['id']}", token=test)
    assert status == 404
    assert await find(suite, test, _q(email="liv@example.com")) == []
    status, same, _ = await suite.json_call("GET", f"/v1/visitors/{test_visitor['id']}", token=test)
    assert (status, same) == (200, test_visitor)
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=marmalade", token=test)
    assert [m["chatId"] for m in found["messages"]] == [test_chat["id"]]


async def test_another_workspaces_ids_answer_404_on_every_route(suite: Suite) -> None:
    a_token = await owner(suite, "a@example.com")
    b_token = await owner(suite, "b@example.com")
    b_key = await api_key(suite, b_token)
    visitor = await create_visitor(suite, a_token, name="Ada", email="ada@example.com")
    chat = await start_chat(suite, a_token, visitor["id"])
    await post_message(suite, a_token, chat["id"], "quince jelly")
    made_up_visitor, made_up_chat = "vis_" + "0" * 32, "cht_" + "0" * 32
    for credential in (b_token, b_key):
        for vid, cid in ((visitor["id"], chat["id"]), (made_up_visitor, made_up_chat)):
            for method, path, body in (
                ("GET", f"/v1/visitors/{vid}", None),
                ("DELETE", f"/v1/visitors/{vid}", None),
                ("POST", "/v1/chats", {"visitorId": vid}),
                ("GET", f"/v1/chats/{cid}/messages", None),
                ("POST", f"/v1/chats/{cid}/messages", {"body": "hello"}),
                ("GET", f"/v1/chats/{cid}", None),
                ("GET", f"/v1/visitors/{vid}/chats", None),
            ):
                status, answer, _ = await suite.json_call(method, path, token=credential, json=body)
                assert status == 404, (method, path, answer)
                assert answer["code"] in ("visitor_not_found", "chat_not_found"), answer
        assert await find(suite, credential, _q(email="ada@example.com")) == []
        status, found, _ = await suite.json_call(
            "GET", "/v1/chats/search?q=quince", token=credential
        )
        assert (status, found.get("messages", [])) == (200, [])
    # Nothing of A's changed.
    status, same, _ = await suite.json_call("GET", f"/v1/visitors/{visitor['id']}", token=a_token)
    assert (status, same) == (200, visitor)
    status, listed, _ = await suite.json_call(
        "GET", f"/v1/chats/{chat['id']}/messages", token=a_token
    )
    assert [m["body"] for m in listed["messages"]] == ["quince jelly"]


BAD_VISITORS = [
    ({}, "pii_required"),  # none of name, email, phone
    ({"name": ""}, "pii_required"),  # proto3: an empty field is one not given
    ({"name": "   "}, "invalid_name"),
    ({"name": "x" * 201}, "invalid_name"),
    ({"name": "Ada\x00"}, "invalid_name"),
    ({"email": "not-an-email"}, "invalid_email"),
    ({"email": "ada@"}, "invalid_email"),
    ({"email": "@example.com"}, "invalid_email"),
    ({"email": "a" * 250 + "@example.com"}, "invalid_email"),
    ({"email": "ada@example.com\nBcc: x@example.com"}, "invalid_email"),
    ({"phone": "call me"}, "invalid_phone"),
    ({"phone": "+1"}, "invalid_phone"),
    ({"phone": "+" + "1" * 20}, "invalid_phone"),
    ({"phone": "12345"}, "invalid_phone"),  # no country code
    ({"name": "Ada", "phone": "+44 20 7946 0958 ext. 1"}, "invalid_phone"),
    ({"name": 5}, "invalid_request"),
    ({"name": None}, "invalid_request"),
    ({"name": "Ada", "test": True}, "invalid_request"),  # not the client's to set
    ({"name": "Ada", "id": "vis_" + "1" * 32}, "invalid_request"),
]


@pytest.mark.parametrize(("body", "codes"), BAD_VISITORS)
async def test_bad_visitors_get_a_stable_400_and_store_nothing(
    suite: Suite, body: dict, codes: str
) -> None:
    token = await owner(suite)
    before = await asyncio.to_thread(suite.visitors_row_count)
    status, answer, _ = await suite.json_call("POST", "/v1/visitors", json=body, token=token)
    assert status == 400, answer
    assert answer["code"] == codes, answer
    assert await asyncio.to_thread(suite.visitors_row_count) == before


async def test_bad_ids_queries_and_bodies_never_reach_a_5xx(suite: Suite) -> None:
    token = await owner(suite)
    cases = [
        ("GET", "/v1/visitors", None),  # neither email nor phone
        ("GET", f"/v1/visitors?{_q(email='a@example.com', phone='+4915123456789')}", None),
        ("GET", f"/v1/visitors?{_q(email='nope')}", None),
        ("GET", f"/v1/visitors?{_q(phone='nope')}", None),
        ("GET", "/v1/visitors?email=a%40example.com&email=b%40example.com", None),
        ("GET", "/v1/visitors/vis_%00", None),
        ("GET", "/v1/visitors/" + "x" * 2000, None),
        ("GET", "/v1/visitors/%F0%9F%A6%8A", None),
        ("GET", "/v1/visitors/..%2F..%2Fetc", None),
        ("DELETE", "/v1/visitors/not-an-id", None),
        ("POST", "/v1/visitors", "not json"),
        ("POST", "/v1/visitors", [1, 2]),
        ("POST", "/v1/chats", {"visitorId": ""}),
        ("POST", "/v1/chats", {"visitorId": "vis_' OR 1=1 --"}),
    ]
    for method, path, body in cases:
        status, _, raw = await suite.call(method, path, token=token, json=body)
        assert 400 <= status < 500, (method, path, status, raw[:200])
    status, _, _ = await suite.call(
        "POST",
        "/v1/visitors",
        token=token,
        data=b'{"name": "\xff\xfe"}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400  # not UTF-8


async def test_erasure_keeps_the_chats_and_no_dump_holds_the_pii(suite: Suite) -> None:
    token = await owner(suite)
    key = await api_key(suite, token)
    visitor = await create_visitor(suite, key, **ADA)
    chat = await start_chat(suite, key, visitor["id"])
    await post_message(suite, key, chat["id"], "Where is my parcel of gooseberries?")
    forms = _pii_forms(ADA)
    dump = await asyncio.to_thread(suite.visitors_database_dump)
    assert visitor["id"].encode() in dump  # the dump is of the right database
    for form in forms:
        assert form not in dump, form
    status, _, _ = await suite.call("DELETE", f"/v1/visitors/{visitor['id']}", token=token)
    assert status == 204
    status, erased, _ = await suite.json_call("GET", f"/v1/visitors/{visitor['id']}", token=key)
    assert (status, erased["erased"]) == (200, True)
    status, listed, _ = await suite.json_call("GET", f"/v1/chats/{chat['id']}/messages", token=key)
    assert status == 200
    assert [m["body"] for m in listed["messages"]] == ["Where is my parcel of gooseberries?"]
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=gooseberry", token=key)
    assert [m["chatId"] for m in found["messages"]] == [chat["id"]]
    # The erased visitor can start no new chat; the existing one shows them erased.
    status, shown, _ = await suite.json_call("GET", f"/v1/chats/{chat['id']}", token=key)
    assert (status, shown["id"], shown["visitorErased"]) == (200, chat["id"], True)
    status, chats, _ = await suite.json_call(
        "GET", f"/v1/visitors/{visitor['id']}/chats", token=token
    )
    assert status == 200
    assert [(c["id"], c["visitorErased"]) for c in chats["chats"]] == [(chat["id"], True)]
    status, answer, _ = await suite.json_call(
        "POST", "/v1/chats", json={"visitorId": visitor["id"]}, token=key
    )
    assert (status, answer["code"]) == (400, "visitor_erased")
    dump = await asyncio.to_thread(suite.visitors_database_dump)
    for form in forms:
        assert form not in dump, form


async def test_crypto_down_refuses_visitor_writes_and_reads_but_not_chats(suite: Suite) -> None:
    token = await owner(suite)
    key = await api_key(suite, token)
    visitor = await create_visitor(suite, key, name="Ada", email="ada@example.com")
    chat = await start_chat(suite, key, visitor["id"])
    before = await asyncio.to_thread(suite.visitors_row_count)
    await suite.stop_crypto()
    status, answer, _ = await suite.json_call(
        "POST", "/v1/visitors", json={"name": "Grace", "email": "grace@example.com"}, token=key
    )
    assert (status, answer["code"]) == (503, "unavailable")
    assert await asyncio.to_thread(suite.visitors_row_count) == before  # nothing stored
    status, answer, _ = await suite.json_call("GET", f"/v1/visitors/{visitor['id']}", token=key)
    assert (status, answer["code"]) == (503, "unavailable")
    # The chat routes need no crypto.
    status, _, _ = await suite.json_call(
        "POST", f"/v1/chats/{chat['id']}/messages", json={"body": "still here"}, token=key
    )
    assert status == 201
    status, other, _ = await suite.json_call(
        "POST", "/v1/chats", json={"visitorId": visitor["id"]}, token=key
    )
    assert status == 201, other
    status, listed, _ = await suite.json_call("GET", f"/v1/chats/{chat['id']}/messages", token=key)
    assert (status, [m["body"] for m in listed["messages"]]) == (200, ["still here"])
    status, _, _ = await suite.json_call("GET", "/v1/chats/search?q=still", token=key)
    assert status == 200


async def test_the_lookup_pages_over_http(suite: Suite) -> None:
    token = await owner(suite)
    key = await api_key(suite, token)
    made = {(await create_visitor(suite, key, email="page@example.com"))["id"] for _ in range(3)}
    status, first, _ = await suite.json_call(
        "GET", f"/v1/visitors?{_q(email='page@example.com', pageSize='2')}", token=key
    )
    assert status == 200
    assert len(first["visitors"]) == 2
    status, rest, _ = await suite.json_call(
        "GET",
        f"/v1/visitors?{_q(email='page@example.com', pageToken=first['nextPageToken'])}",
        token=key,
    )
    assert status == 200
    assert "nextPageToken" not in rest
    assert {v["id"] for v in first["visitors"] + rest["visitors"]} == made
    status, refused, _ = await suite.json_call(
        "GET",
        f"/v1/visitors?{_q(email='other@example.com', pageToken=first['nextPageToken'])}",
        token=key,
    )
    assert (status, refused["code"]) == (400, "invalid_page_token")
