"""The pages behind emailed links (magic link, email verification, password reset, invitation,
"not me"): each GET is a constant page that consumes nothing, calls no backend, echoes nothing of
its URL and runs only its own nonce'd script (SECURITY.md 18, 31, 38, 40, 43)."""

from __future__ import annotations

import logging
import re

import pytest

from palisade.common.logs import JsonFormatter

from .conftest import TOKEN

CSP = re.compile(
    r"default-src 'none'; script-src 'nonce-(?P<nonce>[A-Za-z0-9+/=]{24,})'; "
    r"style-src 'nonce-(?P=nonce)'; connect-src 'self'; form-action 'none'; "
    r"frame-ancestors 'none'; base-uri 'none'"
)
# path -> (a link token of the kind its emails carry, the JSON route its script POSTs to,
# words the page must show)
PAGES = {
    "/auth/magic-link": (
        "plsd_ml_",
        "/v1/auth/magic-links/redeem",
        [">Sign in</button>"],
    ),
    "/auth/verify-email": (
        "plsd_ev_",
        "/v1/auth/email-verification/confirm",
        [">Confirm my email address</button>", "Your email address is confirmed"],
    ),
    "/auth/reset-password": (
        "plsd_pr_",
        "/v1/auth/password-reset/confirm",
        [">Change my password</button>", "Your password was changed; sign in again"],
    ),
    "/auth/invitation": (
        "plsd_inv_",
        "/v1/auth/invitations/accept",
        ["<h1>Accept the invitation</h1>", "I already have an account"],
    ),
    "/auth/not-me": (
        "plsd_nm_",
        "/v1/auth/not-me",
        [">This wasn't me: sign out everywhere</button>"],
    ),
}
HOSTILE = (
    "%3C/script%3E%3Cscript%3Ealert(1)%3C/script%3E%22'%3E%3Cimg%20src=x%20onerror=alert(2)%3E"
)


def _link_token(path: str) -> str:
    return PAGES[path][0] + "S" * 43


def _nonce(headers) -> str:  # type: ignore[no-untyped-def]
    policy = CSP.fullmatch(headers["Content-Security-Policy"])
    assert policy is not None, headers["Content-Security-Policy"]
    return policy["nonce"]


@pytest.mark.parametrize("path", PAGES)
async def test_headers(gateway, path) -> None:
    status, headers, body = await gateway.call("GET", f"{path}?token={_link_token(path)}")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Server"] == "palisade"  # no version banner
    assert f'nonce="{_nonce(headers)}"'.encode() in body


@pytest.mark.parametrize("path", PAGES)
async def test_the_page_runs_only_its_own_script(gateway, path) -> None:
    _, headers, body = await gateway.call("GET", f"{path}?token={_link_token(path)}")
    page, nonce = body.decode(), _nonce(headers)
    _, route, words = PAGES[path]
    # Exactly one script and one style, both carrying this response's nonce; nothing inline
    # outside them (no on* handlers, no javascript: URLs), nothing written as markup.
    assert re.findall(r"<script\b[^>]*>", page) == [f'<script nonce="{nonce}">']
    assert re.findall(r"<style\b[^>]*>", page) == [f'<style nonce="{nonce}">']
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert "javascript:" not in page
    assert "innerHTML" not in page
    assert '<meta name="referrer" content="no-referrer">' in page
    # The token comes from the URL, which the script cleans at once, and goes out in a JSON
    # POST to the page's route only: one fetch, to the gateway itself, with no cookies.
    assert 'new URLSearchParams(window.location.search).get("token")' in page
    assert 'window.history.replaceState(null, "", window.location.pathname)' in page
    assert page.count("fetch(") == 1
    assert 'credentials: "omit"' in page
    assert re.findall(r'post\("([^"]+)"', page) == [route]
    for text in words:
        assert text in page


@pytest.mark.parametrize("path", ["/auth/reset-password", "/auth/invitation"])
async def test_forms_submit_by_fetch_only(gateway, path) -> None:
    """A native submission is refused by the CSP (form-action 'none') and would carry nothing
    anyway: inputs have no name, and the form's method is POST, never a GET with a query."""
    _, _, body = await gateway.call("GET", path)
    page = body.decode()
    forms = re.findall(r"<form\b[^>]*>", page)
    assert len(forms) == 1
    assert 'method="post"' in forms[0]
    assert "action=" not in page
    inputs = re.findall(r"<input\b[^>]*>", page)
    assert inputs
    assert not [tag for tag in inputs if re.search(r"\sname=", tag)]
    assert "event.preventDefault()" in page
    passwords = [tag for tag in inputs if 'type="password"' in tag]
    assert len(passwords) >= 2  # typed twice, compared before sending
    assert all('autocomplete="new-password"' in tag for tag in passwords)
    assert "The two passwords differ" in page
    assert "localStorage" not in page  # nothing outlives the tab
    assert "sessionStorage.setItem(key, JSON.stringify(body))" in page  # token responses only


