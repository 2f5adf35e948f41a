"""The keyring model and its file: serialization, secrecy, validation, creation, hot reload."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from palisade.common.clock import ManualClock
from palisade.crypto.errors import KeyringInvalid, RetiredKeyVersion, UnknownKeyVersion
from palisade.crypto.keyring import KEY_BYTES, Keyring, KeyVersion, VersionedKeys
from palisade.crypto.keyring_file import (
    KeyringHolder,
    create_keyring,
    read_keyring,
    update_keyring,
)


def _replace_file(path: Path, content: bytes) -> None:
    """Swaps the file atomically (a new inode), like a Kubernetes Secret update."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def _rotated_and_retired(clock: ManualClock) -> Keyring:
    keyring = Keyring.generate(clock.now())
    clock.advance(10)
    data = keyring.data.rotated(clock.now())
    clock.advance(10)
    data = data.rotated(clock.now()).retired_below(2)
    index = keyring.index.rotated(clock.now())
    return Keyring(data=data, index=index)


# -- model ----------------------------------------------------------------------------------------


def test_generate_makes_version_one_of_distinct_32_byte_keys(clock):
    keyring = Keyring.generate(clock.now())
    for keys in (keyring.data, keyring.index):
        assert keys.primary == 1
        assert keys.min_version == 1
        assert list(keys.keys) == [1]
        assert len(keys.primary_key.key) == KEY_BYTES
        assert keys.primary_key.created_at == clock.now()
    assert keyring.data.primary_key.key != keyring.index.primary_key.key
    assert Keyring.generate(clock.now()).data.primary_key.key != keyring.data.primary_key.key


def test_rotated_adds_a_new_primary_and_keeps_the_old_versions(clock):
    keys = VersionedKeys.generate(clock.now())
    clock.advance(5)
    rotated = keys.rotated(clock.now())
    assert rotated.primary == 2
    assert rotated.min_version == 1
    assert set(rotated.keys) == {1, 2}
    assert rotated.keys[1] == keys.keys[1]
    assert rotated.keys[2].key != keys.keys[1].key
    assert rotated.keys[2].created_at == clock.now()
    assert rotated.keys[2].version == 2
    # The original is untouched (immutable model).
    assert keys.primary == 1
    assert set(keys.keys) == {1}


def test_retired_below_and_its_limits(clock):
    keys = VersionedKeys.generate(clock.now()).rotated(clock.now()).rotated(clock.now())
    assert keys.retired_below(2).min_version == 2
    assert keys.retired_below(3).min_version == 3  # everything but the primary
    assert keys.retired_below(3).retired_below(1).min_version == 3  # never un-retires
    with pytest.raises(KeyringInvalid) as info:
        keys.retired_below(4)
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.code == "keyring_invalid"
    assert "primary" in info.value.message


def test_usable_distinguishes_unknown_and_retired(clock):
    keys = VersionedKeys.generate(clock.now()).rotated(clock.now()).retired_below(2)
    assert keys.usable(2) is keys.keys[2]
    with pytest.raises(RetiredKeyVersion) as retired:
        keys.usable(1)
    assert retired.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert retired.value.code == "retired_key_version"
    assert retired.value.message == "key version 1 is retired"
    with pytest.raises(UnknownKeyVersion) as unknown:
        keys.usable(3)
    assert unknown.value.status == grpc.StatusCode.NOT_FOUND
    assert unknown.value.code == "unknown_key_version"
    with pytest.raises(UnknownKeyVersion):
        keys.usable(0)


def test_usable_versions_primary_first_then_newest_to_oldest(clock):
    keys = VersionedKeys.generate(clock.now())
    for _ in range(4):
        keys = keys.rotated(clock.now())
    assert keys.usable_versions() == [5, 4, 3, 2, 1]
    assert keys.retired_below(3).usable_versions() == [5, 4, 3]
    # A primary that is not the newest version (e.g. a rolled-back rotation) still comes first.
    rolled_back = replace(keys, primary=3)
    assert rolled_back.usable_versions() == [3, 5, 4, 2, 1]


