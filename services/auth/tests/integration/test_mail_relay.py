"""The mail outbox and its relay on SQLite and Postgres, with a real crypto service.

Time is the injectable clock: backoff and leases are crossed by moving it, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, select

from palisade.auth.mail import (
    MailDeliveryFailed,
    MailQueue,
    MailRelay,
    OutgoingEmail,
    mail_outbox,
    message_aad,
    retry_delay,
)
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock, SystemClock
from palisade.common.crypto_client import CryptoClient, CryptoFailure
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.errors import Unavailable
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.logs import JsonFormatter
from palisade.common.migrations import upgrade
from palisade.common.tasks import cancel_and_wait
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto

RECIPIENT = "mary.jackson@example.com"
TOKEN = "plsd_ml_VGhpcyBpcyBhIHNpZ24taW4gdG9rZW4"
SUBJECT = "Your Palisade sign-in link"
LEASE_SECONDS = 300.0


@dataclass
class RecordingMailer:
    """A Mailer that keeps what it is given; fails `failures` times first if told to."""

    failures: int = 0
    always_fail: bool = False
    sent: list[EmailMessage] = field(default_factory=list)
    calls: int = 0
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: EmailMessage) -> None:
        self.calls += 1
        await asyncio.sleep(0)  # a real send yields to the loop; let other relays interleave
        if self.always_fail or self.failures > 0:
            self.failures -= 1
            raise MailDeliveryFailed("SMTPServerDisconnected")
        self.sent.append(message)
        self.delivered.set()

    async def until(self, count: int) -> None:
        """Returns once `count` messages were delivered (bounded by the caller's timeout)."""
        while len(self.sent) < count:
            self.delivered.clear()
            await self.delivered.wait()

    def ids(self) -> list[str]:
        return [str(m["Message-ID"]).split("@")[0].lstrip("<") for m in self.sent]


@dataclass
class Outbox:
    """An auth database with the real migrations, a real crypto service, and the mail parts."""

    url: str
    store: AuthStore
    crypto: CryptoClient
    clock: ManualClock
    queue: MailQueue
    stack: AsyncExitStack
    crypto_settings: CryptoSettings

    async def engine(self, url: str | None = None):
        engine = create_engine(url or self.url)
        self.stack.push_async_callback(engine.dispose)
        return engine

    def crypto_client(self, target: str) -> CryptoClient:
        master = read_document(self.crypto_settings.resolved_edge_keys_master_file())
        keys = KeySource.from_master(master, "auth")
        signer = AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)
        channel = insecure_channel(target)
        self.stack.push_async_callback(channel.close, None)
        return CryptoClient(channel=channel, identity=ServiceIdentity(name="auth", signer=signer))

    async def relay(self, mailer, *, engine=None, crypto=None, **overrides) -> MailRelay:
        options = {
            "poll_seconds": 3600.0,  # long: a test that needs the relay woken notifies it
            "max_attempts": 5,
            "lease_seconds": LEASE_SECONDS,
        }
        options.update(overrides)
        return MailRelay(
            engine=engine or self.store._engine,
            crypto=crypto or self.crypto,
            mailer=mailer,
            clock=self.clock,
            queue=self.queue,
            **options,
        )

    async def send_later(self, n: int = 0, *, rollback: bool = False) -> str:
        sealed = await self.queue.seal(
            OutgoingEmail(
                to=RECIPIENT.replace("@", f"+{n}@"),
                subject=SUBJECT,
                text=f"Sign in: https://app.example/auth/magic-link#{TOKEN}\n",
            )
        )

        class Rollback(Exception):
            pass

        try:
            async with self.store.transaction() as tx:
                await self.queue.enqueue(tx, sealed)
                if rollback:
                    raise Rollback
        except Rollback:
            pass
        self.queue.notify()
        return sealed.id

    async def row(self, mail_id: str):
        async with self.store._engine.connect() as conn:
            return (
                await conn.execute(select(mail_outbox).where(mail_outbox.c.id == mail_id))
            ).first()

    async def rows(self):
        async with self.store._engine.connect() as conn:
            return (await conn.execute(select(mail_outbox))).all()


@pytest.fixture
async def outbox(database_url: str, tmp_path: Path) -> AsyncIterator[Outbox]:
    crypto_settings = CryptoSettings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}",  # its own database
        grpc_port=0,
        metrics_port=0,
        usage_sync_seconds=3600,
        shutdown_grace_seconds=1,
    )
    async with AsyncExitStack() as stack:
        crypto_server = await stack.enter_async_context(serve_crypto(crypto_settings))
        engine = create_engine(database_url)
        stack.push_async_callback(engine.dispose)
        await upgrade(engine, MIGRATIONS_PACKAGE)  # the real migrations, 0001 onwards
        clock = ManualClock(datetime(2026, 4, 5, 6, 7, 8, tzinfo=UTC))
        harness = Outbox(
            url=database_url,
            store=AuthStore(engine=engine),
            crypto=None,  # type: ignore[arg-type]
            clock=clock,
            queue=None,  # type: ignore[arg-type]
            stack=stack,
            crypto_settings=crypto_settings,
        )
        harness.crypto = harness.crypto_client(crypto_server.running.target)
        harness.queue = MailQueue(
            crypto=harness.crypto, clock=clock, from_address="Palisade <no-reply@p.example>"
        )
        yield harness


