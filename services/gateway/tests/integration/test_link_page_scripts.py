"""What the link pages' scripts do, run in Node.js against a small fake browser
(link_page_dom.js): the page as the gateway served it, answers from the JSON routes scripted
per test. Shows that each page POSTs what the API expects and nothing before a person acts,
takes the token out of the address bar first, keeps passwords out of the URL and storage,
and says what each answer means (SECURITY.md 18, 43)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

DOM = Path(__file__).with_name("link_page_dom.js")
PASSWORD = "correct horse battery staple"
TOKENS = {"accessToken": "plsd_at_new", "refreshToken": "plsd_rt_new", "expiresIn": 3600}
OLD_SESSION = json.dumps({"accessToken": "plsd_at_old", "refreshToken": "plsd_rt_old"})
NO_BODY = {"status": 204, "body": None}
DEAD_LINK = {
    "status": 401,
    "body": {"title": "Unauthorized", "detail": "the link is invalid or has expired"},
}
BUSY = {"status": 503, "body": {"title": "Service Unavailable", "detail": "Service Unavailable"}}
# path -> (the prefix of its link tokens, the control a person presses)
PAGES = {
    "/auth/magic-link": ("plsd_ml_", "sign-in"),
    "/auth/verify-email": ("plsd_ev_", "confirm"),
    "/auth/reset-password": ("plsd_pr_", "change"),
    "/auth/invitation": ("plsd_inv_", "join"),
    "/auth/not-me": ("plsd_nm_", "not-me"),
}
ROUTES = {
    "/auth/magic-link": "/v1/auth/magic-links/redeem",
    "/auth/verify-email": "/v1/auth/email-verification/confirm",
    "/auth/reset-password": "/v1/auth/password-reset/confirm",
    "/auth/invitation": "/v1/auth/invitations/accept",
    "/auth/not-me": "/v1/auth/not-me",
}


def _token(path: str) -> str:
    return PAGES[path][0] + "K" * 43


def _fill_form(path: str) -> list[dict[str, str]]:
    """What a person types before pressing the page's control."""
    if path == "/auth/reset-password":
        return [
            {"fill": "new-password", "value": PASSWORD},
            {"fill": "repeat-password", "value": PASSWORD},
        ]
    if path == "/auth/invitation":
        return [
            {"fill": "person-name", "value": " Grace "},
            {"fill": "new-password", "value": PASSWORD},
            {"fill": "repeat-password", "value": PASSWORD},
        ]
    return []


def _press(path: str) -> list[dict[str, str]]:
    return [*_fill_form(path), {"click": PAGES[path][1]}]


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    if found is None:
        if os.environ.get("PALISADE_REQUIRE_BACKENDS") == "1":
            pytest.fail("Node.js is not installed (PALISADE_REQUIRE_BACKENDS=1)", pytrace=False)
        pytest.skip("Node.js is not installed")
    return found


class Browser:
    def __init__(self, gateway: Any, node: str) -> None:
        self._gateway = gateway
        self._node = node

    async def run(
        self,
        url: str,
        *,
        answers: list[Any],
        steps: list[dict[str, str]],
        storage: dict[str, str] | None = None,
        local_storage: dict[str, str] | None = None,
        storage_refuses: bool = False,
    ) -> dict[str, Any]:
        status, _, body = await self._gateway.call("GET", url)
        assert status == 200
        scenario = {
            "html": body.decode(),
            "url": url,
            "answers": answers,
            "steps": steps,
            "storage": storage or {},
            "localStorage": local_storage or {},
            "storageRefuses": storage_refuses,
        }
        process = await asyncio.create_subprocess_exec(
            self._node,
            str(DOM),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(json.dumps(scenario).encode()), 30)
        assert process.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        assert result["unanswered"] == 0  # the page made every request the test expected
        return result


@pytest.fixture
def browser(gateway, node) -> Browser:  # type: ignore[no-untyped-def]
    return Browser(gateway, node)


def _status(result: dict[str, Any]) -> str:
    return str(result["elements"]["status"]["text"])


def _sent(result: dict[str, Any], index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result["fetches"][index]["options"]["body"])
    return body


# -- every page -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
async def test_nothing_is_sent_until_a_person_acts(browser, path) -> None:
    result = await browser.run(f"{path}?token={_token(path)}", answers=[], steps=_fill_form(path))
    assert result["fetches"] == []
    # The token left the address bar and the history entry as the page loaded.
    assert result["history"] == [path]
    assert result["location"] == path
    assert not result["elements"][PAGES[path][1]]["inactive"]


