"""Review of the faster password login (4015898, d9c2dc8): one transaction, one throttle script.

Over gRPC, on real Postgres and Redis. What must still hold after the login's Redis calls were
merged into two scripts and its two transactions into one direct read plus one transaction:

- the throttle counts each attempt atomically before the hash, also for a burst of parallel
  requests, the same for an unknown address as for a wrong password; a known client skips only
  the account-wide cap, and only a committed success makes a client known;
- a login whose transaction fails midway (an outage, a serialization failure) writes nothing
  (no session, no token, no event, no known network), answers 503 or 409, and stays counted;
- a new network's alert is not used up by a login that rolled back;
- a login that needs a second factor makes no session before it.

Failures are injected with a trigger on the login's own writes (no sleeps, no timing).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import bcrypt
import grpc
import pyotp
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PASSWORD = "correct horse battery staple"
OWNER_IP = "203.0.113.7"
THROTTLE = {
    "throttle_ip_failures": 50,
    "throttle_account_ip_failures": 3,
    "throttle_account_failures": 6,
    "throttle_window_seconds": 600,
}

_FAIL_FUNCTION = """
CREATE OR REPLACE FUNCTION review_fail_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.event_type = TG_ARGV[0] THEN
    RAISE EXCEPTION 'review: injected failure' USING ERRCODE = TG_ARGV[1];
  END IF;
  RETURN NEW;
END $$
"""


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def _login_code(auth, email: str, password: str, ip: str) -> str | None:
    try:
        await auth.login(email, password, ip=ip)
    except grpc.aio.AioRpcError as error:
        return _code(error)
    return None


def _install_failure(auth, event_type: str, sqlstate: str) -> None:
    """From now on, the transaction that writes an `event_type` event fails with sqlstate."""
    with auth.db() as conn:
        conn.execute(_FAIL_FUNCTION)
        conn.execute(
            "CREATE TRIGGER review_fail_event BEFORE INSERT ON outbox_events FOR EACH ROW"
            f" EXECUTE FUNCTION review_fail_event('{event_type}', '{sqlstate}')"
        )


def _remove_failure(auth) -> None:
    with auth.db() as conn:
        conn.execute("DROP TRIGGER IF EXISTS review_fail_event ON outbox_events")


def _written(auth, user_id: str) -> dict[str, int]:
    """What the user's logins have left in the database."""
    queries = {
        "sessions": "SELECT count(*) FROM sessions WHERE user_id = %s",
        "access_tokens": "SELECT count(*) FROM access_tokens a"
        " JOIN sessions s ON s.id = a.session_id WHERE s.user_id = %s",
        "refresh_tokens": "SELECT count(*) FROM refresh_tokens r"
        " JOIN sessions s ON s.id = r.session_id WHERE s.user_id = %s",
        "known_networks": "SELECT count(*) FROM known_networks WHERE user_id = %s",
        "new_network_alerts": "SELECT count(*) FROM new_network_alerts WHERE user_id = %s",
        "mfa_challenges": "SELECT count(*) FROM mfa_challenges WHERE user_id = %s",
    }
    with auth.db() as conn:
        counts = {
            name: conn.execute(sql, (user_id,)).fetchone()[0] for name, sql in queries.items()
        }
        for event_type in ("session.login_succeeded", "session.new_ip"):
            counts[event_type] = conn.execute(
                "SELECT count(*) FROM outbox_events WHERE event_type = %s AND payload LIKE %s",
                (event_type, f"%{user_id}%"),
            ).fetchone()[0]
    return counts


async def _signed_up(auth, email: str) -> str:
    await auth.sign_up(email)
    tokens = await auth.login(email, ip=OWNER_IP)  # the baseline network; a known client
    return (await auth.validate(tokens.access_token)).user_id


# -- the throttle, counted before the hash, atomically ------------------------------------------


@pytest.mark.parametrize("account", ["existing", "unknown"])
async def test_a_parallel_burst_of_guesses_gets_exactly_the_account_ip_limit_through(
    auth_factory, account: str
) -> None:
    """Ten guesses at once from one client: three are checked (the per-(account, IP) limit),
    seven refused, alike for a wrong password and an unknown address; then even the right
    password waits (the guesses were not given back)."""
    async with auth_factory(**THROTTLE) as auth:
        email = "burst@example.com"
        if account == "existing":
            await auth.sign_up(email)
        else:
            await auth.sign_up("someone-else@example.com")
        codes = await asyncio.gather(
            *(_login_code(auth, email, "wrong guess", "198.51.100.20") for _ in range(10))
        )
        assert Counter(codes) == {"invalid_credentials": 3, "rate_limited": 7}
        assert await _login_code(auth, email, PASSWORD, "198.51.100.20") == "rate_limited"