async def test_an_enqueued_email_is_sent_once_and_its_ciphertext_dropped(outbox) -> None:
    mail_id = await outbox.send_later()
    mailer = RecordingMailer()
    relay = await outbox.relay(mailer)

    assert await relay.run_once() == 1
    [message] = mailer.sent
    assert str(message["To"]) == RECIPIENT.replace("@", "+0@")
    assert str(message["Subject"]) == SUBJECT
    assert str(message["Message-ID"]) == f"<{mail_id}@p.example>"
    assert TOKEN in message.get_content()

    row = await outbox.row(mail_id)
    assert row.sent_at == outbox.clock.now()
    assert row.message_ct is None  # no token, no address left behind
    assert (row.attempts, row.failed_at, row.last_error) == (1, None, None)

    outbox.clock.advance(timedelta(days=1))
    assert await relay.run_once() == 0
    assert mailer.calls == 1


async def test_the_database_never_holds_the_message_in_plaintext(outbox) -> None:
    mail_id = await outbox.send_later()
    row = await outbox.row(mail_id)
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row._mapping.values())
    for plaintext in (RECIPIENT.split("@")[0], TOKEN, SUBJECT, "Sign in"):
        assert plaintext.encode() not in stored
    if outbox.url.startswith("sqlite"):  # and not anywhere in the files either
        files = Path(outbox.url.split("///", 1)[1])
        for path in files.parent.glob(files.name + "*"):
            assert RECIPIENT.split("@")[0].encode() not in path.read_bytes()
            assert TOKEN.encode() not in path.read_bytes()

    # The ciphertext is bound to its row: moved to another id, it does not open.
    with pytest.raises(CryptoFailure):
        await outbox.crypto.decrypt([(row.message_ct, message_aad("mail_" + "0" * 32))])


async def test_a_rolled_back_transaction_sends_nothing(outbox) -> None:
    await outbox.send_later(rollback=True)
    mailer = RecordingMailer()
    assert await (await outbox.relay(mailer)).run_once() == 0
    assert await outbox.rows() == []
    assert mailer.calls == 0


async def test_a_failed_send_is_retried_after_the_backoff(outbox) -> None:
    mail_id = await outbox.send_later()
    mailer = RecordingMailer(failures=1)
    relay = await outbox.relay(mailer)
    failed_at = outbox.clock.now()

    assert await relay.run_once() == 0
    row = await outbox.row(mail_id)
    assert row.attempts == 1
    assert row.last_error == "MailDeliveryFailed(SMTPServerDisconnected)"
    assert row.next_attempt_at == failed_at + timedelta(seconds=30)
    assert row.message_ct is not None
    assert row.sent_at is None

    outbox.clock.advance(29.999)
    assert await relay.run_once() == 0
    assert mailer.calls == 1  # not due yet: not even tried
    outbox.clock.advance(0.001)
    assert await relay.run_once() == 1
    assert mailer.ids() == [mail_id]
    row = await outbox.row(mail_id)
    assert (row.attempts, row.message_ct) == (2, None)
    assert row.sent_at == outbox.clock.now()


async def test_crypto_unavailable_counts_as_a_failed_attempt(outbox) -> None:
    mail_id = await outbox.send_later()
    mailer = RecordingMailer()
    with socket.socket() as bound:  # a port held but not listening: the crypto service is down
        bound.bind(("127.0.0.1", 0))
        dead = outbox.crypto_client(f"127.0.0.1:{bound.getsockname()[1]}")
        with pytest.raises(Unavailable):  # what the relay meets
            await dead.decrypt([(b"x", b"y")])
        assert await (await outbox.relay(mailer, crypto=dead)).run_once() == 0
    row = await outbox.row(mail_id)
    assert (row.attempts, row.last_error) == (1, "Unavailable")
    assert mailer.calls == 0

    outbox.clock.advance(retry_delay(1))
    assert await (await outbox.relay(mailer)).run_once() == 1
    assert mailer.ids() == [mail_id]


