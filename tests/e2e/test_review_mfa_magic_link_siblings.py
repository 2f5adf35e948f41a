"""Review: a redeemed magic link should retire the user's other outstanding links."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_LINK = re.compile(r"https?://\S+/auth/magic-link\?token=([A-Za-z0-9_%-]+)")


async def test_signing_in_with_one_link_kills_the_older_ones(suite: Suite) -> None:
    """An old link left in a mailbox (forwarded, synced, backed up) stays a 15-minute login."""
    email = f"sib-{uuid.uuid4().hex[:10]}@example.com"
    await suite.sign_up_and_log_in(email)
    for _ in range(2):
        status, _, _ = await suite.call("POST", "/v1/auth/magic-links", json={"email": email})
        assert status == 202
    for _ in range(100):
        if len(suite.mail.to(email, subject="Your Palisade sign-in link")) >= 2:
            break
        await suite.mail.wait_for(email, subject="Your Palisade sign-in link")
        await asyncio.sleep(0.05)
    first, second = (
        _LINK.findall(m.get_body(preferencelist=("plain",)).get_content())[0]
        for m in suite.mail.to(email, subject="Your Palisade sign-in link")[:2]
    )
    status, _, _ = await suite.json_call(
        "POST", "/v1/auth/magic-links/redeem", json={"token": second}
    )
    assert status == 200
    status, _, _ = await suite.json_call(
        "POST", "/v1/auth/magic-links/redeem", json={"token": first}
    )
    assert status == 401, "an older link still signs in after a newer one was used"