async def test_a_known_clients_parallel_guesses_still_stop_at_its_account_ip_limit(
    auth_factory,
) -> None:
    """The waiver (acquire_waivable) leaves out the account-wide cap only: a known client that
    strangers locked out of nothing still gets exactly its per-(account, IP) limit of guesses,
    even all at once."""
    async with auth_factory(**THROTTLE) as auth:
        email = "known@example.com"
        await _signed_up(auth, email)
        for i in range(6):  # strangers spend the account-wide cap
            assert await _login_code(auth, email, "guess", f"2001:db8:{i}::1") == (
                "invalid_credentials"
            )
        assert await _login_code(auth, email, PASSWORD, "198.51.100.9") == "rate_limited"
        codes = await asyncio.gather(
            *(_login_code(auth, email, "wrong guess", OWNER_IP) for _ in range(8))
        )
        assert Counter(codes) == {"invalid_credentials": 3, "rate_limited": 5}
        assert await _login_code(auth, email, PASSWORD, OWNER_IP) == "rate_limited"


async def test_failed_attempts_alone_do_not_make_a_client_known(auth_factory) -> None:
    async with auth_factory(**THROTTLE) as auth:
        email = "failures@example.com"
        await _signed_up(auth, email)
        assert await _login_code(auth, email, "guess", "198.51.100.30") == "invalid_credentials"
        for i in range(5):  # with the guess above: the account-wide cap is spent
            assert await _login_code(auth, email, "guess", f"2001:db8:{i}::1") == (
                "invalid_credentials"
            )
        assert await _login_code(auth, email, PASSWORD, "198.51.100.30") == "rate_limited"
        assert await _login_code(auth, email, PASSWORD, OWNER_IP) is None  # known: passes


# -- one transaction: nothing half-written, nothing uncounted -----------------------------------


async def test_an_outage_midway_through_the_login_writes_nothing_and_stays_counted(
    auth_factory,
) -> None:
    """The transaction fails after the session and its tokens were inserted (at the
    login_succeeded event): 503, and none of it is left; the attempt stays counted on the
    account, and the client does not become known (the throttle's reset runs only after a
    commit)."""
    async with auth_factory(**(THROTTLE | {"throttle_account_ip_failures": 2})) as auth:
        email = "outage@example.com"
        user_id = await _signed_up(auth, email)
        before = _written(auth, user_id)
        await asyncio.to_thread(_install_failure, auth, "session.login_succeeded", "57P01")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth.login(email, ip="198.51.100.40")
            assert (caught.value.code(), _code(caught.value)) == (
                grpc.StatusCode.UNAVAILABLE,
                "unavailable",
            )
        finally:
            await asyncio.to_thread(_remove_failure, auth)
        assert _written(auth, user_id) == before
        # Counted: strangers get five guesses at the account (cap six), not six.
        codes = [await _login_code(auth, email, "guess", f"2001:db8:{i}::1") for i in range(6)]
        assert codes == ["invalid_credentials"] * 5 + ["rate_limited"]
        # Not known: the rolled-back login earned no waiver; the owner's known client has one.
        assert await _login_code(auth, email, PASSWORD, "198.51.100.40") == "rate_limited"
        assert await _login_code(auth, email, PASSWORD, OWNER_IP) is None


async def test_a_serialization_failure_in_the_login_answers_a_conflict_and_writes_nothing(
    auth_factory,
) -> None:
    async with auth_factory() as auth:
        email = "conflict@example.com"
        user_id = await _signed_up(auth, email)
        before = _written(auth, user_id)
        await asyncio.to_thread(_install_failure, auth, "session.login_succeeded", "40001")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth.login(email, ip="198.51.100.41")
            assert (caught.value.code(), _code(caught.value)) == (
                grpc.StatusCode.ABORTED,
                "transaction_conflict",
            )
        finally:
            await asyncio.to_thread(_remove_failure, auth)
        assert _written(auth, user_id) == before
        await auth.login(email, ip="198.51.100.41")  # and the same request, made again, works
        after = _written(auth, user_id)
        assert after["sessions"] == before["sessions"] + 1
        assert after["session.login_succeeded"] == before["session.login_succeeded"] + 1


