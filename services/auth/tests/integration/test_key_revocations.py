"""Key revocations from auth to apikeys (issue 12, SECURITY.md 26, 44, 45): a request written
in auth's transaction becomes a RevokeKeysOfUser call to the real apikeys service, survives
apikeys being down, and is delivered once (or idempotently) by several auth replicas.

Real crypto, auth and apikeys gRPC servers, on SQLite and on Postgres. Retries are driven by
the ManualClock and relay passes by hand; the only waiting is for the relay that the commit
woke up (its poll interval here is a minute, so a quick delivery proves the wake-up).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import grpc
import pytest

from palisade.auth.accounts.key_revocation_relay import ApiKeysRevoker, KeyRevocationRequest
from palisade.auth.accounts.key_revocations import (
    ACCOUNT_DISABLED,
    MEMBER_REMOVED,
    request_key_revocation,
)
from palisade.auth.config import SERVICE_NAME, AuthSettings
from palisade.common.caller import AssertionSigner
from palisade.common.clock import Clock, ManualClock
from palisade.common.edge_keys import open_service_keys
from palisade.common.grpc_client import ServiceIdentity, insecure_channel

from .test_key_revocation_support import database_factory, eventually, start_stack


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    return database_factory(request, tmp_path)


def _user() -> str:
    return f"usr_{uuid.uuid4().hex}"


def _workspace() -> str:
    return f"ws_{uuid.uuid4().hex}"


async def _request(stack, user_id, workspace_id, reason, replica=0) -> None:
    async with stack.store(replica).transaction() as tx:
        await request_key_revocation(tx, user_id=user_id, workspace_id=workspace_id, reason=reason)


async def test_a_request_becomes_a_revocation_in_apikeys(tmp_path, backend) -> None:
    async with start_stack(tmp_path, backend) as stack:
        bob, other = _user(), _user()
        ws_a, ws_b = _workspace(), _workspace()
        in_a = [(await stack.create_key(bob, ws_a)).api_key.id for _ in range(2)]
        in_b = (await stack.create_key(bob, ws_b)).api_key.id
        others = (await stack.create_key(other, ws_a)).api_key.id

        await _request(stack, bob, ws_a, MEMBER_REMOVED)

        async def delivered() -> bool:
            return not await stack.pending_requests()

        await eventually(delivered)  # woken by the commit: the relay polls once a minute
        states = await stack.key_states(*in_a, in_b, others)
        assert states == {
            in_a[0]: MEMBER_REMOVED,
            in_a[1]: MEMBER_REMOVED,
            in_b: None,
            others: None,
        }

        await _request(stack, bob, None, ACCOUNT_DISABLED)  # every workspace
        await eventually(delivered)
        assert (await stack.key_states(in_b))[in_b] == ACCOUNT_DISABLED
        assert (await stack.key_states(others))[others] is None
        registry = stack.auth.registry
        assert registry.get_sample_value("palisade_auth_key_revocation_outbox_depth") == 0
        assert registry.get_sample_value("palisade_auth_key_revocations_delivered_total") == 2


async def test_a_request_rolled_back_with_its_transaction_is_never_sent(tmp_path, backend) -> None:
    async with start_stack(tmp_path, backend) as stack:
        bob, ws = _user(), _workspace()
        key = (await stack.create_key(bob, ws)).api_key.id

        async def change_that_fails() -> None:
            async with stack.store().transaction() as tx:
                await request_key_revocation(
                    tx, user_id=bob, workspace_id=ws, reason=MEMBER_REMOVED
                )
                raise RuntimeError("the change that needed it failed")

        with pytest.raises(RuntimeError):
            await change_that_fails()
        assert await stack.pending_requests() == []
        assert await stack.auth.key_revocation_relay.run_once() == 0
        assert (await stack.key_states(key))[key] is None


async def test_bad_requests_are_refused_before_anything_is_written(tmp_path, backend) -> None:
    async with start_stack(tmp_path, backend, with_apikeys=False) as stack:
        bad = [
            {"user_id": _user(), "workspace_id": None, "reason": "revoked"},
            {"user_id": "usr_1", "workspace_id": None, "reason": MEMBER_REMOVED},
            {"user_id": _user(), "workspace_id": "", "reason": MEMBER_REMOVED},  # "" is not "all"
            {"user_id": _user(), "workspace_id": "wsp_a", "reason": MEMBER_REMOVED},
        ]
        for fields in bad:
            with pytest.raises(ValueError):
                async with stack.store().transaction() as tx:
                    await request_key_revocation(tx, **fields)
        assert await stack.pending_requests() == []


async def test_apikeys_down_then_up_the_request_waits_and_goes_out(tmp_path, backend) -> None:
    """Auth starts with nothing listening at its apikeys target; the request waits with
    backoff (nothing lost, nothing dropped after N attempts) and goes out once apikeys is up."""
    async with start_stack(tmp_path, backend) as stack:
        bob, ws = _user(), _workspace()
        key = (await stack.create_key(bob, ws)).api_key.id
        await stack.stop_apikeys()
        relay = stack.auth.key_revocation_relay

        await _request(stack, bob, None, ACCOUNT_DISABLED)

        async def failed_once() -> bool:
            rows = await stack.pending_requests()
            return bool(rows) and rows[0].last_error is not None

        await eventually(failed_once)  # the woken relay tried, and failed
        for _ in range(5):  # an outage: every retry fails, the row stays
            stack.clock.advance(timedelta(seconds=61))
            assert await relay.run_once() == 0
        [row] = await stack.pending_requests()
        assert row.last_error == "UNAVAILABLE"
        assert row.attempts >= 6
        depth = stack.auth.registry.get_sample_value("palisade_auth_key_revocation_outbox_depth")
        assert depth == 1
        failures = stack.auth.registry.get_sample_value(
            "palisade_auth_key_revocation_failures_total", {"code": "UNAVAILABLE"}
        )
        assert failures is not None
        assert failures >= 6
        # Not due yet: a pass right after a failure sends nothing.
        assert await relay.run_once() == 0

        await stack.start_apikeys()

        async def goes_out() -> bool:
            # The channel reconnects with its own short backoff; each pass moves time on.
            stack.clock.advance(timedelta(seconds=61))
            await relay.run_once()
            return not await stack.pending_requests()

        await eventually(goes_out, seconds=20)
        assert (await stack.key_states(key))[key] == ACCOUNT_DISABLED
        assert (
            stack.auth.registry.get_sample_value("palisade_auth_key_revocation_outbox_depth") == 0
        )


class CountingRevoker:
    """The real ApiKeysRevoker, counting the calls each request row got."""

    def __init__(self, settings: AuthSettings, calls: Counter[str], clock: Clock) -> None:
        keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp())
        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)
        self._channel = insecure_channel(settings.apikeys_target)
        self._real = ApiKeysRevoker(
            channel=self._channel, identity=ServiceIdentity(name=SERVICE_NAME, signer=signer)
        )
        self.calls = calls

    async def revoke_keys_of_user(self, request: KeyRevocationRequest) -> int:
        self.calls[request.id] += 1
        await asyncio.sleep(0)  # let the other replica's pass interleave
        return await self._real.revoke_keys_of_user(request)


async def test_two_replicas_deliver_each_request_once(tmp_path, backend) -> None:
    calls: Counter[str] = Counter()
    async with start_stack(
        tmp_path, backend, replicas=2, key_revoker=lambda s, c: CountingRevoker(s, calls, c)
    ) as stack:
        people = [(_user(), _workspace()) for _ in range(12)]
        keys = {user: (await stack.create_key(user, ws)).api_key.id for user, ws in people}
        # Requests written through both replicas, then both relays racing, many passes each.
        for index, (user, ws) in enumerate(people):
            await _request(stack, user, ws, MEMBER_REMOVED, replica=index % 2)
        relays = [server.key_revocation_relay for server in stack.auths]
        for _ in range(4):
            await asyncio.gather(*(relay.run_once() for relay in relays for _ in range(3)))

        async def all_delivered() -> bool:
            return not await stack.pending_requests()

        await eventually(all_delivered)
        assert len(calls) == len(people)
        assert set(calls.values()) == {1}, "a claimed row must not be sent by the other replica"
        assert set((await stack.key_states(*keys.values())).values()) == {MEMBER_REMOVED}


class HangingRevoker:
    """A relay that claimed a row and then hung (or died) in the middle of the call."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def revoke_keys_of_user(self, request: KeyRevocationRequest) -> int:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")


