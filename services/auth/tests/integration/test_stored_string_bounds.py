"""Client-supplied strings fit their VARCHAR(n) columns on Postgres (issue 9 item 5).

SQLite ignores VARCHAR lengths, so these run against Postgres: there an unbounded
User-Agent-derived device name made every sign-in fail with a 500.
"""

from __future__ import annotations

import pytest
from sqlalchemy import String

from palisade.auth import bounded
from palisade.auth.links.tables import magic_links
from palisade.auth.passkeys.store import passkeys
from palisade.auth.sessions.store import sessions
from palisade.auth.store import metadata, workspaces
from palisade_api.auth.v1 import auth_pb2 as pb

LONG_VERSION_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/" + "9" * 400 + ".0 Safari/537.36"
)
LONG_FAMILY_UA = "Mozilla/5.0 (X11; Linux x86_64) " + "B" * 300 + "Bot/" + "1" * 300
LONG_OS_UA = "Mozilla/5.0 (" + "Q" * 500 + "; rv:120.0) Gecko/20100101 Firefox/120.0"


@pytest.mark.parametrize("user_agent", [LONG_VERSION_UA, LONG_FAMILY_UA, LONG_OS_UA, "x" * 20000])
async def test_a_long_user_agent_signs_in_on_postgres(auth, user_agent) -> None:
    await auth.sign_up("ua@example.com")
    tokens = await auth.stub.Login(
        pb.LoginRequest(email="ua@example.com", password="correct horse battery staple"),
        metadata=auth.anonymous(user_agent=user_agent),
    )
    grant = await auth.validate(tokens.access_token)
    listed = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(grant))
    device = next(s.device for s in listed.sessions if s.id == grant.session_id)
    assert 0 < len(device) <= bounded.DEVICE_CHARS
    # A refresh (which touches the session) works too.
    await auth.refresh(tokens.refresh_token)


async def test_an_odd_client_ip_is_stored_canonical_or_not_at_all(auth) -> None:
    await auth.sign_up("ip@example.com")
    for ip in ("not-an-ip-" + "z" * 200, "fe80::1%" + "e" * 100):
        tokens = await auth.stub.Login(
            pb.LoginRequest(email="ip@example.com", password="correct horse battery staple"),
            metadata=auth.anonymous(ip=ip),
        )
        await auth.stub.Refresh(
            pb.RefreshRequest(refresh_token=tokens.refresh_token), metadata=auth.anonymous(ip)
        )
    with auth.db() as conn:
        ips = [r[0] for r in conn.execute("SELECT ip FROM sessions").fetchall()]
    assert all(ip is None or len(ip) <= bounded.IP_CHARS for ip in ips)
    assert "fe80::1" in ips


def test_bounds_match_the_columns() -> None:
    assert sessions.c.ip.type.length == bounded.IP_CHARS  # type: ignore[attr-defined]
    assert magic_links.c.requested_ip.type.length == bounded.IP_CHARS  # type: ignore[attr-defined]
    assert sessions.c.device.type.length == bounded.DEVICE_CHARS  # type: ignore[attr-defined]
    assert workspaces.c.name.type.length >= 200  # type: ignore[attr-defined]
    assert passkeys.c.name.type.length >= 100  # type: ignore[attr-defined]


