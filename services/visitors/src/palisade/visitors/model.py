"""The visitors domain's values (no gRPC or SQL types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Scope:
    """Whose visitors a call may see: one workspace, one mode (test keys see test visitors)."""

    workspace_id: str
    test: bool
    actor: str  # "user:<id>" or "apikey:<id>", for events
    publishable: bool = False  # a publishable key (from a visitor's browser)


@dataclass(frozen=True)
class StoredVisitor:
    """A row as stored: envelopes and tokens, never plaintext."""

    id: str
    workspace_id: str
    test: bool
    created_at: datetime
    erased_at: datetime | None
    name_ct: bytes | None = field(repr=False)
    email_ct: bytes | None = field(repr=False)
    phone_ct: bytes | None = field(repr=False)
    email_index: str | None = field(repr=False)
    phone_index: str | None = field(repr=False)
    data_key_version: int | None
    index_key_version: int | None
    source: str | None = None  # see Visitor.source; None for rows from before it was recorded


@dataclass(frozen=True)
class Visitor:
    """A visitor as the API shows them (decrypted; no PII once erased)."""

    id: str
    test: bool
    created_at: datetime
    erased: bool
    # Who created it: "widget" (a publishable key, public: nothing it sent is verified), "api"
    # (a secret key), "dashboard" (a person); "" if unknown (created before it was recorded).
    source: str = ""
    name: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    phone: str = field(default="", repr=False)
