"""GET /auth/magic-link: a confirm page that consumes nothing, echoes nothing, runs only its own
script; and no query string ever reaches the gateway's logs (SECURITY.md 18, 31, 38)."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from palisade.common.logs import JsonFormatter

from .conftest import TOKEN

PAGE = "/auth/magic-link"
LINK_TOKEN = "plsd_ml_" + "S" * 43
CSP = re.compile(
    r"default-src 'none'; script-src 'nonce-(?P<nonce>[A-Za-z0-9+/=]{24,})'; "
    r"style-src 'nonce-(?P=nonce)'; connect-src 'self'; form-action 'none'; "
    r"frame-ancestors 'none'; base-uri 'none'"
)


async def test_the_page_and_its_headers(gateway) -> None:
    status, headers, body = await gateway.call("GET", f"{PAGE}?token={LINK_TOKEN}")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = CSP.fullmatch(headers["Content-Security-Policy"])
    assert policy is not None, headers["Content-Security-Policy"]
    page = body.decode()
    nonce = policy["nonce"]
    # Exactly one script and one style, both carrying this response's nonce; nothing inline
    # outside them (no on* handlers, no javascript: URLs), no form to post anywhere.
    assert re.findall(r"<script\b[^>]*>", page) == [f'<script nonce="{nonce}">']
    assert re.findall(r"<style\b[^>]*>", page) == [f'<style nonce="{nonce}">']
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert "javascript:" not in page
    assert "<form" not in page
    assert ">Sign in</button>" in page
    # The script reads the token from the URL and POSTs it as JSON to the redeem route.
    assert "location.search" in page
    assert "var body = {token: token};" in page
    assert 'post("/v1/auth/magic-links/redeem", body)' in page
    assert "body: JSON.stringify(body)" in page
    assert "setItem(key, JSON.stringify(body))" in page
    assert '"palisade.session"' in page
    assert "You're signed in" in page
    assert "body.mfaRequired" in page
    assert "body.title" in page
    assert "innerHTML" not in page  # outcomes are text, never markup


async def test_the_page_never_reflects_the_url(gateway) -> None:
    hostile = "%3C/script%3E%3Cscript%3Ealert(1)%3C/script%3E%22'%3E"
    pages = []
    for query in (f"token={LINK_TOKEN}", f"token={hostile}&next={hostile}", ""):
        status, headers, body = await gateway.call("GET", f"{PAGE}?{query}" if query else PAGE)
        assert status == 200
        nonce = CSP.fullmatch(headers["Content-Security-Policy"])["nonce"]  # type: ignore[index]
        pages.append(body.replace(nonce.encode(), b"NONCE"))
    assert LINK_TOKEN.encode() not in pages[0]
    assert b"alert(1)" not in pages[1]
    assert pages[0] == pages[1] == pages[2]  # one constant page, whatever the URL says


async def test_every_answer_has_a_new_nonce(gateway) -> None:
    nonces = set()
    for _ in range(5):
        _, headers, body = await gateway.call("GET", f"{PAGE}?token={LINK_TOKEN}")
        nonce = CSP.fullmatch(headers["Content-Security-Policy"])["nonce"]  # type: ignore[index]
        assert f'nonce="{nonce}"'.encode() in body
        nonces.add(nonce)
    assert len(nonces) == 5


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_fetching_the_page_calls_no_backend(gateway, method) -> None:
    """What a link scanner does: it must consume nothing, so nothing may reach auth."""
    for _ in range(3):
        status, headers, body = await gateway.call(
            method, f"{PAGE}?token={LINK_TOKEN}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200
        assert "Content-Security-Policy" in headers
        if method == "HEAD":
            assert body == b""
    assert gateway.upstream.calls == []  # no RedeemMagicLink, nor anything else
    assert gateway.auth.validations == []  # not even a token check


async def test_only_get_and_head_are_served(gateway) -> None:
    status, headers, _ = await gateway.call("POST", f"{PAGE}?token={LINK_TOKEN}")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert gateway.upstream.calls == []


async def test_query_strings_never_reach_the_logs(gateway, caplog) -> None:
    secret = "SECRET" + "q" * 20
    caplog.set_level(logging.DEBUG)  # every logger, every level: aiohttp's access log included
    gateway.auth.allow(TOKEN)
    paths = [
        f"{PAGE}?token={secret}",
        f"/v1/whoami?token={secret}",
        f"/v1/me?access_token={secret}",
        f"/v1/me/sessions?id={secret}",
        f"/nowhere?token={secret}",
    ]
    for path in paths:
        await gateway.call("GET", path)
        await gateway.call("GET", path, token=TOKEN)
    await gateway.call("HEAD", paths[0])
    # A request aiohttp's parser refuses (a header too large) is logged by the gateway itself.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET {PAGE}?token={secret} HTTP/1.1\r\nX: {'a' * 9000}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    lines = [JsonFormatter("gateway").format(record) for record in caplog.records]
    assert any("malformed HTTP request" in line for line in lines)  # the capture works
    assert not [line for line in lines if secret in line]
