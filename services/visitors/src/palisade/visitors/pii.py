"""How a visitor's PII is bound in crypto: subjects, associated data, blind-index contexts.

Every envelope is made under the visitor's subject key ("visitor:<id>", so one ShredSubject
makes all of it unreadable, wherever it was copied) with associated data naming the service,
the workspace, the visitor and the field: an envelope copied into another visitor's row, or
into another field of the same row, fails to decrypt. Blind-index contexts name the workspace
and the field, so equal addresses in two workspaces (or an email equal to a phone) share no
token.
"""

from __future__ import annotations

from typing import Literal

from palisade.common.aad import associated_data

SERVICE = "visitors"
Field = Literal["name", "email", "phone"]
FIELDS: tuple[Field, ...] = ("name", "email", "phone")
IndexedField = Literal["email", "phone"]


def subject_of(visitor_id: str) -> str:
    return f"visitor:{visitor_id}"


def field_aad(workspace_id: str, visitor_id: str, field: Field) -> bytes:
    return associated_data(SERVICE, workspace_id, visitor_id, field)


def index_context(workspace_id: str, field: IndexedField) -> bytes:
    return associated_data(SERVICE, workspace_id, "index", field)