@pytest.mark.parametrize("path", PAGES)
async def test_the_token_goes_to_the_route_in_a_json_post(browser, path) -> None:
    result = await browser.run(f"{path}?token={_token(path)}", answers=[BUSY], steps=_press(path))
    [sent] = result["fetches"]
    assert sent["path"] == ROUTES[path]
    assert sent["at"] == ""  # the address bar was clean before anything left the page
    options = sent["options"]
    assert options["method"] == "POST"
    assert options["headers"]["Content-Type"] == "application/json"
    assert (options["credentials"], options["cache"]) == ("omit", "no-store")
    assert options["referrerPolicy"] == "no-referrer"
    assert _sent(result)["token"] == _token(path)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize(
    "query",
    [
        "",
        "token=",
        "other=1",
        "token=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22'",
        "token=" + "A" * 513,
    ],
)
async def test_a_missing_or_mangled_token_sends_nothing(browser, path, query) -> None:
    result = await browser.run(
        f"{path}?{query}", answers=[], steps=[*_fill_form(path), {"click": PAGES[path][1]}]
    )
    assert result["fetches"] == []
    assert result["refused"] == [PAGES[path][1]]  # the control cannot be pressed
    assert "incomplete" in _status(result)
    assert result["location"] == path


@pytest.mark.parametrize("path", PAGES)
async def test_a_network_failure_lets_the_person_try_again(browser, path) -> None:
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=["network", BUSY],
        steps=[*_press(path), {"click": PAGES[path][1]}],
    )
    assert len(result["fetches"]) == 2
    assert _sent(result, 1)["token"] == _token(path)
    assert not result["elements"][PAGES[path][1]]["inactive"]  # busy: may be pressed again
    assert _status(result) == "Service Unavailable"  # a detail equal to the title is not repeated


@pytest.mark.parametrize("path", PAGES)
async def test_a_refusal_is_shown_in_the_problems_words(browser, path) -> None:
    result = await browser.run(
        f"{path}?token={_token(path)}", answers=[DEAD_LINK], steps=_press(path)
    )
    assert _status(result) == "Unauthorized: the link is invalid or has expired"
    assert result["storage"] == {}


# -- one page at a time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "answer", "words", "again"),
    [
        ("/auth/magic-link", DEAD_LINK, "Unauthorized", False),
        ("/auth/verify-email", DEAD_LINK, "Unauthorized", False),
        ("/auth/not-me", DEAD_LINK, "Unauthorized", False),
        ("/auth/verify-email", {"status": 429, "body": {"title": "Too Many Requests"}}, "", True),
        ("/auth/not-me", BUSY, "Service Unavailable", True),
        ("/auth/verify-email", {"status": 500, "body": "<html>"}, "could not be confirmed", True),
    ],
)
async def test_a_button_stays_pressed_after_a_final_answer(
    browser, path, answer, words, again
) -> None:
    result = await browser.run(f"{path}?token={_token(path)}", answers=[answer], steps=_press(path))
    assert words in _status(result)
    assert result["elements"][PAGES[path][1]]["inactive"] is not again


async def test_magic_link_keeps_the_session(browser) -> None:
    path = "/auth/magic-link"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=_press(path),
    )
    assert _status(result) == "You're signed in."
    assert json.loads(result["storage"]["palisade.session"]) == TOKENS
    assert result["elements"]["sign-in"]["inactive"]  # used: not pressed twice


VERIFIER_KEY = "palisade.magicLink.codeVerifier"
VERIFIER = "v" * 43


async def test_magic_link_sends_the_verifier_an_app_of_this_origin_kept(browser) -> None:
    path = "/auth/magic-link"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=_press(path),
        local_storage={VERIFIER_KEY: VERIFIER},
    )
    [sent] = result["fetches"]
    assert json.loads(sent["options"]["body"]) == {"token": _token(path), "codeVerifier": VERIFIER}
    assert VERIFIER_KEY not in result["localStorage"]  # used up with the link


async def test_magic_link_keeps_the_verifier_for_a_retry_after_a_busy_answer(browser) -> None:
    path = "/auth/magic-link"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[BUSY],
        steps=_press(path),
        local_storage={VERIFIER_KEY: VERIFIER},
    )
    assert result["localStorage"] == {VERIFIER_KEY: VERIFIER}


async def test_magic_link_without_a_kept_verifier_sends_the_token_alone(browser) -> None:
    path = "/auth/magic-link"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=_press(path),
    )
    [sent] = result["fetches"]
    assert json.loads(sent["options"]["body"]) == {"token": _token(path)}


async def test_magic_link_hands_the_second_factor_step_over(browser) -> None:
    path = "/auth/magic-link"
    pending = {"mfaRequired": True, "mfaToken": "plsd_mfa_x", "methods": ["totp", "backup_code"]}
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[{"status": 200, "body": pending}],
        steps=_press(path),
    )
    assert _status(result) == "A second factor is needed to finish signing in."
    assert json.loads(result["storage"]["palisade.mfa"]) == pending
    assert "palisade.session" not in result["storage"]


