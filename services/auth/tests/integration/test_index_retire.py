"""`palisade-crypto keys retire --index` refuses while a service's rows may still use an older
index version (issue 9 item 7): a real crypto server, its CLI and auth's reindex report."""

from __future__ import annotations

from .test_reindex import Env, env_fixture  # noqa: F401 (the `env` fixture)


async def test_retire_is_refused_until_auth_reports_no_old_version(env: Env, capsys) -> None:
    await env.add_user("ada@example.com")  # auth has asked for an index: it is on record
    await env.rotate_index()
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 3
    err = capsys.readouterr().err
    assert "'auth'" in err
    assert "never reported" in err

    await env.crypto.report_index_versions([1, 2])  # rows still on v1
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 3
    err = capsys.readouterr().err
    assert "'auth'" in err
    assert "v1" in err
    assert env.crypto_server.keyring.current.index.min_version == 1

    await env.reindexer().run()
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 0


async def test_a_report_from_before_the_new_version_does_not_count(env: Env, capsys) -> None:
    await env.reindexer().run()  # an empty table, reported before any rotation
    await env.add_user("ada@example.com")  # written under v1 after the report
    assert await env.crypto_cli("keys", "rotate", "--index") == 0
    assert await env.crypto_cli("keys", "retire", "--below", "2", "--index") == 3
    assert "'auth'" in capsys.readouterr().err