async def test_a_lease_that_ran_out_is_sent_by_another_replica(tmp_path, backend) -> None:
    """Replica 0 claims the row and hangs; replica 1 leaves it alone while the lease lasts,
    then sends it. RevokeKeysOfUser is idempotent: sending it again revokes nothing twice."""
    calls: Counter[str] = Counter()
    hanging = HangingRevoker()
    revokers = iter([hanging, None])

    def revoker_for(settings: AuthSettings, clock: ManualClock):
        return next(revokers) or CountingRevoker(settings, calls, clock)

    async with start_stack(tmp_path, backend, replicas=2, key_revoker=revoker_for) as stack:
        bob, ws = _user(), _workspace()
        key = (await stack.create_key(bob, ws)).api_key.id
        await _request(stack, bob, ws, MEMBER_REMOVED, replica=0)  # wakes replica 0's relay
        await asyncio.wait_for(hanging.started.wait(), 10)
        other = stack.auths[1].key_revocation_relay
        assert await other.run_once() == 0  # claimed by replica 0: left alone
        stack.clock.advance(timedelta(seconds=60))
        assert await other.run_once() == 0  # the lease (120 s) still holds
        stack.clock.advance(timedelta(seconds=61))
        assert await other.run_once() == 1
        assert (await stack.key_states(key))[key] == MEMBER_REMOVED
        assert await stack.pending_requests() == []
        # The same request once more (a relay that died after apikeys answered): harmless.
        await _request(stack, bob, ws, MEMBER_REMOVED, replica=1)
        assert await other.run_once() in (0, 1)  # its own woken pass may have sent it first

        async def delivered() -> bool:
            return not await stack.pending_requests()

        await eventually(delivered)
        assert (await stack.key_states(key))[key] == MEMBER_REMOVED


async def test_only_auth_may_ask_apikeys_to_revoke_a_persons_keys(tmp_path, backend) -> None:
    async with start_stack(tmp_path, backend) as stack:
        assert stack.apikeys_stub is not None
        from palisade_api.apikeys.v1 import apikeys_pb2 as kpb

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.apikeys_stub.RevokeKeysOfUser(
                kpb.RevokeKeysOfUserRequest(user_id=_user(), reason=ACCOUNT_DISABLED),
                metadata=stack.apikeys_signing.marker("gateway"),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
