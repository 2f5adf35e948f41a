"""How an endpoint's URL and signing secrets are bound in crypto.

Each is an AES-256-GCM envelope made by the crypto service with associated data naming this
service, the workspace, the endpoint and the field: an envelope copied into another endpoint's
row (or the URL's into the secret's place) fails to open, so a database writer cannot make
one endpoint sign with, or deliver to, another's. No data subject: an endpoint belongs to a
workspace, not to a person, and its rows are deleted with it (crypto's subjects are people,
visitors and keys).
"""

from __future__ import annotations

from typing import Literal

from palisade.common.aad import associated_data

SERVICE = "webhooks"
Field = Literal["url", "secret"]


def field_aad(workspace_id: str, endpoint_id: str, field: Field) -> bytes:
    return associated_data(SERVICE, workspace_id, endpoint_id, field)