# Every VARCHAR(n) column of auth, and what bounds its writers. A new column fails this test
# until someone has checked (and listed) how its values are kept within n.
BOUNDED_BY = {
    "users.id": "generated (usr_ + uuid hex)",
    "users.email_index": "crypto blind-index token",
    "users.password_hash": "PHC string the service produces",
    "workspaces.id": "generated",
    "workspaces.name": "accounts._clean_name (<= 200)",
    "memberships.workspace_id": "generated",
    "memberships.user_id": "generated",
    "memberships.role": "constant",
    "sessions.id": "generated",
    "sessions.user_id": "generated",
    "sessions.workspace_id": "generated",
    "sessions.ip": "bounded.client_ip, store clip",
    "sessions.device": "devices.describe_device, store clip",
    "sessions.revoked_reason": "constant",
    "refresh_tokens.session_id": "generated",
    "access_tokens.session_id": "generated",
    "mail_outbox.id": "generated",
    "mail_outbox.last_error": "relay._reason (<= 200)",
    "totp_credentials.user_id": "generated",
    "backup_codes.id": "generated",
    "backup_codes.user_id": "generated",
    "backup_codes.code_index": "crypto blind-index token",
    "mfa_challenges.user_id": "generated",
    "mfa_challenges.first_factor": "constant",
    "magic_links.user_id": "generated",
    "magic_links.requested_ip": "bounded.client_ip, store clip",
    "magic_links.code_challenge": "links.magic code-challenge check (43 base64url characters)",
    "account_tokens.purpose": "links.tables Purpose constant",
    "account_tokens.user_id": "generated",
    "account_tokens.requested_ip": "bounded.client_ip, store clip",
    "account_tokens.new_email_index": "crypto blind-index token",
    "account_tokens.session_id": "generated (the caller's session id)",
    "passkeys.id": "generated",
    "passkeys.user_id": "generated",
    "passkeys.transports": "webauthn_json.transports_of (known values, <= 8)",
    "passkeys.aaguid": "py_webauthn UUID text",
    "passkeys.name": "passkeys.clean_passkey_name (<= 100)",
    "webauthn_user_handles.user_id": "generated",
    "webauthn_challenges.id": "generated",
    "webauthn_challenges.purpose": "constant",
    "webauthn_challenges.user_id": "generated",
    "key_revocation_requests.id": "generated",
    "key_revocation_requests.user_id": "key_revocations._queue checks a Palisade user id",
    "key_revocation_requests.workspace_id": "key_revocations._queue checks a workspace id",
    "key_revocation_requests.reason": "key_revocations.REASONS constant",
    "key_revocation_requests.last_error": "key_revocation_relay status or class name (<= 200)",
    "notice_requests.caller": "the verified service principal, notices check (<= 64)",
    "notice_requests.idempotency_key": "notices._check (1 to 128 printable ASCII)",
    "notice_requests.kind": "notice_catalogue constant",
    "invitations.id": "generated (inv_ + uuid hex)",
    "invitations.workspace_id": "generated (the inviter's session's workspace)",
    "invitations.email_index": "crypto blind-index token",
    "invitations.role": "team.roles.parse_role (a constant)",
    "invitations.created_by": "generated",
    "invitations.accepted_by": "generated",
    "mail_outbox.user_id": "generated (the recipient account's id)",
    "subject_shred_requests.id": "generated",
    "subject_shred_requests.subject": "subject_shreds.queue_shred checks a user subject",
    "subject_shred_requests.last_error": "subject_shreds._reason (<= 200)",
    "known_networks.user_id": "generated",
    "known_networks.network_key": "LocalKeys.known_network_key (n1: + 43 base64url characters)",
    "new_network_alerts.id": "generated (nna_ + uuid hex)",
    "new_network_alerts.user_id": "generated",
    "new_network_alerts.ip": "bounded.client_ip, new_networks clip",
    "new_network_alerts.device": "devices.describe_device, new_networks clip",
    "new_network_alerts.method": "login method constants, new_networks clip (<= 32)",
    "new_network_alerts.last_error": "new_network_alerts._failed class name (<= 200)",
    "new_network_alerts.kind": "new_networks constants ALERT / PAUSED",
    "new_network_alert_caps.user_id": "generated",
    "new_network_alert_log.id": "generated (nnl_ + uuid hex)",
    "new_network_alert_log.user_id": "generated",
}


def test_every_bounded_column_has_a_known_writer_bound() -> None:
    columns = {
        f"{table.name}.{column.name}"
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, String)
        and column.type.length is not None
        and not table.name.startswith(("outbox", "revocation"))
    }
    assert columns <= set(BOUNDED_BY), sorted(columns - set(BOUNDED_BY))
