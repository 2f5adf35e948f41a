"""New-network sign-in detection: the first sign-in of a user from a network never seen for them.

Every login method ends in SessionManager.sign_in, which calls observe_sign_in() in the login's
own transaction. The client's address is reduced to its network (an IPv4 address as it is; an
IPv6 address to its /64, because addresses within one network change often, and an alert on
almost every login teaches people to ignore alerts), and the network is remembered as a keyed
HMAC of user and network (LocalKeys.known_network_key): `known_networks` never holds an
address. The address the gateway signed into the caller assertion is the one used: a client's
X-Forwarded-For is honoured only from the gateway's trusted proxies, so a spoofed header can
neither make a sign-in look new nor make a new one look known.

A network is new when inserting it adds a row (INSERT ... ON CONFLICT DO NOTHING: of two
parallel sign-ins from one new network exactly one adds it) and the user already had another
network. A user with none yet (an account from before this feature, say) gets a silent
baseline, and sign-up records its address the same way, so the first login after sign-up from
where the account was made alerts nobody.

A new network writes, in the login's transaction, one `session.new_ip` event and one row to
`new_network_alerts`; the alert relay (new_network_alerts.py) composes and queues the email
after commit (it needs crypto to read the address, which a login transaction must not wait on),
so a login that rolls back alerts nobody and a committed one always does.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime

from sqlalchemy import Column, Index, Integer, String, Table, exists, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from palisade.auth.bounded import DEVICE_CHARS, IP_CHARS, clip_optional
from palisade.auth.local_keys import LocalKeys
from palisade.auth.store import TS, AuthTransaction, metadata
from palisade.common.outbox import SecurityEvent

# The prefix an IPv6 address is compared by.
IPV6_NETWORK_BITS = 64
# The one known_networks row of a user who reported a sign-in as not theirs: no network, but it
# makes every network "another one", so the next sign-in from any network alerts.
REPORTED = "n0:reported"
# Whether an alert row wakes the relay of this process after its commit (see the relay).
WAKE_FLAG = "palisade.auth.new_network_alert"

known_networks = Table(
    "known_networks",
    metadata,
    Column("user_id", String(40), primary_key=True),
    # "n1:" + base64url HMAC-SHA256 of (user, network) under auth's local key.
    Column("network_key", String(64), primary_key=True),
    Column("first_seen_at", TS, nullable=False),
)

new_network_alerts = Table(
    "new_network_alerts",
    metadata,
    Column("id", String(40), primary_key=True),  # nna_<32 hex>
    Column("user_id", String(40), nullable=False),
    Column("occurred_at", TS, nullable=False),
    # What the email shows. The address is kept only until the email is queued (the row is
    # deleted then), as sessions.ip keeps it for the session list.
    Column("ip", String(IP_CHARS), nullable=True),
    Column("device", String(DEVICE_CHARS), nullable=True),
    Column("method", String(32), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("next_attempt_at", TS, nullable=True),  # NULL: due now
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(200), nullable=True),
)
Index("ix_new_network_alerts_next_attempt_at", new_network_alerts.c.next_attempt_at)


def network_of(ip: str | None) -> str | None:
    """The network an address is compared by: an IPv4 address itself, an IPv6 address's /64
    (an IPv4-mapped IPv6 address as its IPv4 address); None for no or an unreadable address."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_NETWORK_BITS), strict=False)
        return str(network)
    return str(address)


async def remember_network(
    tx: AuthTransaction, keys: LocalKeys, *, user_id: str, ip: str | None, now: datetime
) -> bool | None:
    """Records the network of ip as known for the user. True: it was new and the user had
    another one (worth an alert); False: known already, or the user's first (a baseline);
    None: no usable address."""
    network = network_of(ip)
    if network is None:
        return None
    key = keys.known_network_key(user_id, network)
    values = {"user_id": user_id, "network_key": key, "first_seen_at": now}
    dialect_insert = pg_insert if tx.conn.dialect.name == "postgresql" else sqlite_insert
    added = (
        await tx.conn.execute(
            dialect_insert(known_networks)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["user_id", "network_key"])
            .returning(known_networks.c.user_id)
        )
    ).first()
    if added is None:
        return False
    others = await tx.conn.execute(
        select(
            exists().where(known_networks.c.user_id == user_id, known_networks.c.network_key != key)
        )
    )
    return bool(others.scalar())


async def forget_networks(tx: AuthTransaction, user_id: str, *, now: datetime) -> None:
    """After a "this wasn't me" report: no network is known any more, and none is a baseline
    either (the REPORTED row), so the stranger's network, like every other, alerts again."""
    await tx.conn.execute(known_networks.delete().where(known_networks.c.user_id == user_id))
    await tx.conn.execute(
        known_networks.insert().values(user_id=user_id, network_key=REPORTED, first_seen_at=now)
    )


async def observe_sign_in(
    tx: AuthTransaction,
    keys: LocalKeys,
    *,
    user_id: str,
    workspace_id: str,
    ip: str | None,
    device: str | None,
    method: str,
    session_id: str,
    now: datetime,
) -> bool:
    """In a login's transaction (after the user row is locked): remembers the network, and if
    it is a new one, writes the `session.new_ip` event and the alert row. True if it alerted."""
    if not await remember_network(tx, keys, user_id=user_id, ip=ip, now=now):
        return False
    await tx.emit(
        SecurityEvent(
            type="session.new_ip",
            occurred_at=now,
            actor=f"user:{user_id}",
            subject=user_id,
            workspace_id=workspace_id,
            ip=ip,
            device=device,
            details={"session_id": session_id, "method": method},
        )
    )
    await tx.conn.execute(
        new_network_alerts.insert().values(
            id=f"nna_{uuid.uuid4().hex}",
            user_id=user_id,
            occurred_at=now,
            ip=clip_optional(ip, IP_CHARS),
            device=clip_optional(device, DEVICE_CHARS),
            method=method[:32],
            created_at=now,
            next_attempt_at=None,
            attempts=0,
            last_error=None,
        )
    )
    tx.conn.info[WAKE_FLAG] = True
    return True
