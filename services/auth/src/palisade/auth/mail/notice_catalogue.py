"""The security notices other services may have auth email (SendNotice), and their text.

Each kind has a fixed subject and wording and a whitelist of detail keys it shows. Details come
from another service, and often from a client before that (a key's name, a leak report's
source URL), so none reaches a header (subjects are fixed), each value is bounded, and its
control characters (CR, LF, the Unicode line separators, bidi overrides) are shown escaped, so
no value can add a line to the mail or disguise one. A notice carries no secret: a value
holding what looks like a whole API key is shown with everything after its prefix redacted,
and the key itself only as prefix…last4.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from palisade.auth.mail import OutgoingEmail
from palisade.common.api_key_format import KEY_MODES, KEY_TYPES
from palisade.common.errors import InvalidArgument

MAX_DETAIL_CHARS = 200

# Shown escaped: controls (CR, LF, tab, NUL...), format characters (bidi overrides, zero
# width), surrogates, line/paragraph separators, private-use and unassigned code points.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})
_NAMED_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
# Anything longer than a displayed prefix (type, mode and 4 characters) is key material.
_KEY_MATERIAL = re.compile(r"((?:pk|sk)_(?:live|test)_)[0-9A-Za-z]{5,}")
_KEY_PREFIX = re.compile(r"(?:pk|sk)_(?:live|test)_[0-9A-Za-z]{0,4}")
_KEY_LAST4 = re.compile(r"[0-9A-Za-z]{4}")


class UnknownNoticeKind(InvalidArgument):
    code = "unknown_notice_kind"
    default_message = "kind is not one of the security notices auth sends"


class InvalidNoticeDetails(InvalidArgument):
    code = "invalid_notice_details"
    default_message = (
        "details hold a key this kind does not show, a value longer than 200 characters,"
        " or a malformed key_prefix, key_last4, key_type or key_mode"
    )


@dataclass(frozen=True)
class NoticeKind:
    name: str
    subject: str
    headline: str  # what happened, one sentence
    advice: str  # what to do if it wasn't expected
    details: tuple[tuple[str, str], ...]  # (key, label), in the order shown


_KEY_DETAILS = (
    ("key_name", "Key name"),
    ("key_type", "Type"),
    ("key_mode", "Mode"),
    ("key_id", "Key id"),
)
# key_prefix and key_last4 are shown together as one "Key" line.
_KEY_PARTS = ("key_prefix", "key_last4")

CATALOGUE: dict[str, NoticeKind] = {
    kind.name: kind
    for kind in (
        NoticeKind(
            name="api_key_created",
            subject="A new API key was created in your Palisade workspace",
            headline="A new API key was created in your Palisade workspace.",
            advice=(
                "If you don't know who created it, revoke it in your workspace's API keys"
                " settings and review the workspace's security log."
            ),
            details=(*_KEY_DETAILS, ("scopes", "Scopes")),
        ),
        NoticeKind(
            name="api_key_leak_reported",
            subject="An API key of your Palisade workspace was reported as leaked",
            headline=(
                "An API key of your Palisade workspace was reported as exposed in public,"
                " and has been revoked: requests with it are refused from now on."
            ),
            advice=(
                "Create a new key for whatever used this one, remove the old key from where"
                " it was found, and review the workspace's security log for its recent use."
            ),
            details=(*_KEY_DETAILS, ("source", "Reported location")),
        ),
        NoticeKind(
            name="api_key_revoked",
            subject="An API key of your Palisade workspace was revoked",
            headline=(
                "An API key of your Palisade workspace was revoked: requests with it are"
                " refused from now on."
            ),
            advice=(
                "If you didn't expect this, review the workspace's security log and its"
                " members' access."
            ),
            details=(*_KEY_DETAILS, ("reason", "Reason")),
        ),
        # From the webhooks service: an endpoint whose every delivery failed for 5 days.
        NoticeKind(
            name="webhook_disabled",
            subject="A webhook endpoint of your Palisade workspace was disabled",
            headline=(
                "A webhook endpoint of your Palisade workspace was disabled because every"
                " delivery to it has failed for 5 days: no more events are sent to it."
            ),
            advice=(
                "Check that the receiver is up and answers with a 2xx status, then enable the"
                " endpoint again in your workspace's webhook settings."
            ),
            details=(
                ("webhook_id", "Endpoint"),
                ("url_origin", "Destination"),
                ("failing_since", "Failing since"),
            ),
        ),
    )
}


def allowed_keys(kind: NoticeKind) -> frozenset[str]:
    return frozenset(key for key, _ in kind.details) | frozenset(_KEY_PARTS)


def notice_kind(name: str) -> NoticeKind:
    kind = CATALOGUE.get(name)
    if kind is None:
        raise UnknownNoticeKind()
    return kind


def check_details(kind: NoticeKind, details: Mapping[str, str]) -> dict[str, str]:
    """The details, checked against the kind's whitelist and bounds (InvalidNoticeDetails)."""
    allowed = allowed_keys(kind)
    if not set(details) <= allowed:
        raise InvalidNoticeDetails()
    if any(len(value) > MAX_DETAIL_CHARS for value in details.values()):
        raise InvalidNoticeDetails()
    prefix, last4 = details.get("key_prefix"), details.get("key_last4")
    if prefix is not None and not _KEY_PREFIX.fullmatch(prefix):
        raise InvalidNoticeDetails()
    if last4 is not None and not _KEY_LAST4.fullmatch(last4):
        raise InvalidNoticeDetails()
    if details.get("key_type", "publishable") not in KEY_TYPES.values():
        raise InvalidNoticeDetails()
    if details.get("key_mode", "live") not in KEY_MODES:
        raise InvalidNoticeDetails()
    return {key: value for key, value in details.items() if value}


def shown(value: str) -> str:
    """value as one safe line: key material redacted, control characters escaped."""
    value = _KEY_MATERIAL.sub(r"\1…[redacted]", value)
    out = []
    for char in value:
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif unicodedata.category(char) in _ESCAPED_CATEGORIES:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class NoticeContext:
    """What every notice says besides its details: when, from where, in which workspace."""

    occurred_at: datetime
    ip: str | None
    location: str
    device: str
    workspace_name: str | None


def notice_text(kind: NoticeKind, details: Mapping[str, str], context: NoticeContext) -> str:
    lines = [kind.headline, ""]
    if context.workspace_name:
        lines.append(f"Workspace: {shown(context.workspace_name)}")
    prefix, last4 = details.get("key_prefix"), details.get("key_last4")
    if prefix or last4:
        lines.append(f"Key: {shown(prefix or '')}…{shown(last4 or '')}")
    lines += [f"{label}: {shown(details[key])}" for key, label in kind.details if key in details]
    when = context.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    where = context.ip or "unknown"
    if context.ip and context.location:
        where = f"{where} ({shown(context.location)})"
    lines += [
        "",
        f"When: {when}",
        f"IP address: {where}",
        f"Device: {shown(context.device)}",
        "",
        kind.advice,
        "",
        "Palisade never asks for your password or API keys by email.",
    ]
    return "\n".join(lines) + "\n"


def notice_email(
    kind: NoticeKind, details: Mapping[str, str], context: NoticeContext, *, to: str
) -> OutgoingEmail:
    return OutgoingEmail(to=to, subject=kind.subject, text=notice_text(kind, details, context))
