"""Passkey registration and management (SECURITY.md 19, 22): options, verification, one
credential id per user, names, list/get/rename/delete with 404 for other users' passkeys, and
the migration's schema; on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest
import pytest_asyncio
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from palisade.auth.errors import NotSignedIn
from palisade.auth.passkeys import registration as passkeys_module
from palisade.auth.passkeys.errors import (
    ChallengeInvalid,
    InvalidPasskeyCredential,
    InvalidPasskeyName,
    PasskeyAlreadyRegistered,
    PasskeyLimitReached,
    PasskeyNotFound,
    PasskeyRegistrationFailed,
    PasskeyVerificationFailed,
)
from palisade.auth.passkeys.store import PasskeyRecords, passkeys, webauthn_challenges
from palisade.auth.passkeys.store import webauthn_user_handles as handles_table
from palisade.auth.store import metadata

from .test_passkeys_support import CLIENT, RP_ID, crypto_service, passkey_env, softauthn

EMAIL = "ada@example.com"


# One crypto service per module (its start and stop are slow), a fresh auth database per test.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crypto(tmp_path_factory):
    async with crypto_service(tmp_path_factory.mktemp("crypto")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def env(crypto, database_url):
    async with passkey_env(crypto, database_url) as environment:
        yield environment


@pytest_asyncio.fixture(loop_scope="module")
async def sqlite_env(crypto, sqlite_url):
    """For checks that do not depend on the database (verification, parsing): SQLite only."""
    async with passkey_env(crypto, sqlite_url) as environment:
        yield environment


def _decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


async def _failure_reasons(env) -> list[str]:
    return [e["reason"] for e in await env.events("passkey.registration_failed")]


# -- options -----------------------------------------------------------------------------------


async def test_creation_options(env) -> None:
    user_id = await env.add_user(EMAIL, name="Ada Lovelace")
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    assert challenge_id.startswith("wch_")
    assert len(challenge_id) >= 40
    assert options["rp"] == {"id": RP_ID, "name": "Palisade"}
    assert options["user"]["name"] == EMAIL
    assert options["user"]["displayName"] == "Ada Lovelace"
    handle = _decode(options["user"]["id"])
    assert len(handle) >= 32
    assert user_id.encode() not in handle
    assert len(_decode(options["challenge"])) >= 32
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []
    assert options["timeout"] == 300_000
    assert {p["alg"] for p in options["pubKeyCredParams"]} >= {-7, -8, -257}
    _, again = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    assert again["user"]["id"] == options["user"]["id"]  # one handle per user
    assert again["challenge"] != options["challenge"]


async def test_each_user_gets_their_own_handle(env) -> None:
    ada = await env.add_user(EMAIL)
    bob = await env.add_user("bob@example.com")
    _, a = await env.passkeys.registration_options(user_id=ada, client=CLIENT)
    _, b = await env.passkeys.registration_options(user_id=bob, client=CLIENT)
    assert a["user"]["id"] != b["user"]["id"]


async def test_existing_credentials_are_excluded(env) -> None:
    user_id = await env.add_user(EMAIL)
    authn = softauthn.SoftAuthenticator()
    await env.register(authn, user_id)
    _, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    assert softauthn.credential_ids(options, "excludeCredentials") == [
        authn.credential().credential_id
    ]
    assert options["excludeCredentials"][0]["transports"] == ["hybrid", "internal"]


# -- registration ------------------------------------------------------------------------------


async def test_registration_stores_the_credential_and_audits_it(env) -> None:
    user_id = await env.add_user(EMAIL)
    authn = softauthn.SoftAuthenticator(aaguid=bytes(range(16)))
    passkey_id, _ = await env.register(authn, user_id, name="  MacBook  ")
    assert passkey_id.startswith("pkey_")
    row = await env.stored(passkey_id)
    assert bytes(row.credential_id) == authn.credential().credential_id
    assert row.user_id == user_id
    assert row.sign_count == 0
    assert row.transports == "hybrid,internal"
    assert row.aaguid == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert (row.backup_eligible, row.backed_up) == (True, True)
    assert row.name == "MacBook"
    assert row.last_used_at is None
    [event] = await env.events("passkey.registered")
    assert event["details"] == {
        "passkey_id": passkey_id,
        "aaguid": row.aaguid,
        "backup_eligible": True,
        "backed_up": True,
    }
    assert (event["actor"], event["subject"], event["ip"], event["device"]) == (
        f"user:{user_id}",
        user_id,
        CLIENT.ip,
        CLIENT.device,
    )
    assert await env.passkeys.count(user_id) == 1


async def test_a_device_bound_credential_is_recorded_as_such(env) -> None:
    user_id = await env.add_user(EMAIL)
    key = softauthn.SoftAuthenticator(backup_eligible=False, backed_up=False, transports=("usb",))
    passkey_id, _ = await env.register(key, user_id, name="YubiKey")
    row = await env.stored(passkey_id)
    assert (row.backup_eligible, row.backed_up, row.transports) == (False, False, "usb")
    assert (await env.passkeys.get(user_id, passkey_id)).backed_up is False
    await env.login(key)


REGISTRATION_MUTATIONS = {
    "wrong origin": {"origin": "https://evil.example"},
    "wrong rpIdHash": {"rp_id": "evil.example"},
    "UP=0": {"up": False},
    "UV=0": {"uv": False},
    "get-type client data": {"client_data_type": "webauthn.get"},
    "another challenge": {"challenge": b"\x02" * 32},
}


@pytest.mark.parametrize(
    "mutation", REGISTRATION_MUTATIONS.values(), ids=REGISTRATION_MUTATIONS.keys()
)
async def test_a_mutated_registration_is_refused_and_burns_the_challenge(
    sqlite_env, mutation
) -> None:
    env = sqlite_env
    user_id = await env.add_user(EMAIL)
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    with pytest.raises(PasskeyRegistrationFailed) as refused:
        await env.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=softauthn.SoftAuthenticator().create(options, **mutation),
            name="",
            client=CLIENT,
        )
    assert refused.value.code == "passkey_registration_failed"
    assert await _failure_reasons(env) == ["verification_failed"]
    with pytest.raises(ChallengeInvalid):
        await env.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=softauthn.SoftAuthenticator().create(options),
            name="",
            client=CLIENT,
        )
    assert await env.passkeys.count(user_id) == 0


async def test_registration_challenge_rules(env) -> None:
    ada = await env.add_user(EMAIL)
    bob = await env.add_user("bob@example.com")
    authn = softauthn.SoftAuthenticator()
    ada_challenge, ada_options = await env.passkeys.registration_options(user_id=ada, client=CLIENT)
    login_challenge, _ = await env.passkeys.login_options(email=None, client=CLIENT)
    response = authn.create(ada_options, honor_exclude=False)
    for user_id, challenge_id in ((bob, ada_challenge), (ada, login_challenge), (ada, "wch_x")):
        with pytest.raises(ChallengeInvalid):
            await env.passkeys.register(
                user_id=user_id,
                challenge_id=challenge_id,
                credential=response,
                name="",
                client=CLIENT,
            )
    env.clock.advance(300)
    with pytest.raises(ChallengeInvalid):  # expired (Bob's attempt did not burn it)
        await env.passkeys.register(
            user_id=ada, challenge_id=ada_challenge, credential=response, name="", client=CLIENT
        )
    assert await _failure_reasons(env) == ["challenge_invalid"] * 4


async def test_a_credential_id_belongs_to_one_user_only(env) -> None:
    ada = await env.add_user(EMAIL)
    bob = await env.add_user("bob@example.com")
    ada_key = softauthn.SoftAuthenticator()
    await env.register(ada_key, ada)
    taken = ada_key.credential().credential_id
    with pytest.raises(PasskeyAlreadyRegistered) as refused:
        await env.register(softauthn.SoftAuthenticator(), bob, credential_id=taken)
    assert refused.value.code == "passkey_already_registered"
    assert refused.value.status.name == "ALREADY_EXISTS"
    with pytest.raises(PasskeyAlreadyRegistered):  # the same user again (another device)
        await env.register(softauthn.SoftAuthenticator(), ada, credential_id=taken)
    assert await _failure_reasons(env) == ["duplicate_credential", "duplicate_credential"]
    assert await env.passkeys.count(bob) == 0
    await env.login(ada_key)  # Ada's passkey still works, and is still Ada's
    assert (await env.events("session.login_succeeded"))[0]["subject"] == ada


async def test_concurrent_registrations_of_one_credential_id_have_one_winner(env) -> None:
    users = [await env.add_user(f"user{i}@example.com") for i in range(4)]
    shared = b"\x42" * 32
    ceremonies = []
    for user_id in users:
        challenge_id, options = await env.passkeys.registration_options(
            user_id=user_id, client=CLIENT
        )
        response = softauthn.SoftAuthenticator().create(options, credential_id=shared)
        ceremonies.append((user_id, challenge_id, response))
    results = await asyncio.gather(
        *(
            env.passkeys.register(user_id=u, challenge_id=c, credential=r, name="", client=CLIENT)
            for u, c, r in ceremonies
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, PasskeyAlreadyRegistered) for r in results) == 3


async def test_the_database_refuses_a_second_row_for_a_credential_id(env) -> None:
    user_id = await env.add_user(EMAIL)
    await env.register(softauthn.SoftAuthenticator(), user_id)
    async with env.store.transaction() as tx:
        records = PasskeyRecords(tx)
        [row] = await records.of_user(user_id)
        with pytest.raises(IntegrityError):
            await records.insert(dataclasses.replace(row, id="pkey_copy", name="copy"))
        assert await records.count(user_id) == 1  # the savepoint kept the transaction usable


async def test_a_disabled_user_cannot_start_or_finish_a_registration(env) -> None:
    user_id = await env.add_user(EMAIL)
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    await env.disable(user_id)
    with pytest.raises(NotSignedIn):
        await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    with pytest.raises(NotSignedIn):
        await env.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=softauthn.SoftAuthenticator().create(options),
            name="",
            client=CLIENT,
        )
    assert await env.passkeys.count(user_id) == 0


async def test_limit_on_passkeys_per_user(env, monkeypatch) -> None:
    monkeypatch.setattr(passkeys_module, "MAX_PASSKEYS", 2)
    user_id = await env.add_user(EMAIL)
    for _ in range(2):
        await env.register(softauthn.SoftAuthenticator(), user_id)
    with pytest.raises(PasskeyLimitReached):
        await env.passkeys.registration_options(user_id=user_id, client=CLIENT)


@pytest.mark.parametrize(
    ("name", "stored"),
    [("", "Passkey"), ("   ", "Passkey"), ("Work laptop", "Work laptop"), ("x" * 100, "x" * 100)],
)
async def test_names(sqlite_env, name, stored) -> None:
    env = sqlite_env
    user_id = await env.add_user(EMAIL)
    passkey_id, _ = await env.register(softauthn.SoftAuthenticator(), user_id, name=name)
    assert (await env.passkeys.get(user_id, passkey_id)).name == stored


@pytest.mark.parametrize("name", ["x" * 101, "evil\nname", "tab\tbed", "nul\x00"])
async def test_bad_names_are_refused_before_the_challenge_is_used(sqlite_env, name) -> None:
    env = sqlite_env
    user_id = await env.add_user(EMAIL)
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    response = softauthn.SoftAuthenticator().create(options)
    with pytest.raises(InvalidPasskeyName) as refused:
        await env.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=response,
            name=name,
            client=CLIENT,
        )
    assert refused.value.code == "invalid_passkey_name"
    await env.passkeys.register(
        user_id=user_id, challenge_id=challenge_id, credential=response, name="ok", client=CLIENT
    )


MALFORMED = {
    "not an object": lambda r: "a string",
    "missing response": lambda r: {k: v for k, v in r.items() if k != "response"},
    "bad base64url rawId": lambda r: {**r, "rawId": "***"},
    "garbage CBOR": lambda r: {
        **r,
        "response": {**r["response"], "attestationObject": softauthn.b64url(b"\xff\x00garbage")},
    },
    "CBOR that is not an attestation": lambda r: {
        **r,
        "response": {**r["response"], "attestationObject": softauthn.b64url(b"\x83\x01\x02\x03")},
    },
    "missing clientDataJSON": lambda r: {
        **r,
        "response": {k: v for k, v in r["response"].items() if k != "clientDataJSON"},
    },
}


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_registration_is_a_400(sqlite_env, mangle) -> None:
    env = sqlite_env
    user_id = await env.add_user(EMAIL)
    challenge_id, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    response = softauthn.SoftAuthenticator().create(options)
    with pytest.raises(InvalidPasskeyCredential):
        await env.passkeys.register(
            user_id=user_id,
            challenge_id=challenge_id,
            credential=mangle(response),
            name="",
            client=CLIENT,
        )
    assert await _failure_reasons(env) == ["malformed"]


# -- management --------------------------------------------------------------------------------


async def test_list_get_rename_delete(env) -> None:
    user_id = await env.add_user(EMAIL)
    phone, laptop = softauthn.SoftAuthenticator(), softauthn.SoftAuthenticator()
    first, _ = await env.register(phone, user_id, name="Phone")
    env.clock.advance(10)
    second, _ = await env.register(laptop, user_id, name="Laptop")
    assert [p.id for p in await env.passkeys.list(user_id)] == [first, second]
    renamed = await env.passkeys.rename(
        user_id=user_id, passkey_id=first, name="Old phone", client=CLIENT
    )
    assert renamed.name == "Old phone"
    assert (await env.passkeys.get(user_id, first)).name == "Old phone"
    with pytest.raises(InvalidPasskeyName):
        await env.passkeys.rename(user_id=user_id, passkey_id=first, name=" ", client=CLIENT)
    await env.passkeys.delete(user_id=user_id, passkey_id=first, client=CLIENT)
    assert [p.id for p in await env.passkeys.list(user_id)] == [second]
    assert await env.passkeys.count(user_id) == 1
    [renamed_event] = await env.events("passkey.renamed")
    [removed_event] = await env.events("passkey.removed")
    assert renamed_event["details"] == removed_event["details"] == {"passkey_id": first}
    assert removed_event["ip"] == CLIENT.ip
    assert removed_event["actor"] == f"user:{user_id}"
    with pytest.raises(PasskeyVerificationFailed):  # a removed passkey no longer signs in
        await env.login(phone)
    _, options = await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    assert softauthn.credential_ids(options, "excludeCredentials") == [
        laptop.credential().credential_id
    ]


async def test_other_users_passkeys_are_not_found(env) -> None:
    ada = await env.add_user(EMAIL)
    bob = await env.add_user("bob@example.com")
    ada_key = softauthn.SoftAuthenticator()
    passkey_id, _ = await env.register(ada_key, ada, name="Ada's")
    attempts = [
        env.passkeys.get(bob, passkey_id),
        env.passkeys.rename(user_id=bob, passkey_id=passkey_id, name="mine", client=CLIENT),
        env.passkeys.delete(user_id=bob, passkey_id=passkey_id, client=CLIENT),
        env.passkeys.get(bob, "pkey_does_not_exist"),
    ]
    for attempt in attempts:
        with pytest.raises(PasskeyNotFound) as refused:
            await attempt
        assert refused.value.code == "not_found"
        assert refused.value.status.name == "NOT_FOUND"
    assert (await env.passkeys.get(ada, passkey_id)).name == "Ada's"
    assert await env.passkeys.list(bob) == []
    assert await env.events("passkey.removed") == await env.events("passkey.renamed") == []
    await env.login(ada_key)


async def test_account_deletion_helper_removes_everything_passkey(env) -> None:
    user_id = await env.add_user(EMAIL)
    passkey_id, _ = await env.register(softauthn.SoftAuthenticator(), user_id)
    await env.passkeys.registration_options(user_id=user_id, client=CLIENT)
    async with env.store.transaction() as tx:
        assert list(await PasskeyRecords(tx).delete_user(user_id)) == [passkey_id]
    async with env.engine.connect() as conn:
        for table in (passkeys, handles_table, webauthn_challenges):
            rows = (await conn.execute(table.select().where(table.c.user_id == user_id))).all()
            assert rows == []


# -- schema ------------------------------------------------------------------------------------


async def test_migration_matches_the_tables(env) -> None:
    def describe(sync_conn):
        inspector = inspect(sync_conn)
        out = {}
        for name in ("passkeys", "webauthn_user_handles", "webauthn_challenges"):
            columns = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
            unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)}
            unique |= {tuple(i["column_names"]) for i in inspector.get_indexes(name) if i["unique"]}
            indexed = {tuple(i["column_names"]) for i in inspector.get_indexes(name)}
            out[name] = (columns, unique, indexed)
        return out

    async with env.engine.connect() as conn:
        found = await conn.run_sync(describe)
    for name, (columns, unique, indexed) in found.items():
        table = metadata.tables[name]
        assert columns == {c.name: c.nullable for c in table.columns}, name
        for column in table.columns:
            if column.unique:
                assert (column.name,) in unique, (name, column.name)
            if column.index:
                assert (column.name,) in indexed, (name, column.name)
