"""The embedded default's key files, their hot reload, and the `palisade-keys` CLI."""

from __future__ import annotations

import base64
import json
import os

import pytest

from palisade.common.edge_keys import KeyDocument, KeySource, read_document, sync_from_master
from palisade.common.edges import EDGES, edges_of, services_of
from palisade.common.keys_cli import main as palisade_keys


def _sync(keys_dir, service):
    sync_from_master(
        master_path=keys_dir / "edges.json",
        service_path=keys_dir / f"{service}.json",
        service=service,
        now=1_700_000_000,
    )


def test_first_run_writes_one_private_file_per_service_with_only_its_edges(tmp_path) -> None:
    keys_dir = tmp_path / "keys"
    for service in ("crypto", "auth", "gateway"):
        _sync(keys_dir, service)
    master = read_document(keys_dir / "edges.json")
    assert set(master.edges) == {e.name for e in EDGES}
    for service in ("crypto", "auth", "gateway"):
        path = keys_dir / f"{service}.json"
        assert path.stat().st_mode & 0o777 == 0o600
        document = read_document(path)
        assert document.service == service
        assert set(document.edges) == {e.name for e in edges_of(service)}
        for name, keys in document.edges.items():  # the same key at both ends of an edge
            assert keys == master.edges[name]
    assert "gateway:auth" not in read_document(keys_dir / "crypto.json").edges
    # A second start changes nothing.
    before = (keys_dir / "auth.json").read_bytes()
    _sync(keys_dir, "auth")
    assert (keys_dir / "auth.json").read_bytes() == before


def test_a_running_service_picks_up_a_rotated_file(tmp_path) -> None:
    keys_dir = tmp_path / "keys"
    _sync(keys_dir, "auth")
    source = KeySource(service="auth", path=keys_dir / "auth.json")
    old = source.current.signing["crypto"].keys[0].kid
    assert palisade_keys(["--keys-dir", str(keys_dir), "rotate", "auth:crypto"]) == 0
    # A verifier meeting an unknown kid looks at the file at once (no restart, no wait).
    kids = [k.kid for k in source.refresh().signing["crypto"].keys]
    assert kids[0] == old
    assert len(kids) == 2
    assert source.current.signing["crypto"].signing_key(2_000_000_000).kid == kids[1]


def test_cli_rotate_retire_status_never_print_key_material(tmp_path, capsys) -> None:
    keys_dir = tmp_path / "keys"
    run = lambda *args: palisade_keys(["--keys-dir", str(keys_dir), *args])  # noqa: E731
    assert run("status") == 1  # nothing yet
    assert run("init") == 0
    assert {p.name for p in keys_dir.glob("*.json")} == {
        "edges.json",
        *(f"{s}.json" for s in services_of()),
    }
    master = read_document(keys_dir / "edges.json")
    [first] = master.edges["gateway:auth"].keys
    assert run("retire", "gateway:auth", first.kid) == 1  # the signing key: rotate first
    assert run("rotate", "gateway->auth", "--delay", "0") == 0
    rotated = read_document(keys_dir / "edges.json").edges["gateway:auth"]
    assert len(rotated.keys) == 2
    for service in ("gateway", "auth"):
        assert read_document(keys_dir / f"{service}.json").edges["gateway:auth"] == rotated
    assert run("status") == 0
    assert run("retire", "gateway:auth", first.kid) == 0
    assert run("retire", "gateway:auth", "nosuchkid") == 1
    assert run("rotate", "crypto:gateway") == 1  # not an edge
    final = read_document(keys_dir / "auth.json").edges["gateway:auth"]
    assert [k.kid for k in final.keys] == [rotated.keys[-1].kid]
    out = capsys.readouterr()
    everything = out.out + out.err
    for document in (master, read_document(keys_dir / "edges.json")):
        for keys in document.edges.values():
            for key in keys.keys:
                assert key.secret.hex() not in everything
                assert json.dumps(key.secret.decode("latin-1")) not in everything
                assert base64.b64encode(key.secret).decode() not in everything
    assert "signing" in out.out


def test_a_service_refuses_a_key_file_others_can_write(tmp_path) -> None:
    keys_dir = tmp_path / "keys"
    _sync(keys_dir, "auth")
    os.chmod(keys_dir / "auth.json", 0o666)
    with pytest.raises(Exception, match="writable by others"):
        KeySource(service="auth", path=keys_dir / "auth.json")


def test_generated_documents_give_every_edge_a_key() -> None:
    document = KeyDocument.generate()
    assert set(document.edges) == {e.name for e in EDGES}
