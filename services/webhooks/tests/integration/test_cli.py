"""palisade-webhooks as an operator runs it: migrate, endpoints list (no URL path or query),
page-token-key init."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from pathlib import Path
from typing import Any

from palisade.webhooks.cli import main
from palisade.webhooks.config import WebhooksSettings

Harness = Any


def _run(settings: WebhooksSettings, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), settings=settings, out=out)
    return code, out.getvalue()


async def test_endpoints_list(harness: Harness) -> None:
    ws, other = f"ws_{secrets.token_hex(16)}", f"ws_{secrets.token_hex(16)}"
    first = (await harness.create(ws)).webhook
    harness.clock.advance(1)
    second = (await harness.create(ws, event_types=("visitor.created",))).webhook
    await harness.create(other)
    settings = harness.settings
    code, text = await asyncio.to_thread(_run, settings, "endpoints", "list", "--workspace", ws)
    assert code == 0
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == [second.id, first.id]
    assert lines[0]["event_types"] == ["visitor.created"]
    assert lines[0]["url_origin"] == "https://hooks.example.com"
    assert lines[0]["enabled"] is True
    assert "s3cr3t" not in text
    assert "/hooks" not in text.replace("https://hooks", "")
    code, text = await asyncio.to_thread(_run, settings, "endpoints", "list")
    assert len(text.splitlines()) == 3


def test_migrate_and_page_token_key(tmp_path: Path) -> None:
    settings = WebhooksSettings(
        data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    )
    assert _run(settings, "migrate")[0] == 0
    assert (tmp_path / "w.db").exists()
    code, text = _run(settings, "page-token-key", "init")
    assert code == 0
    key_file = tmp_path / "keys" / "webhooks-page-tokens.json"
    assert key_file.exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert str(key_file) in text
    assert _run(settings, "endpoints", "list") == (0, "")