async def test_the_reset_page_asks_for_the_second_factor(gateway) -> None:
    _, _, body = await gateway.call("GET", "/auth/reset-password")
    page = body.decode()
    code = re.findall(r'<input\b[^>]*id="code"[^>]*>', page)
    assert len(code) == 1
    assert 'autocomplete="one-time-code"' in code[0]
    assert "required" not in code[0]  # hidden until asked for: a required one blocks submits
    assert '<div id="second-factor" hidden>' in page
    assert "answer.body.mfaRequired" in page
    assert "body.backupCode = second" in page
    assert "body.code = second" in page
    assert "Use a backup code instead" in page


async def test_the_invitation_page_can_use_the_stored_session(gateway) -> None:
    _, _, body = await gateway.call("GET", "/auth/invitation")
    page = body.decode()
    assert 'var SESSION_KEY = "palisade.session";' in page
    assert "stored(SESSION_KEY)" in page
    assert "session.accessToken" in page
    assert 'headers.Authorization = "Bearer " + bearer' in page
    assert "keep(SESSION_KEY, answer.body)" in page


@pytest.mark.parametrize("path", PAGES)
async def test_the_page_never_reflects_the_url(gateway, path) -> None:
    token = _link_token(path)
    long_token = "A" * 6000  # far past any real token: still nothing the server looks at
    pages = []
    for query in (
        f"token={token}",
        f"token={HOSTILE}&next={HOSTILE}",
        f"token={long_token}",
        f"token={token}&token={HOSTILE}",
        HOSTILE,
        "",
    ):
        status, headers, body = await gateway.call("GET", f"{path}?{query}" if query else path)
        assert status == 200
        pages.append(body.replace(_nonce(headers).encode(), b"NONCE"))
    assert token.encode() not in pages[0]
    assert b"alert(" not in pages[1]
    assert long_token.encode() not in pages[2]
    assert len(set(pages)) == 1  # one constant page, whatever the URL says


@pytest.mark.parametrize("path", PAGES)
async def test_every_answer_has_a_new_nonce(gateway, path) -> None:
    nonces = set()
    for _ in range(5):
        _, headers, body = await gateway.call("GET", f"{path}?token={_link_token(path)}")
        nonce = _nonce(headers)
        assert body.count(f'nonce="{nonce}"'.encode()) == 2
        nonces.add(nonce)
    assert len(nonces) == 5


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PAGES)
async def test_fetching_the_page_calls_no_backend(gateway, path, method) -> None:
    """What a link scanner does: it must consume nothing, so nothing may reach a backend,
    not even a check of a bearer it happens to send."""
    for _ in range(3):
        status, headers, body = await gateway.call(
            method,
            f"{path}?token={_link_token(path)}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 200
        assert "Content-Security-Policy" in headers
        if method == "HEAD":
            assert body == b""
    assert gateway.upstream.calls == []
    assert gateway.auth.validations == []


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", PAGES)
async def test_only_get_and_head_are_served(gateway, path, method) -> None:
    status, headers, body = await gateway.call(
        method, f"{path}?token={_link_token(path)}", json={"token": _link_token(path)}
    )
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert headers["Content-Type"] == "application/problem+json"
    assert b"method_not_allowed" in body
    assert gateway.upstream.calls == []


@pytest.mark.parametrize("path", PAGES)
async def test_no_token_reaches_the_logs(gateway, path, caplog) -> None:
    secret = PAGES[path][0] + "SECRET" + "q" * 37
    caplog.set_level(logging.DEBUG)  # every logger, every level
    await gateway.call("GET", f"{path}?token={secret}")
    await gateway.call("HEAD", f"{path}?token={secret}")
    await gateway.call("POST", f"{path}?token={secret}")
    lines = [JsonFormatter("gateway").format(record) for record in caplog.records]
    assert not [line for line in lines if secret in line]