async def test_magic_link_says_when_the_browser_keeps_nothing(browser) -> None:
    path = "/auth/magic-link"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=_press(path),
        storage_refuses=True,
    )
    assert _status(result) == "You're signed in, but this browser would not keep the session."


async def test_verify_email_confirms(browser) -> None:
    path = "/auth/verify-email"
    result = await browser.run(
        f"{path}?token={_token(path)}", answers=[NO_BODY], steps=_press(path)
    )
    assert _sent(result) == {"token": _token(path)}
    assert _status(result) == "Your email address is confirmed."
    assert result["elements"]["confirm"]["inactive"]


async def test_not_me_ends_the_sessions_this_tab_keeps(browser) -> None:
    path = "/auth/not-me"
    result = await browser.run(
        f"{path}?token={_token(path)}",
        answers=[NO_BODY],
        steps=_press(path),
        storage={"palisade.session": OLD_SESSION},
    )
    assert _sent(result) == {"token": _token(path)}
    assert _status(result).startswith("Every session of your account has ended.")
    assert result["storage"] == {}


@pytest.mark.parametrize(
    "answer",
    [
        # No JSON route yet: the gateway's own 404, or a backend that does not implement it.
        {"status": 404, "body": {"title": "Not Found", "code": "not_found"}},
        {"status": 501, "body": {"title": "Not Implemented", "code": "not_implemented"}},
    ],
)
async def test_not_me_before_its_route_exists(browser, answer) -> None:
    path = "/auth/not-me"
    result = await browser.run(f"{path}?token={_token(path)}", answers=[answer], steps=_press(path))
    assert _status(result).startswith("This link can't be used here.")
    assert "reset your password" in _status(result)
    assert result["elements"]["not-me"]["inactive"]


# -- the password reset form ------------------------------------------------------------------

RESET = "/auth/reset-password"
MFA_PENDING = {
    "status": 200,
    "body": {"mfaRequired": True, "mfaToken": "plsd_mfa_x", "methods": ["totp", "backup_code"]},
}


def _no_password_kept(result: dict[str, Any]) -> None:
    assert PASSWORD not in json.dumps(result["storage"])
    assert PASSWORD not in result["location"]
    assert not [entry for entry in result["history"] if PASSWORD in entry]


async def test_reset_changes_the_password(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}",
        answers=[NO_BODY],
        steps=_press(RESET),
        storage={"palisade.session": OLD_SESSION},
    )
    assert result["submits"] == [{"defaultPrevented": True}]  # never a native submission
    assert _sent(result) == {"token": _token(RESET), "newPassword": PASSWORD}
    assert _status(result) == "Your password was changed; sign in again."
    elements = result["elements"]
    assert elements["new-password"]["value"] == elements["repeat-password"]["value"] == ""
    assert elements["change"]["inactive"]  # done: the form is closed
    assert result["storage"] == {}  # the reset ended every session, this tab's too
    _no_password_kept(result)


async def test_reset_compares_the_two_passwords_first(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}",
        answers=[],
        steps=[
            {"fill": "new-password", "value": PASSWORD},
            {"fill": "repeat-password", "value": PASSWORD + "!"},
            {"click": "change"},
        ],
    )
    assert result["fetches"] == []
    assert _status(result).startswith("The two passwords differ.")
    assert result["focused"] == "repeat-password"


async def test_reset_refuses_an_empty_password_before_sending(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}", answers=[], steps=[{"click": "change"}]
    )
    assert result["fetches"] == []
    assert result["refused"] == ["new-password,repeat-password"]


async def test_reset_with_a_second_factor(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}",
        answers=[
            MFA_PENDING,
            {"status": 401, "body": {"title": "Unauthorized", "detail": "wrong code"}},
            NO_BODY,
        ],
        steps=[
            *_press(RESET),
            {"click": "change"},  # no code yet: nothing is sent
            {"fill": "code", "value": " 123456 "},
            {"click": "change"},
            {"fill": "code", "value": "654321"},
            {"click": "change"},
        ],
    )
    assert [_sent(result, i) for i in range(3)] == [
        {"token": _token(RESET), "newPassword": PASSWORD},
        {"token": _token(RESET), "newPassword": PASSWORD, "code": "123456"},
        {"token": _token(RESET), "newPassword": PASSWORD, "code": "654321"},
    ]
    assert _status(result) == "Your password was changed; sign in again."
    _no_password_kept(result)