def test_constructor_validation(clock):
    one = {1: KeyVersion(1, bytes(KEY_BYTES), clock.now())}
    with pytest.raises(KeyringInvalid):
        VersionedKeys(primary=2, min_version=1, keys=one)
    with pytest.raises(KeyringInvalid):
        VersionedKeys(primary=1, min_version=0, keys=one)
    with pytest.raises(KeyringInvalid):
        VersionedKeys(primary=1, min_version=2, keys=one)
    for length in (0, 16, 31, 33, 64):
        with pytest.raises(KeyringInvalid) as info:
            KeyVersion(1, b"k" * length, clock.now())
        assert info.value.message == "key version 1 is not 32 bytes"


# -- secrecy --------------------------------------------------------------------------------------


def test_repr_and_str_never_show_key_bytes(clock, assert_no_keys):
    keyring = _rotated_and_retired(clock)
    shown = [repr(keyring), str(keyring)]
    for keys in (keyring.data, keyring.index):
        shown += [repr(keys), str(keys)]
        for kv in keys.keys.values():
            shown += [repr(kv), str(kv), f"{kv}", f"{kv!r}"]
    for text in shown:
        assert_no_keys(text, keyring)
    assert "key=" not in repr(keyring.data.primary_key)
    assert "AESGCM" not in repr(keyring.data.primary_key)
    assert "version=3" in repr(keyring.data.primary_key)


def test_key_version_equality_does_not_depend_on_the_cipher_object(clock):
    a = KeyVersion(1, bytes(KEY_BYTES), clock.now())
    b = KeyVersion(1, bytes(KEY_BYTES), clock.now())
    assert a == b
    assert a != KeyVersion(1, b"\x01" * KEY_BYTES, clock.now())


# -- serialization --------------------------------------------------------------------------------


def test_json_round_trip_is_exact(clock):
    keyring = _rotated_and_retired(clock)
    loaded = Keyring.from_json(keyring.to_json())
    assert loaded == keyring
    assert loaded.data.primary == 3
    assert loaded.data.min_version == 2
    assert loaded.index.primary == 2
    for v, kv in keyring.data.keys.items():
        assert loaded.data.keys[v].key == kv.key
        assert loaded.data.keys[v].created_at == kv.created_at
    # The loaded keys work: same AEAD behaviour.
    nonce = b"\x00" * 16
    sealed = keyring.data.primary_key.aead.encrypt(nonce, b"x", b"a")
    assert loaded.data.primary_key.aead.decrypt(nonce, sealed, b"a") == b"x"


def test_json_document_shape(clock):
    keyring = Keyring.generate(clock.now())
    doc = json.loads(keyring.to_json())
    assert doc["format"] == 1
    assert doc["data"]["primary"] == 1
    assert doc["data"]["min_version"] == 1
    assert base64.b64decode(doc["data"]["keys"]["1"]["key"]) == keyring.data.primary_key.key
    assert base64.b64decode(doc["index"]["keys"]["1"]["key"]) == keyring.index.primary_key.key


def _doc(clock: ManualClock) -> dict:
    return json.loads(_rotated_and_retired(clock).to_json())


def _b64(n: int) -> str:
    return base64.b64encode(b"\x5a" * n).decode()


