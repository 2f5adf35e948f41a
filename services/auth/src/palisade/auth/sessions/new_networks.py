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

The cap (AlertCap, PALISADE_AUTH_NEW_NETWORK_ALERTS_PER_DAY): someone who holds the password,
or a phone hopping between mobile networks, could otherwise make dozens of alert emails, and a
flooded inbox is one where the alert that matters goes unread (or one an attacker uses to bury
it). So an account gets at most `per_window` alert emails within any rolling 24 hours
(`new_network_alert_log` remembers when each went out). The sign-in past the cap still writes
its `session.new_ip` event (the security log shows every new network; the event's `alert`
detail says emailed, paused or withheld) and its network is still remembered, but instead of
an alert it gets ONE "further alerts are paused until <time>" email: that sign-in's own facts,
the time alerts resume (when the oldest email of the window is 24 hours old), a pointer to the
security log, and a "this wasn't me" link like an alert's. Later new networks within the pause
are withheld (event only), and no second pause email goes out within 24 hours of the first.

Why a pause email rather than a digest: the person learns at once that something unusual is
going on (the moment the cap is reached is the moment it is most likely an attack), with a
link that ends every session, the withheld sign-ins' included; a digest would hold that back
for up to a day and still could not list what happens after it is sent, while the log already
has every sign-in with its address and device. A "this wasn't me" report starts the count
afresh (forget_networks): after it, the stranger's return is what the owner most needs to hear.

