"""A sign-up with a taken email answers like a new one; the owner is told by email."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from .conftest import PASSWORD, Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_the_owner_hears_of_a_sign_up_with_their_email(suite: Suite) -> None:
    email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": PASSWORD, "name": "Ada"}
    first = await suite.call("POST", "/v1/auth/signup", json=body)
    assert first[0] == 201
    second = await suite.call("POST", "/v1/auth/signup", json=body)
    assert second[0] == 201
    assert first[1]["Content-Type"] == second[1]["Content-Type"]
    assert sorted(json.loads(first[2])) == sorted(json.loads(second[2]))
    notice = await suite.mail.wait_for(email, subject="Sign-up attempt with your email address")
    assert "already has one" in notice.get_body(preferencelist=("plain",)).get_content()
    # The first sign-up sent its verification link only; the attempt on a taken address the
    # notice.
    await asyncio.sleep(0)
    assert len(suite.mail.to(email, subject="Sign-up attempt with your email address")) == 1
    assert len(suite.mail.to(email)) == 2