async def test_reset_asks_for_the_code_when_the_account_has_a_second_factor(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}",
        answers=[MFA_PENDING],
        steps=[*_press(RESET), {"click": "change"}],
    )
    assert len(result["fetches"]) == 1  # the second press had no code to send
    assert not result["elements"]["second-factor"]["unseen"]
    assert not result["elements"]["change"]["inactive"]
    assert result["elements"]["code"]["attributes"]["autocomplete"] == "one-time-code"
    assert _status(result) == "Enter the code from your app."
    assert result["focused"] == "code"
    assert result["storage"] == {}  # the pending step is this form's, not the app's


async def test_reset_with_a_backup_code(browser) -> None:
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}",
        answers=[MFA_PENDING, NO_BODY],
        steps=[
            *_press(RESET),
            {"click": "use-backup"},
            {"fill": "code", "value": "abcd-efgh"},
            {"click": "change"},
        ],
    )
    assert _sent(result, 1) == {
        "token": _token(RESET),
        "newPassword": PASSWORD,
        "backupCode": "abcd-efgh",
    }
    assert result["elements"]["code-label"]["text"] == "Backup code"
    assert result["elements"]["code"]["attributes"]["autocomplete"] == "off"
    assert result["elements"]["use-backup"]["text"] == "Use a code from the app instead"


async def test_reset_lets_a_refused_password_be_corrected(browser) -> None:
    weak = {
        "status": 400,
        "body": {"title": "Bad Request", "detail": "password must be at least 8 characters"},
    }
    result = await browser.run(
        f"{RESET}?token={_token(RESET)}", answers=[weak], steps=_press(RESET)
    )
    assert _status(result) == "Bad Request: password must be at least 8 characters"
    assert not result["elements"]["change"]["inactive"]
    assert result["elements"]["new-password"]["value"] == PASSWORD  # still there to edit


# -- the invitation form ----------------------------------------------------------------------

INVITATION = "/auth/invitation"


async def test_a_new_person_accepts(browser) -> None:
    result = await browser.run(
        f"{INVITATION}?token={_token(INVITATION)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=_press(INVITATION),
    )
    assert result["submits"] == [{"defaultPrevented": True}]
    assert _sent(result) == {"token": _token(INVITATION), "name": "Grace", "password": PASSWORD}
    assert "Authorization" not in result["fetches"][0]["options"]["headers"]
    assert json.loads(result["storage"]["palisade.session"]) == TOKENS
    assert _status(result) == "You've joined the workspace and you're signed in."
    assert result["elements"]["join"]["inactive"]
    _no_password_kept(result)


async def test_a_new_person_types_the_password_twice(browser) -> None:
    result = await browser.run(
        f"{INVITATION}?token={_token(INVITATION)}",
        answers=[],
        steps=[
            {"fill": "person-name", "value": "Grace"},
            {"fill": "new-password", "value": PASSWORD},
            {"fill": "repeat-password", "value": "something else entirely"},
            {"click": "join"},
        ],
    )
    assert result["fetches"] == []
    assert _status(result).startswith("The two passwords differ.")


async def test_someone_with_an_account_joins_with_the_session_this_tab_keeps(browser) -> None:
    result = await browser.run(
        f"{INVITATION}?token={_token(INVITATION)}",
        answers=[{"status": 200, "body": TOKENS}],
        steps=[{"click": "existing"}, {"click": "join"}],
        storage={"palisade.session": OLD_SESSION},
    )
    elements = result["elements"]
    assert elements["new-person"]["hidden"]
    assert not elements["person-name"]["required"]  # a hidden required field blocks submits
    assert _sent(result) == {"token": _token(INVITATION)}
    assert result["fetches"][0]["options"]["headers"]["Authorization"] == "Bearer plsd_at_old"
    # The answer is a session in the inviting workspace: it replaces the one kept.
    assert json.loads(result["storage"]["palisade.session"]) == TOKENS


async def test_someone_with_an_account_but_no_session_is_told_to_sign_in(browser) -> None:
    result = await browser.run(
        f"{INVITATION}?token={_token(INVITATION)}",
        answers=[],
        steps=[{"click": "existing"}, {"click": "join"}],
        storage={"palisade.session": "not json"},
    )
    assert result["fetches"] == []
    assert _status(result).startswith("You're not signed in here.")


async def test_unticking_the_box_asks_for_name_and_password_again(browser) -> None:
    result = await browser.run(
        f"{INVITATION}?token={_token(INVITATION)}",
        answers=[],
        steps=[{"click": "existing"}, {"click": "existing"}, {"click": "join"}],
        storage={"palisade.session": OLD_SESSION},
    )
    assert result["fetches"] == []
    assert result["refused"] == ["person-name,new-password,repeat-password"]
    assert not result["elements"]["new-person"]["hidden"]
    assert _status(result).startswith("You're invited to join a workspace.")
