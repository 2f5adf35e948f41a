"""Numbers no backend can hold (issue 9 item 4, SECURITY.md 39): 400 at the edge, never a 500.

A free JSON object (a Struct) takes any number; before this check NaN, the infinities and
1e999 went on to the backend (whose JSON handling failed with a 500) and integers of hundreds
of digits made the gateway itself answer 500. Sent over real HTTP to an unauthenticated route.
"""

from __future__ import annotations

import json

import pytest

LOGIN = "/v1/auth/passkeys/login"
JSON = {"Content-Type": "application/json"}


async def _login_with(gateway, number: str) -> tuple[int, dict]:
    body = '{"challengeId": "c", "credential": {"id": "x", "response": {"n": ' + number + "}}}"
    status, headers, raw = await gateway.call("POST", LOGIN, data=body, headers=JSON)
    assert headers["Content-Type"].startswith("application/problem+json") or status < 300
    return status, json.loads(raw)


@pytest.mark.parametrize(
    "number",
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1.5e400",
        "1" * 400,
        "-" + "9" * 400,
        str(2**64),  # one past uint64
        str(-(2**63) - 1),  # one past int64
        "[1, 2, NaN]",
    ],
    ids=lambda n: n[:12],
)
async def test_non_finite_and_overflowing_numbers_are_a_stable_400(gateway, number) -> None:
    status, problem = await _login_with(gateway, number)
    assert (status, problem["code"]) == (400, "invalid_number")
    assert number[:12] not in problem["detail"]
    assert gateway.upstream.calls == []  # refused before any backend saw it


@pytest.mark.parametrize(
    "number", ["0", "-7", "1.5e308", "1e-999", str(2**64 - 1), str(-(2**63)), "0.1", "-0.0"]
)
async def test_numbers_a_backend_can_hold_still_pass(gateway, number) -> None:
    status, _ = await _login_with(gateway, number)
    assert status == 200
    [(method, message)] = gateway.upstream.calls
    assert method.endswith("/LoginWithPasskey") or "Passkey" in method
    assert message.credential["response"]["n"] == float(number)


async def test_a_huge_integer_in_a_typed_field_is_also_refused(gateway) -> None:
    body = '{"email": "a@example.com", "password": ' + "7" * 5000 + "}"
    status, _, raw = await gateway.call("POST", "/v1/auth/login", data=body, headers=JSON)
    assert (status, json.loads(raw)["code"]) == (400, "invalid_number")