async def test_after_max_attempts_the_email_is_given_up(outbox, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="palisade.auth.mail")
    mail_id = await outbox.send_later()
    mailer = RecordingMailer(always_fail=True)
    relay = await outbox.relay(mailer, max_attempts=3)

    delays = []
    for attempt in (1, 2):
        assert await relay.run_once() == 0
        row = await outbox.row(mail_id)
        delays.append(row.next_attempt_at - outbox.clock.now())
        assert (row.attempts, row.failed_at) == (attempt, None)
        outbox.clock.advance(row.next_attempt_at - outbox.clock.now())
    assert delays == [timedelta(seconds=30), timedelta(seconds=60)]

    assert await relay.run_once() == 0
    row = await outbox.row(mail_id)
    assert row.attempts == 3
    assert row.failed_at == outbox.clock.now()
    assert row.message_ct is None
    assert row.sent_at is None

    outbox.clock.advance(timedelta(days=30))
    assert await relay.run_once() == 0
    assert mailer.calls == 3

    logged = "".join(JsonFormatter("auth").format(r) for r in caplog.records)
    assert "given up" in logged
    assert mail_id in logged
    assert RECIPIENT.split("@")[0] not in logged
    assert TOKEN not in logged


def test_backoff_doubles_from_30_seconds_up_to_an_hour() -> None:
    assert [retry_delay(n).total_seconds() for n in range(1, 10)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert retry_delay(10_000) == timedelta(hours=1)


async def test_a_crash_between_send_and_mark_sends_again_after_the_lease(outbox) -> None:
    """At-least-once: a duplicate email, never a lost one."""
    mail_id = await outbox.send_later()

    class DiesAfterSending(RecordingMailer):
        async def send(self, message: EmailMessage) -> None:
            await super().send(message)
            raise asyncio.CancelledError  # the process is killed before it marks the row

    crashed = DiesAfterSending()
    with pytest.raises(asyncio.CancelledError):
        await (await outbox.relay(crashed)).run_once()

    survivor = RecordingMailer()
    relay = await outbox.relay(survivor)
    outbox.clock.advance(LEASE_SECONDS - 1)
    assert await relay.run_once() == 0  # still leased to the dead relay
    outbox.clock.advance(1)
    assert await relay.run_once() == 1
    assert crashed.ids() == survivor.ids() == [mail_id]
    row = await outbox.row(mail_id)
    assert (row.attempts, row.message_ct) == (2, None)


async def test_a_crash_during_the_last_attempt_gives_the_email_up(outbox) -> None:
    mail_id = await outbox.send_later()

    class DiesWhileSending(RecordingMailer):
        async def send(self, message: EmailMessage) -> None:
            self.calls += 1
            raise asyncio.CancelledError

    crashed = DiesWhileSending()
    with pytest.raises(asyncio.CancelledError):
        await (await outbox.relay(crashed, max_attempts=1)).run_once()
    outbox.clock.advance(LEASE_SECONDS)
    survivor = RecordingMailer()
    assert await (await outbox.relay(survivor, max_attempts=1)).run_once() == 0
    row = await outbox.row(mail_id)
    assert row.failed_at == outbox.clock.now()
    assert row.message_ct is None
    assert survivor.calls == 0  # the one attempt it had was spent by the crashed relay


async def test_a_relay_whose_lease_ran_out_stops_sending(outbox) -> None:
    first, second = await outbox.send_later(0), await outbox.send_later(1)

    class Slow(RecordingMailer):
        async def send(self, message: EmailMessage) -> None:
            await super().send(message)
            outbox.clock.advance(LEASE_SECONDS)  # this send took the whole lease

    slow = Slow()
    assert await (await outbox.relay(slow)).run_once() == 1
    # The other claimed row was left to whoever claims it next, not sent on an expired lease.
    [unsent] = [r for r in await outbox.rows() if r.sent_at is None]
    assert unsent.message_ct is not None
    other = RecordingMailer()
    assert await (await outbox.relay(other)).run_once() == 1
    assert sorted(slow.ids() + other.ids()) == sorted([first, second])


async def test_two_relays_send_every_email_exactly_once(outbox) -> None:
    ids = [await outbox.send_later(n) for n in range(40)]
    mailer = RecordingMailer()
    # Two replicas: their own engines (connection pools) on the one database.
    relays = [
        await outbox.relay(mailer, engine=await outbox.engine(), batch_size=4) for _ in range(2)
    ]
    counts = [0, 0]
    while True:
        sent = await asyncio.gather(*(r.run_once() for r in relays))
        counts = [c + s for c, s in zip(counts, sent, strict=True)]
        if sum(sent) == 0:
            break
    assert sorted(mailer.ids()) == sorted(ids)  # each once: no duplicates, none missing
    assert sum(counts) == 40
    if outbox.url.startswith("postgresql"):
        assert min(counts) > 0  # they really ran side by side (SKIP LOCKED, no waiting)
    rows = await outbox.rows()
    assert all(r.sent_at is not None and r.message_ct is None for r in rows)
    assert all(r.attempts == 1 for r in rows)


async def test_run_wakes_on_notify_without_waiting_for_the_poll(outbox) -> None:
    mailer = RecordingMailer()
    engine = await outbox.engine()
    polled = asyncio.Event()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if "FROM mail_outbox" in statement:
            polled.set()

    relay = await outbox.relay(mailer, engine=engine, poll_seconds=3600)
    async with relay.running():
        await asyncio.wait_for(polled.wait(), timeout=10)  # its first (empty) pass
        mail_id = await outbox.send_later()  # enqueues, commits, notifies
        await asyncio.wait_for(mailer.delivered.wait(), timeout=10)
    assert mailer.ids() == [mail_id]


async def test_run_goes_on_without_waiting_while_batches_are_full(outbox) -> None:
    ids = [await outbox.send_later(n) for n in range(5)]
    await outbox.queue.wait()  # consume the notices: only a full batch may skip the poll
    mailer = RecordingMailer()
    relay = await outbox.relay(mailer, batch_size=2, poll_seconds=3600)
    async with relay.running():
        await asyncio.wait_for(mailer.until(5), timeout=10)
    assert sorted(mailer.ids()) == sorted(ids)


async def test_run_survives_a_database_error_and_stops_on_cancel(
    outbox, request, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="palisade.auth.mail")
    # A database the relay can reach but that is not migrated yet: every pass fails.
    if outbox.url.startswith("sqlite"):
        late_url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    else:
        late_url = request.getfixturevalue("postgres_database_factory")()
    engine = await outbox.engine(late_url)
    failed = asyncio.Event()

    class OnFailure(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("mail relay pass failed"):
                failed.set()

    watcher = OnFailure()
    logging.getLogger("palisade.auth.mail").addHandler(watcher)
    try:
        mailer = RecordingMailer()
        relay = await outbox.relay(mailer, engine=engine, poll_seconds=3600)
        task = asyncio.create_task(relay.run())
        await asyncio.wait_for(failed.wait(), timeout=10)  # the pass failed and was logged
    finally:
        logging.getLogger("palisade.auth.mail").removeHandler(watcher)
    assert not task.done()  # ...and the loop goes on

    await upgrade(engine, MIGRATIONS_PACKAGE)  # the database is back
    sealed = await outbox.queue.seal(OutgoingEmail(to=RECIPIENT, subject="s", text="t"))
    async with AuthStore(engine=engine).transaction() as tx:
        await outbox.queue.enqueue(tx, sealed)
    outbox.queue.notify()
    await asyncio.wait_for(mailer.delivered.wait(), timeout=10)
    assert mailer.ids() == [sealed.id]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_the_migration_creates_the_table_the_code_uses(outbox) -> None:
    async with outbox.store._engine.connect() as conn:
        columns, indexes = await conn.run_sync(
            lambda sync: (
                inspect(sync).get_columns("mail_outbox"),
                inspect(sync).get_indexes("mail_outbox"),
            )
        )
    assert {c["name"]: c["nullable"] for c in columns} == {
        c.name: c.nullable for c in mail_outbox.columns
    }
    assert sorted((i["name"], i["column_names"]) for i in indexes) == [
        ("ix_mail_outbox_next_attempt_at", ["next_attempt_at"]),
        ("ix_mail_outbox_user_id", ["user_id"]),  # a deleted account's pending mail
    ]


class CancelSwallowingMailer(RecordingMailer):
    """Sends like aiosmtplib on Python 3.11 when a cancel races an SMTP reply: the wait_for
    that reads the reply returns it, and the cancellation is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = asyncio.Event()

    async def send(self, message: EmailMessage) -> None:
        self.calls += 1
        self.sending.set()
        # Waiting for the reply, which only a cancel ends; swallowing that cancel is what
        # Python 3.11's wait_for does when the reply arrives at the same moment.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        self.sent.append(message)


async def test_stopping_the_relay_ends_it_even_when_a_send_swallows_the_cancel(outbox) -> None:
    # Regression: the relay went back to waiting for work and shutdown hung forever.
    mail_id = await outbox.send_later()
    mailer = CancelSwallowingMailer()
    relay = await outbox.relay(mailer, poll_seconds=3600)

    async def run_then_stop() -> None:
        async with relay.running():
            await mailer.sending.wait()

    # Not asyncio.timeout: its cancel would reach the relay task through the await and end it.
    stopping = asyncio.create_task(run_then_stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    if not done:
        await cancel_and_wait(stopping)
    assert done, "stopping the relay hung"
    stopping.result()
    assert mailer.ids() == [mail_id]  # the send it was in went through and was recorded
    assert (await outbox.row(mail_id)).sent_at is not None