def _invalid_documents(clock: ManualClock) -> dict[str, bytes]:
    cases: dict[str, bytes] = {}

    def case(name, mutate):
        doc = _doc(clock)
        mutate(doc)
        cases[name] = json.dumps(doc).encode()

    valid = _rotated_and_retired(clock).to_json()
    cases["not json"] = b"this is not json " + valid[:40]
    cases["truncated json"] = valid[: len(valid) // 2]
    cases["empty file"] = b""
    cases["binary garbage"] = b"\xff\xfe\x00" + valid
    cases["json list"] = b"[1, 2, 3]"
    cases["json null"] = b"null"
    cases["json string"] = json.dumps(valid.decode()).encode()
    case("unsupported format", lambda d: d.update(format=2))
    case("no format", lambda d: d.pop("format"))
    case("no index", lambda d: d.pop("index"))
    case("data not an object", lambda d: d.update(data=[1]))
    case("key too short", lambda d: d["data"]["keys"]["2"].update(key=_b64(31)))
    case("key too long", lambda d: d["data"]["keys"]["2"].update(key=_b64(33)))
    case("key not base64", lambda d: d["data"]["keys"]["2"].update(key="!!not base64!!"))
    case("key not a string", lambda d: d["data"]["keys"]["2"].update(key=12345))
    case("key missing", lambda d: d["data"]["keys"]["2"].pop("key"))
    case("bad created_at", lambda d: d["data"]["keys"]["2"].update(created_at="yesterday"))
    case("missing primary", lambda d: d["data"].update(primary=7))
    case("primary absent", lambda d: d["data"].pop("primary"))
    case("primary not a number", lambda d: d["index"].update(primary="two"))
    case("min_version above primary", lambda d: d["data"].update(min_version=4))
    case("min_version zero", lambda d: d["index"].update(min_version=0))
    case("version zero", lambda d: d["data"]["keys"].update({"0": d["data"]["keys"]["1"]}))
    case("version not a number", lambda d: d["data"]["keys"].update(x=d["data"]["keys"]["1"]))
    case("no keys", lambda d: d["index"].update(keys={}))
    case("keys a list", lambda d: d["index"].update(keys=[]))
    return cases


_CASE_NAMES = list(_invalid_documents(ManualClock()))


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_invalid_keyring_json_is_refused_without_quoting_it(clock, name, tmp_path):
    raw = _invalid_documents(clock)[name]
    with pytest.raises(KeyringInvalid) as info:
        Keyring.from_json(raw)
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.code == "keyring_invalid"
    _assert_not_quoted(str(info.value), raw)

    path = tmp_path / "keyring.json"
    path.write_bytes(raw)
    with pytest.raises(KeyringInvalid) as from_file:
        read_keyring(path)
    _assert_not_quoted(str(from_file.value), raw)


def _assert_not_quoted(message: str, raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    secrets = []
    if isinstance(doc, dict):
        for part in ("data", "index"):
            keys = doc.get(part, {}).get("keys", {}) if isinstance(doc.get(part), dict) else {}
            if isinstance(keys, dict):
                secrets += [str(e.get("key")) for e in keys.values() if isinstance(e, dict)]
    for secret in secrets:
        assert secret[:12] not in message
    # No run of 24 characters of the file shows up in the message.
    for start in range(0, max(len(text) - 24, 0) + 1, 4):
        chunk = text[start : start + 24]
        if len(chunk) == 24:
            assert chunk not in message


def test_deeply_nested_json_is_refused_as_invalid():
    # A corrupt or hostile file must still surface as KeyringInvalid, never a RecursionError
    # (which KeyringHolder does not catch, so it would escape a hot reload).
    with pytest.raises(KeyringInvalid):
        Keyring.from_json(b"[" * 100_000)


# -- the file -------------------------------------------------------------------------------------


def test_create_keyring_is_private_and_exclusive(tmp_path, clock):
    path = tmp_path / "keys" / "keyring.json"
    assert create_keyring(path, clock) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    first = path.read_bytes()
    keyring = read_keyring(path)
    assert keyring.data.primary == 1
    assert keyring.data.primary_key.created_at == clock.now()

    clock.advance(100)
    assert create_keyring(path, clock) is False
    assert path.read_bytes() == first  # not overwritten
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_missing_keyring_names_the_path(tmp_path):
    path = tmp_path / "nothing.json"
    with pytest.raises(KeyringInvalid) as info:
        read_keyring(path)
    assert str(path) in info.value.message
    with pytest.raises(KeyringInvalid):
        KeyringHolder(path, on_reload=lambda k, ok: None)


def test_update_keyring_persists_and_stays_private(keyring_path, clock):
    updated = update_keyring(keyring_path, lambda k: replace(k, data=k.data.rotated(clock.now())))
    assert updated.data.primary == 2
    assert read_keyring(keyring_path) == updated
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


def test_update_keyring_without_change_does_not_rewrite(keyring_path):
    before = os.stat(keyring_path)
    result = update_keyring(keyring_path, lambda k: k)
    after = os.stat(keyring_path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert result == read_keyring(keyring_path)


# -- hot reload -----------------------------------------------------------------------------------


@pytest.fixture
def reloads():
    return []


@pytest.fixture
def holder(keyring_path, reloads):
    return KeyringHolder(keyring_path, on_reload=lambda k, ok: reloads.append((k, ok)))


def test_holder_loads_and_ignores_an_unchanged_file(holder, keyring_path, reloads):
    assert holder.current == read_keyring(keyring_path)
    assert holder.reload_if_changed() is False
    assert reloads == []


def test_holder_update_writes_the_file_and_reloads_at_once(holder, keyring_path, reloads, clock):
    old = holder.current
    result = holder.update(lambda k: replace(k, data=k.data.rotated(clock.now())))
    assert result is holder.current
    assert holder.current.data.primary == 2
    assert holder.current.data.keys[1] == old.data.keys[1]
    assert read_keyring(keyring_path) == holder.current
    assert reloads == [(holder.current, True)]
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


def test_holder_update_refusing_change_leaves_everything(holder, keyring_path, reloads):
    before = keyring_path.read_bytes()
    with pytest.raises(KeyringInvalid):
        holder.update(lambda k: replace(k, data=k.data.retired_below(2)))
    assert keyring_path.read_bytes() == before
    assert holder.current.data.min_version == 1
    assert reloads == []


def test_holder_picks_up_an_external_change(holder, keyring_path, reloads, clock):
    external = replace(holder.current, index=holder.current.index.rotated(clock.now()))
    _replace_file(keyring_path, external.to_json())
    assert holder.reload_if_changed() is True
    assert holder.current == external
    assert reloads == [(external, True)]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"format": 1}', b'{"format": 1, "data": {}, "index": {}} ' * 3],
)
def test_holder_keeps_the_old_keyring_when_the_file_turns_invalid(
    holder, keyring_path, reloads, clock, content
):
    old = holder.current
    _replace_file(keyring_path, content)
    assert holder.reload_if_changed() is False
    assert holder.current is old
    assert reloads == [(old, False)]
    # Once the file is fixed, it is loaded.
    fixed = replace(old, data=old.data.rotated(clock.now()))
    _replace_file(keyring_path, fixed.to_json())
    assert holder.reload_if_changed() is True
    assert holder.current == fixed


def test_holder_keeps_the_old_keyring_when_the_file_disappears(holder, keyring_path, reloads):
    old = holder.current
    keyring_path.unlink()
    assert holder.reload_if_changed() is False
    assert holder.current is old
    assert reloads == [(old, False)]
    _replace_file(keyring_path, old.to_json())
    assert holder.reload_if_changed() is True
    assert holder.current == old


def test_holder_keeps_the_old_keyring_when_the_file_is_unreadable(
    holder, keyring_path, reloads, monkeypatch
):
    # e.g. a Secret remounted with the wrong mode: reading raises PermissionError. The holder
    # must treat this like any other bad file, not raise out of reload (that ends watch()).
    old = holder.current
    _replace_file(keyring_path, old.to_json() + b" ")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == keyring_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert holder.reload_if_changed() is False
    assert holder.current is old
    assert reloads == [(old, False)]


async def test_watch_survives_a_bad_file_and_picks_up_the_fix(
    holder, keyring_path, reloads, clock, monkeypatch
):
    old = holder.current
    task = asyncio.create_task(holder.watch(0))
    try:
        real_read_bytes = Path.read_bytes
        unreadable = True

        def read_bytes(self):
            if unreadable and self == keyring_path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        _replace_file(keyring_path, old.to_json() + b" ")
        for _ in range(5):
            await asyncio.sleep(0)
        unreadable = False
        fixed = replace(old, data=old.data.rotated(clock.now()))
        _replace_file(keyring_path, fixed.to_json())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done(), "the watch task died"
        assert holder.current == fixed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
