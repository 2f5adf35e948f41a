"""aad, secret files, JSON logs, database URLs, settings and the clock."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from palisade.common.aad import associated_data
from palisade.common.clock import ManualClock
from palisade.common.db import resolve_database_url
from palisade.common.logs import JsonFormatter, request_id_var
from palisade.common.secret_files import create_exclusive, locked, replace_atomically
from palisade.common.settings import CommonSettings


def test_associated_data_is_unambiguous() -> None:
    assert associated_data("ab", "c") != associated_data("a", "bc")
    assert associated_data("a", "b") != associated_data("a", "b", "")
    assert associated_data("a", b"b") == associated_data("a", "b")
    with pytest.raises(ValueError, match="at least one"):
        associated_data()


def test_create_exclusive_is_0600_and_first_writer_wins(tmp_path) -> None:
    path = tmp_path / "dir" / "secret"
    results = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(create_exclusive(path, f"writer-{i}".encode()))
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.read_bytes().startswith(b"writer-")


def test_replace_atomically_keeps_0600_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "secret"
    create_exclusive(path, b"old")
    with locked(path):
        replace_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret", "secret.lock"]


def test_json_logs_escape_crlf_and_carry_request_id() -> None:
    formatter = JsonFormatter("crypto")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "user said %s", ("a\r\nforged",), None
    )
    record.rpc = "/svc/M"
    token = request_id_var.set("req-9")
    try:
        line = formatter.format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    assert "\r" not in line
    entry = json.loads(line)
    assert entry["msg"] == "user said a\r\nforged"
    assert (entry["service"], entry["request_id"], entry["rpc"]) == ("crypto", "req-9", "/svc/M")


def test_database_url_defaults_to_sqlite_in_data_dir(tmp_path) -> None:
    url = resolve_database_url(None, data_dir=tmp_path, service="crypto")
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}"


def test_plain_postgres_urls_use_psycopg() -> None:
    url = resolve_database_url("postgresql://u:p@db:5432/crypto", data_dir=None, service="x")  # type: ignore[arg-type]
    assert url == "postgresql+psycopg://u:p@db:5432/crypto"


def test_settings_read_shared_and_prefixed_environment(monkeypatch, tmp_path) -> None:
    class DemoSettings(CommonSettings):
        model_config = {"env_prefix": "PALISADE_DEMO_", "frozen": True, "extra": "ignore"}

    monkeypatch.setenv("PALISADE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PALISADE_DEMO_GRPC_PORT", "5999")
    settings = DemoSettings()
    assert settings.data_dir == tmp_path
    assert settings.grpc_port == 5999
    assert settings.resolved_internal_keys_file("demo") == tmp_path / "keys" / "demo.json"
    assert settings.resolved_edge_keys_master_file() == tmp_path / "keys" / "edges.json"
    monkeypatch.setenv("PALISADE_DEMO_INTERNAL_KEYS_FILE", str(tmp_path / "mine.json"))
    assert DemoSettings().resolved_internal_keys_file("demo") == tmp_path / "mine.json"
    monkeypatch.setenv("PALISADE_DEMO_GRPC_PORT", "70000")
    with pytest.raises(ValueError, match="65535"):
        DemoSettings()


def test_manual_clock_moves_only_when_told() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock.now() == start
    clock.advance(timedelta(minutes=5))
    clock.advance(1.5)
    assert clock.now() == start + timedelta(minutes=5, seconds=1.5)
    assert clock.timestamp() == (start + timedelta(minutes=5, seconds=1.5)).timestamp()
    with pytest.raises(ValueError, match="timezone"):
        ManualClock(datetime(2026, 1, 1))


def test_no_module_reads_environment_outside_config() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[4]
    offenders = []
    for path in [*root.glob("libs/*/src/**/*.py"), *root.glob("services/*/src/**/*.py")]:
        if "palisade_api" in path.parts:
            continue
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text():
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
    assert os.environ is not None