async def test_a_rolled_back_login_does_not_use_up_the_new_network_alert(auth_factory) -> None:
    """The known network, the session.new_ip event and the alert are in the session's
    transaction: a login from a new network that fails at its event remembers nothing, so the
    next login from that network still alerts, once."""
    async with auth_factory() as auth:
        email = "network@example.com"
        user_id = await _signed_up(auth, email)
        before = _written(auth, user_id)
        await asyncio.to_thread(_install_failure, auth, "session.new_ip", "57P01")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth.login(email, ip="192.0.2.50")
            assert _code(caught.value) == "unavailable"
        finally:
            await asyncio.to_thread(_remove_failure, auth)
        assert _written(auth, user_id) == before
        await auth.login(email, ip="192.0.2.50")
        await auth.login(email, ip="192.0.2.51")  # the same network? no: a second new one
        await auth.login(email, ip="192.0.2.50")  # known now: no second alert
        after = _written(auth, user_id)
        assert after["session.new_ip"] == before["session.new_ip"] + 2
        assert after["known_networks"] == before["known_networks"] + 2
        assert after["sessions"] == before["sessions"] + 3


# -- the account's state, read in the statement that takes the lock ----------------------------


def _waiting_for_a_lock(auth) -> bool:
    with auth.db() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0"
        ).fetchone()
    return row[0] > 0


@pytest.mark.parametrize("legacy", [False, True], ids=["shared-lock", "rehash-exclusive-lock"])
async def test_a_disable_committed_while_the_login_waits_for_the_row_is_seen(
    auth, legacy: bool
) -> None:
    """The login read the account as enabled (the direct read), then waits for the user row's
    lock while a disable holds it; once that commits, the locking statement (lock_password,
    which now also supplies check_enabled's state) sees it: account_disabled, no session, and
    the re-hash of a legacy hash rolled back with it."""
    email = "locked@example.com"
    user_id = await _signed_up(auth, email)
    before = _written(auth, user_id)
    if legacy:
        stored = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        with auth.db() as conn:
            conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (stored, user_id))
    holding, release = threading.Event(), threading.Event()

    def disable_and_hold() -> None:
        with auth.db() as conn, conn.transaction():
            conn.execute("UPDATE users SET disabled_at = now() WHERE id = %s", (user_id,))
            holding.set()
            assert release.wait(30)

    disabling = asyncio.create_task(asyncio.to_thread(disable_and_hold))
    assert await asyncio.to_thread(holding.wait, 30)
    login = asyncio.create_task(_login_code(auth, email, PASSWORD, OWNER_IP))
    try:
        for _ in range(20000):  # until the login's locking statement waits behind the disable
            if login.done() or await asyncio.to_thread(_waiting_for_a_lock, auth):
                break
        assert not login.done(), login.result()
    finally:
        release.set()
        await disabling
    assert await login == "account_disabled"
    after = _written(auth, user_id)
    assert (after["sessions"], after["session.login_succeeded"]) == (
        before["sessions"],
        before["session.login_succeeded"],
    )
    if legacy:
        with auth.db() as conn:
            row = conn.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,))
            assert row.fetchone()[0] == stored  # the re-hash went with the rollback


# -- a second factor ------------------------------------------------------------------------------


async def test_a_login_that_needs_a_second_factor_makes_no_session_before_it(auth) -> None:
    """The second-factor look is now one statement with the first workspace (_LOGIN_FACTS):
    a confirmed TOTP still turns the login into a pending step, with no session, token or
    login_succeeded event until the code; an unconfirmed enrolment does not."""
    email = "mfa@example.com"
    await auth.sign_up(email)
    tokens = await auth.login(email, ip=OWNER_IP)
    grant = await auth.validate(tokens.access_token)
    enrolment = await auth.stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=auth.as_user(grant)
    )
    plain = await auth.login(email, ip=OWNER_IP)  # enrolment not confirmed: no second factor
    assert plain.access_token
    assert not plain.mfa_required
    totp = pyotp.TOTP(enrolment.secret)
    await auth.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=totp.at(auth.clock.now())), metadata=auth.as_user(grant)
    )
    before = _written(auth, grant.user_id)
    pending = await auth.login(email, ip=OWNER_IP)
    assert pending.mfa_required
    assert pending.mfa_token
    assert not pending.access_token
    after = _written(auth, grant.user_id)
    assert after["mfa_challenges"] == before["mfa_challenges"] + 1
    for name in ("sessions", "access_tokens", "refresh_tokens", "session.login_succeeded"):
        assert after[name] == before[name], name
    auth.clock.advance(30)  # the next time step: the confirming code is spent
    done = await auth.stub.LoginMfa(
        pb.LoginMfaRequest(mfa_token=pending.mfa_token, code=totp.at(auth.clock.now())),
        metadata=auth.anonymous(OWNER_IP),
    )
    assert done.access_token
    assert _written(auth, grant.user_id)["sessions"] == before["sessions"] + 1
