"""Shared by the email-verification, email-change and PKCE magic-link tests: an auth service on
SQLite or Postgres whose mail goes to a real SMTP catcher, and reads of its database."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from smtp_catcher import SmtpCatcher
from sqlalchemy.engine import make_url

from palisade_api.auth.v1 import account_pb2, account_pb2_grpc
from palisade_api.auth.v1 import auth_pb2 as pb

VERIFY_LINK = re.compile(r"https?://\S+/auth/verify-email\?token=[A-Za-z0-9_%-]+")
MAGIC_LINK = re.compile(r"https?://\S+/auth/magic-link\?token=[A-Za-z0-9_%-]+")
PASSWORD = "correct horse battery staple"


def text_of(message: Any) -> str:
    body = message.get_body(preferencelist=("plain",))
    return str(body.get_content()) if body is not None else ""


def token_in(message: Any, pattern: re.Pattern[str] = VERIFY_LINK) -> str:
    [link] = pattern.findall(text_of(message))
    [token] = parse_qs(urlparse(link).query)["token"]
    return token


@dataclass
class Mailed:
    """An auth harness (conftest.AuthHarness) plus its mail and its AccountService stub."""

    auth: Any
    mail: SmtpCatcher
    accounts: account_pb2_grpc.AccountServiceStub
    database_url: str

    async def sign_up(self, email: str, name: str = "Ada Lovelace") -> pb.SignUpResponse:
        """A plain SignUp RPC: the address stays unverified until a link proves it."""
        return await self.auth.stub.SignUp(
            pb.SignUpRequest(email=email, password=PASSWORD, name=name),
            metadata=self.auth.anonymous(),
        )

    async def settled(self) -> None:
        """Every queued email has been handed to the SMTP catcher."""
        await self.auth.servers[0].mail_relay.run_once()

    async def mails_to(self, email: str, subject: str, count: int = 1) -> list[Any]:
        async with asyncio.timeout(10):
            while True:
                found = [m for m in self.mail.to(email) if m["Subject"] == subject]
                if len(found) >= count:
                    return found
                self.mail.arrived.clear()
                await self.mail.arrived.wait()

    async def verification_token(self, email: str, nth: int = 1) -> str:
        mails = await self.mails_to(email, "Verify your Palisade email address", nth)
        return token_in(mails[nth - 1])

    async def confirm(self, token: str, ip: str = "203.0.113.9") -> Any:
        return await self.accounts.ConfirmEmailVerification(
            account_pb2.ConfirmEmailVerificationRequest(token=token),
            metadata=self.auth.anonymous(ip),
        )

    async def me(self, access_token: str) -> pb.Me:
        grant = await self.auth.validate(access_token)
        return await self.auth.stub.GetMe(pb.GetMeRequest(), metadata=self.auth.as_user(grant))

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """SQL with %s placeholders, on whichever backend the service runs."""
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite":
            with sqlite3.connect(str(url.database)) as conn:
                return list(conn.execute(sql.replace("%s", "?"), params).fetchall())
        with self.auth.db() as conn:
            return list(conn.execute(sql, params).fetchall())

    def count(self, sql: str, *params: object) -> int:
        return int(self.rows(sql, *params)[0][0])


def error_code(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "palisade-error-code":
            return str(value)
    return ""


async def mailed_auth(
    auth_factory: Any, smtp: tuple[SmtpCatcher, int], database_url: str, **overrides: object
) -> AsyncIterator[Mailed]:
    catcher, port = smtp
    async with auth_factory(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        database_url=database_url,
        **overrides,
    ) as auth:
        channel = auth.signing.channel(auth.servers[0].running.target)
        async with channel as opened:
            yield Mailed(auth, catcher, account_pb2_grpc.AccountServiceStub(opened), database_url)