The decision is serialised per account: the login (which holds the user row shared, so logins
do not wait for each other) upserts the account's `new_network_alert_caps` row, which locks it
until commit (last in auth's lock order: user row, sessions, then this), then counts the
window. Ten parallel sign-ins from ten new networks give exactly `per_window` alerts and one
pause email. SQLite serialises writers anyway (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, Index, Integer, String, Table, delete, exists, select, text, update
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
# What an alert row asks the relay to send (new_network_alerts.kind).
ALERT = "alert"  # the usual new-sign-in email
PAUSED = "paused"  # the one email past the cap: this sign-in, and alerts paused until ...
# The `alert` detail of a session.new_ip event: what the person was sent about it.
EMAILED, PAUSE_EMAILED, WITHHELD = "emailed", "paused", "withheld"


@dataclass(frozen=True)
class AlertCap:
    """At most `per_window` alert emails per account within any rolling `window`."""

    per_window: int = 5
    window: timedelta = timedelta(hours=24)


DEFAULT_ALERT_CAP = AlertCap()


@dataclass(frozen=True)
class AlertDecision:
    detail: str  # EMAILED, PAUSE_EMAILED or WITHHELD
    kind: str | None = None  # the alert row to write: ALERT, PAUSED, or none
    paused_until: datetime | None = None  # PAUSED: when alert emails resume


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
    # ALERT or PAUSED (migration 0014; rows from before it are alerts).
    Column("kind", String(16), nullable=False, server_default=text("'alert'")),
    Column("paused_until", TS, nullable=True),  # PAUSED: when alert emails resume
)
Index("ix_new_network_alerts_next_attempt_at", new_network_alerts.c.next_attempt_at)

# One row per account that ever had a new network: the lock that serialises the cap's
# decision, and when the last pause email was decided (one per window at most).
new_network_alert_caps = Table(
    "new_network_alert_caps",
    metadata,
    Column("user_id", String(40), primary_key=True),
    Column("paused_notice_at", TS, nullable=True),
)

# When each alert email of the current window was decided (older rows are deleted by the next
# decision for the account): what the cap counts. No address, no network.
new_network_alert_log = Table(
    "new_network_alert_log",
    metadata,
    Column("id", String(40), primary_key=True),  # nnl_<32 hex>
    Column("user_id", String(40), nullable=False),
    Column("emailed_at", TS, nullable=False),
)
Index(
    "ix_new_network_alert_log_user_emailed",
    new_network_alert_log.c.user_id,
    new_network_alert_log.c.emailed_at,
)


# Built once (every login runs it; the values come as execute parameters).
_REMEMBER_NETWORK_PG = (
    pg_insert(known_networks)
    .on_conflict_do_nothing(index_elements=["user_id", "network_key"])
    .returning(known_networks.c.user_id)
)
_REMEMBER_NETWORK_SQLITE = (
    sqlite_insert(known_networks)
    .on_conflict_do_nothing(index_elements=["user_id", "network_key"])
    .returning(known_networks.c.user_id)
)


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
    statement = (
        _REMEMBER_NETWORK_PG if tx.conn.dialect.name == "postgresql" else _REMEMBER_NETWORK_SQLITE
    )
    added = (await tx.conn.execute(statement, values)).first()
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
    either (the REPORTED row), so the stranger's network, like every other, alerts again; and
    the alert cap starts afresh, so that alert is emailed, not withheld."""
    await tx.conn.execute(known_networks.delete().where(known_networks.c.user_id == user_id))
    await tx.conn.execute(
        delete(new_network_alert_log).where(new_network_alert_log.c.user_id == user_id)
    )
    await tx.conn.execute(
        delete(new_network_alert_caps).where(new_network_alert_caps.c.user_id == user_id)
    )
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
    cap: AlertCap = DEFAULT_ALERT_CAP,
) -> bool:
    """In a login's transaction (after the user row is locked): remembers the network, and if
    it is a new one, writes the `session.new_ip` event and, within the cap, the alert row.
    True if the network was new (whether or not its email was withheld)."""
    if not await remember_network(tx, keys, user_id=user_id, ip=ip, now=now):
        return False
    decision = await decide_alert(tx, user_id, now=now, cap=cap)
    await tx.emit(
        SecurityEvent(
            type="session.new_ip",
            occurred_at=now,
            actor=f"user:{user_id}",
            subject=user_id,
            workspace_id=workspace_id,
            ip=ip,
            device=device,
            details={"session_id": session_id, "method": method, "alert": decision.detail},
        )
    )
    if decision.kind is None:
        return True
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
            kind=decision.kind,
            paused_until=decision.paused_until,
        )
    )
    tx.conn.info[WAKE_FLAG] = True
    return True


async def decide_alert(
    tx: AuthTransaction, user_id: str, *, now: datetime, cap: AlertCap
) -> AlertDecision:
    """Whether this new network's sign-in is emailed, gets the pause email, or is withheld (see
    the module doc). Locks the account's cap row until the transaction ends."""
    caps, log = new_network_alert_caps, new_network_alert_log
    dialect_insert = pg_insert if tx.conn.dialect.name == "postgresql" else sqlite_insert
    # The upsert takes the row lock (a first insert makes a parallel one wait for its commit
    # and then update): every decision for the account from here to commit is serialised,
    # and each statement after it sees what the previous holder committed (READ COMMITTED).
    await tx.conn.execute(
        dialect_insert(caps)
        .values(user_id=user_id, paused_notice_at=None)
        .on_conflict_do_update(
            index_elements=["user_id"], set_={"paused_notice_at": caps.c.paused_notice_at}
        )
    )
    paused_notice_at = (
        await tx.conn.execute(select(caps.c.paused_notice_at).where(caps.c.user_id == user_id))
    ).scalar_one()
    window_start = now - cap.window
    await tx.conn.execute(
        delete(log).where(log.c.user_id == user_id, log.c.emailed_at <= window_start)
    )
    emailed = list(
        (
            await tx.conn.execute(
                select(log.c.emailed_at).where(log.c.user_id == user_id).order_by(log.c.emailed_at)
            )
        ).scalars()
    )
    if len(emailed) < cap.per_window:
        await tx.conn.execute(
            log.insert().values(id=f"nnl_{uuid.uuid4().hex}", user_id=user_id, emailed_at=now)
        )
        return AlertDecision(EMAILED, ALERT)
    if paused_notice_at is not None and paused_notice_at > window_start:
        return AlertDecision(WITHHELD)  # paused, and told so already
    await tx.conn.execute(
        update(caps).where(caps.c.user_id == user_id).values(paused_notice_at=now)
    )
    # Emails resume once enough of the window's emails are older than the window to leave a
    # slot (the oldest one, unless the cap was lowered meanwhile).
    resumes_at: datetime = emailed[len(emailed) - cap.per_window] + cap.window
    return AlertDecision(PAUSE_EMAILED, PAUSED, resumes_at)
