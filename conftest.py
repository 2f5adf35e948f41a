"""Fixtures shared by every test in the repository: real backends, created fresh per test.

Postgres and Redis are real servers. Where they are unreachable, tests that need them skip,
unless PALISADE_REQUIRE_BACKENDS=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
import uvloop
from psycopg import sql
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the loop the services run on in production (palisade.common.event_loop)."""
    return {"uvloop": uvloop.new_event_loop}


# How long the leftover tasks of a test get to end once cancelled, before the test fails.
_LEFTOVER_TASK_SECONDS = 10.0


@pytest.fixture(autouse=True)
async def _leftover_tasks_stopped() -> AsyncIterator[None]:
    """After each test (its other fixtures torn down first), stops every task still running on
    its loop, cancelling again and again, and fails the test naming any that will not stop.

    pytest-asyncio closes the loop by cancelling leftover tasks once and waiting for them
    without a limit, and on Python 3.11 a library built on asyncio.wait_for can swallow that
    one cancellation (see palisade.common.tasks): the worker then hangs for good, where
    pytest-timeout cannot reach it. Here the wait is bounded and the culprit is named.
    """
    yield
    current = asyncio.current_task()
    leftover = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
    if not leftover:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _LEFTOVER_TASK_SECONDS
    while leftover and loop.time() < deadline:
        for task in leftover:
            task.cancel()
        await asyncio.wait(leftover, timeout=0.2)
        leftover = {t for t in leftover if not t.done()}
    if leftover:
        names = sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in leftover)
        pytest.fail(f"tasks outlived the test and would not stop when cancelled: {names}")


def _backends_required() -> bool:
    return os.environ.get("PALISADE_REQUIRE_BACKENDS") == "1"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {type(error).__name__}"
    if _backends_required():
        pytest.fail(f"{message} (PALISADE_REQUIRE_BACKENDS=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A libpq URL of a role that may create databases."""
    url = os.environ.get("PALISADE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_ADMIN_URL)
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", exc)
    return url


@pytest.fixture
def postgres_database_factory(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """Creates brand-new, empty Postgres databases (SQLAlchemy URLs); drops them all after."""
    created: list[str] = []

    def create() -> str:
        name = f"palisade_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        url = make_url(postgres_admin_url).set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            for name in created:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture
def postgres_url(postgres_database_factory: Callable[[], str]) -> str:
    """A SQLAlchemy URL of a brand-new, empty Postgres database, dropped after the test."""
    return postgres_database_factory()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every store contract test runs once per backend."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("sqlite_url"))


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
_REDIS_DATABASES = 16  # Redis's default `databases`


def worker_redis_url(base_url: str, worker: str | None) -> str:
    """The Redis database of one pytest-xdist worker: the base number minus the worker's index.

    Tests flush their database, so two workers must never share one: worker gwN takes database
    (base - N) mod 16, and a serial run (no worker) takes the base database itself.
    """
    if not worker or not worker.startswith("gw"):
        return base_url
    url = make_url(base_url)
    base = int(url.database or 0)
    index = int(worker[2:])
    if index >= _REDIS_DATABASES:
        raise RuntimeError(f"more pytest workers than Redis databases: {worker}")
    moved = url.set(database=str((base - index) % _REDIS_DATABASES))
    return moved.render_as_string(hide_password=False)


@pytest.fixture
def redis_url() -> str:
    """A real Redis database, emptied for this test (tests own the whole database number)."""
    import redis

    url = worker_redis_url(
        os.environ.get("PALISADE_TEST_REDIS_URL", DEFAULT_REDIS_URL),
        os.environ.get("PYTEST_XDIST_WORKER"),
    )
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    return url
