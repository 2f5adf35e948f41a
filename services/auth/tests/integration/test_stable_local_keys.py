"""Throttle keys and passkey decoys do not change when the blind-index key rotates
(issue 9 item 7): they derive from auth's stable local key, not from index tokens."""

from __future__ import annotations

import os
import stat

import pytest
import pytest_asyncio

from palisade.auth.local_keys import LocalKeys, load_local_keys

from .test_passkeys_support import CLIENT, crypto_service, passkey_env


def _rotate(monkeypatch, crypto) -> None:
    """What an index-key rotation looks like to auth: a new primary token first."""
    original = crypto.blind_index

    async def rotated(value, *args, **kwargs):
        tokens = await original(value, *args, **kwargs)
        return ["bi1.9." + tokens[0].rsplit(".", 1)[1][::-1], *tokens]

    monkeypatch.setattr(crypto, "blind_index", rotated)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crypto(tmp_path_factory):
    async with crypto_service(tmp_path_factory.mktemp("crypto")) as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module")
async def env(crypto, sqlite_url):
    async with passkey_env(crypto, sqlite_url, local_keys=LocalKeys(b"k" * 32)) as built:
        yield built


@pytest.mark.asyncio(loop_scope="module")
async def test_passkey_decoys_survive_an_index_key_rotation(env, monkeypatch) -> None:
    _, before = await env.passkeys.login_options(email="nobody@example.com", client=CLIENT)
    _rotate(monkeypatch, env.crypto)
    _, after = await env.passkeys.login_options(email="Nobody@Example.com", client=CLIENT)
    assert after["allowCredentials"] == before["allowCredentials"]


async def test_login_throttle_key_survives_an_index_key_rotation(auth, monkeypatch) -> None:
    accounts = auth.servers[0].accounts
    keys: list[str] = []
    original = accounts._throttle.acquire

    async def recording(key, ip, *args, **kwargs):
        keys.append(key)
        return await original(key, ip, *args, **kwargs)

    monkeypatch.setattr(accounts._throttle, "acquire", recording)
    await auth.sign_up("stable@example.com")
    await auth.login("stable@example.com")
    _rotate(monkeypatch, accounts._crypto)
    await auth.login("STABLE@example.com")
    assert len(keys) == 2
    assert keys[0] == keys[1]


def test_local_key_file_is_created_private_once_and_kept(tmp_path) -> None:
    path = tmp_path / "keys" / "auth-local.json"
    first = load_local_keys(path, create_if_missing=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_local_keys(path, create_if_missing=True)
    assert first.email_throttle_key("a@example.com") == again.email_throttle_key("a@example.com")
    assert "<secret>" in repr(first)
    with pytest.raises(FileNotFoundError):
        load_local_keys(tmp_path / "missing.json", create_if_missing=False)


def test_throttle_keys_fold_like_the_email_index() -> None:
    keys = LocalKeys(bytes(32))
    assert keys.email_throttle_key("\u03c3\u03b1\u03c2@x.gr") == keys.email_throttle_key(
        "\u03a3\u0391\u03a3@x.gr"
    )
    assert keys.email_throttle_key("a@x.io") != LocalKeys(b"\x01" * 32).email_throttle_key("a@x.io")
    assert keys.decoy_seed("a@x.io") != keys.decoy_seed("b@x.io")
