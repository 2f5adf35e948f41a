"""The tables of single-use emailed tokens, and which purposes each holds.

magic_links predates the core (migration 0003): it holds one purpose and calls its consumed-at
column `used_at`. account_tokens (migration 0007) holds every other account-lifecycle purpose
in one table with a purpose column; an email change also keeps the new address there (sealed,
with its blind index) until that address confirms.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, LargeBinary, String, Table

from palisade.auth.links.single_use import Purpose, TokenTable
from palisade.auth.sessions.tokens import TokenKind
from palisade.auth.store import TS, metadata

magic_links = Table(
    "magic_links",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
    Column("requested_ip", String(64), nullable=True),
    # base64url SHA-256 of the client's verifier (PKCE-style binding); NULL: an unbound link.
    Column("code_challenge", String(64), nullable=True),
)

MAGIC_LINK = Purpose("magic_link", TokenKind.MAGIC_LINK)
MAGIC_LINK_TABLE = TokenTable(
    magic_links, consumed_column="used_at", purpose_column=None, only_purpose=MAGIC_LINK.name
)

account_tokens = Table(
    "account_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("purpose", String(32), nullable=False),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("consumed_at", TS, nullable=True),
    Column("requested_ip", String(64), nullable=True),
    Column("new_email_ct", LargeBinary, nullable=True),
    Column("new_email_index", String(128), nullable=True),
    # An email change's requesting session (migration 0010): the link confirms only while that
    # session is live. NULL for other purposes and for links issued before 0010.
    Column("session_id", String(40), nullable=True),
)
Index("ix_account_tokens_user_purpose", account_tokens.c.user_id, account_tokens.c.purpose)
ACCOUNT_TOKENS = TokenTable(account_tokens)

EMAIL_VERIFICATION = Purpose("email_verification", TokenKind.EMAIL_VERIFICATION)
PASSWORD_RESET = Purpose("password_reset", TokenKind.PASSWORD_RESET)
NOT_ME = Purpose("not_me", TokenKind.NOT_ME)
# An email change's confirmation link: sent to the NEW address, it carries the same prefix and
# lands on the same page and route as a verification link (it verifies that address), but
# its row also holds the address (sealed) it moves the account to.
EMAIL_CHANGE = Purpose("email_change", TokenKind.EMAIL_VERIFICATION)
