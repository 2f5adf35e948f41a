"""ValidateAccessToken tells the gateway when the session logged in (for "recent auth"): the
session's creation, which refreshes don't move."""

from __future__ import annotations

from datetime import UTC

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_authenticated_at_is_the_login_time_and_survives_refreshes(auth) -> None:
    await auth.sign_up("when@example.com")
    logged_in_at = auth.clock.now()
    tokens = await auth.login("when@example.com")
    grant = await auth.validate(tokens.access_token)
    assert grant.authenticated_at.ToDatetime(tzinfo=UTC) == logged_in_at

    auth.clock.advance(1800)
    refreshed = await auth.refresh(tokens.refresh_token)
    later = await auth.validate(refreshed.access_token)
    assert later.session_id == grant.session_id
    assert later.authenticated_at.ToDatetime(tzinfo=UTC) == logged_in_at
    assert later.expires_at.ToDatetime(tzinfo=UTC) > grant.expires_at.ToDatetime(tzinfo=UTC)

    # A new login is a new session, with its own time.
    auth.clock.advance(60)
    again = await auth.validate((await auth.login("when@example.com")).access_token)
    assert again.authenticated_at.ToDatetime(tzinfo=UTC) == auth.clock.now()
